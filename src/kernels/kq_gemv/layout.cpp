// kq_gemv layouts: format names, repacking GGUF blocks into kernel records, quantizing activations.
#include "kernels/kq_gemv/layout.h"

#include <fmt/format.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "cpu/isa.h"
#include "quant/ggml.h"

namespace genesis::kernels::kq_gemv {

using quant::GgmlType;

const char* format_name(Format f) {
  switch (f) {
    case Format::q4_k: return "Q4_K";
    case Format::q5_k: return "Q5_K";
    case Format::q6_k: return "Q6_K";
    case Format::q8_0: return "Q8_0";
    case Format::q4_0: return "Q4_0";
    case Format::q4_1: return "Q4_1";
  }
  return "?";
}

std::optional<Format> parse_format(const std::string& s) {
  std::string u = s;
  for (auto& c : u) c = char(std::toupper(static_cast<unsigned char>(c)));
  for (Format f : kFormats)
    if (u == format_name(f)) return f;
  return std::nullopt;
}

uint32_t ggml_type(Format f) {
  switch (f) {
    case Format::q4_k: return uint32_t(GgmlType::q4_k);
    case Format::q5_k: return uint32_t(GgmlType::q5_k);
    case Format::q6_k: return uint32_t(GgmlType::q6_k);
    case Format::q8_0: return uint32_t(GgmlType::q8_0);
    case Format::q4_0: return uint32_t(GgmlType::q4_0);
    case Format::q4_1: return uint32_t(GgmlType::q4_1);
  }
  return 0;
}

std::optional<Format> format_of(uint32_t t) {
  for (Format f : kFormats)
    if (ggml_type(f) == t) return f;
  return std::nullopt;
}

bool is_k_quant(Format f) { return f == Format::q4_k || f == Format::q5_k || f == Format::q6_k; }

std::string format_names() {
  std::string s;
  for (Format f : kFormats) s += (s.empty() ? "" : ", ") + std::string(format_name(f));
  return s;
}

std::string Matrix::describe() const {
  return fmt::format("{} [{} x {}], {} units of {} bytes per row, {:.2f} MB", format_name(format), rows, cols, units,
                     record_bytes, double(bytes()) / 1e6);
}

namespace layout {

int unit_cols(Format f) { return is_k_quant(f) ? kKUnit : kLegacyUnit; }
int stored_block_cols(Format f) { return is_k_quant(f) ? kKUnit : kBlock32; }

int stored_block_bytes(Format f) {
  switch (f) {
    case Format::q4_k: return 144;
    case Format::q5_k: return 176;
    case Format::q6_k: return 210;
    case Format::q8_0: return 34;
    case Format::q4_0: return 18;
    case Format::q4_1: return 20;
  }
  return 0;
}

int record_bytes(Format f) {
  switch (f) {
    case Format::q4_k: return 148;
    case Format::q5_k: return 180;
    case Format::q6_k: return 210;
    case Format::q8_0: return 136;
    case Format::q4_0: return 72;
    case Format::q4_1: return 80;
  }
  return 0;
}

int codes_offset(Format f) {
  switch (f) {
    case Format::q4_k: return 20;
    case Format::q5_k: return 52;
    case Format::q6_k: return 0;
    case Format::q8_0: return 8;
    case Format::q4_0: return 8;
    case Format::q4_1: return 16;
  }
  return 0;
}

int q5k_position(int j) {
  const int k = j / 64, p = j % 64;
  return 128 * (k / 2) + 32 * (k % 2) + p + (p >= 32 ? 32 : 0);
}

int element_of(Format f, int j) {
  if (f == Format::q6_k) {  // code vector k, dword lane l, byte i: sub-block l (16 elements) in every vector
    const int k = j / 64, l = (j % 64) / 4, i = j % 4;
    return 16 * l + 4 * k + i;
  }
  if (f == Format::q4_k || f == Format::q5_k) {  // code vector k, dword lane l, byte i: sub-block l % 8 (README)
    const int k = j / 64, l = (j % 64) / 4, i = j % 4;
    return 32 * (l % 8) + 16 * (l / 8) + 4 * k + i;
  }
  // legacy: vector z (low / high nibble, or Q8_0's second 64 bytes), byte p: dword lane p/4 holds block lane % 4
  const int z = j / 64, p = j % 64;
  return 32 * ((p / 4) % 4) + z * 16 + (p / 16) * 4 + p % 4;
}

}  // namespace layout

namespace {

using namespace layout;

// Q4_K: the file's qs[128] holds sub-block s (32 elements) in the low (s even) or high nibbles of bytes 32 (s / 2) ..
// + 31, element w at byte w. The record (layout::element_of): code byte 64 h + 4 l + i (half h, dword lane l) holds
// sub-block l % 8 in both nibbles: low = element 16 (l / 8) + 8 h + i, high = that + 4. So the 8 file bytes
// 8 g .. 8 g + 7 of a sub-block (g = 2 (l / 8) + h) become one record dword: their first 4 nibbles low, the next 4
// high. 64-bit words, 32 per unit.
void put_q4k_codes(const uint8_t* qs, uint8_t* codes) {
  constexpr uint64_t k4 = 0x0F0F0F0F0F0F0F0Full;
  for (int s = 0; s < 8; ++s)
    for (int g = 0; g < 4; ++g) {
      uint64_t v;
      std::memcpy(&v, qs + 32 * (s / 2) + 8 * g, 8);
      v = (v >> (4 * (s % 2))) & k4;
      const uint32_t d = uint32_t(v) | uint32_t(v >> 32) << 4;
      std::memcpy(codes + 64 * (g % 2) + 4 * (s + 8 * (g / 2)), &d, 4);
    }
}

// The inverse: the file's qs[128] from the record's codes.
void get_q4k_codes(const uint8_t* codes, uint8_t* qs) {
  constexpr uint32_t k4 = 0x0F0F0F0Fu;
  std::memset(qs, 0, 128);
  for (int s = 0; s < 8; ++s)
    for (int g = 0; g < 4; ++g) {
      uint32_t d;
      std::memcpy(&d, codes + 64 * (g % 2) + 4 * (s + 8 * (g / 2)), 4);
      const uint64_t v = (uint64_t(d & k4) | uint64_t((d >> 4) & k4) << 32) << (4 * (s % 2));
      uint64_t q;
      std::memcpy(&q, qs + 32 * (s / 2) + 8 * g, 8);
      q |= v;
      std::memcpy(qs + 32 * (s / 2) + 8 * g, &q, 8);
    }
}

// Q5_K's 5-bit codes at positions 0..255 as ggml packs a block (qh[32], qs[128]): position e has its low 4 bits in
// nibble (e % 64) / 32 of qs[32 (e / 64) + e % 32] and its high bit in bit e / 32 of qh[e % 32]. 64-bit words.
void q5_unpack(const uint8_t* qh, const uint8_t* qs, uint8_t* codes) {
  constexpr uint64_t k4 = 0x0F0F0F0F0F0F0F0Full, k1 = 0x0101010101010101ull;
  for (int j4 = 0; j4 < 4; ++j4)
    for (int hb = 0; hb < 2; ++hb)
      for (int g = 0; g < 4; ++g) {
        uint64_t lo, hi;
        std::memcpy(&lo, qs + 32 * j4 + 8 * g, 8);
        std::memcpy(&hi, qh + 8 * g, 8);
        const uint64_t c = ((lo >> (4 * hb)) & k4) | ((hi >> (2 * j4 + hb)) & k1) << 4;
        std::memcpy(codes + 64 * j4 + 32 * hb + 8 * g, &c, 8);
      }
}
void q5_pack(const uint8_t* codes, uint8_t* qh, uint8_t* qs) {
  constexpr uint64_t k4 = 0x0F0F0F0F0F0F0F0Full, k1 = 0x0101010101010101ull;
  std::memset(qh, 0, 32);
  std::memset(qs, 0, 128);
  for (int j4 = 0; j4 < 4; ++j4)
    for (int hb = 0; hb < 2; ++hb)
      for (int g = 0; g < 4; ++g) {
        uint64_t c, lo, hi;
        std::memcpy(&c, codes + 64 * j4 + 32 * hb + 8 * g, 8);
        std::memcpy(&lo, qs + 32 * j4 + 8 * g, 8);
        std::memcpy(&hi, qh + 8 * g, 8);
        lo |= (c & k4) << (4 * hb);
        hi |= ((c >> 4) & k1) << (2 * j4 + hb);
        std::memcpy(qs + 32 * j4 + 8 * g, &lo, 8);
        std::memcpy(qh + 8 * g, &hi, 8);
      }
}
// Q5_K's record: qh and qs packed as ggml packs them, but the packed position the kernels read at kernel byte j
// (q5k_position(j)) holds element element_of(q5_k, j), Q4_K's lane order. `to_record` false: the inverse.
void q5_permute(const uint8_t* qh, const uint8_t* qs, uint8_t* out_qh, uint8_t* out_qs, bool to_record) {
  alignas(64) uint8_t a[256], b[256];
  q5_unpack(qh, qs, a);
  for (int j = 0; j < 256; j += 4) {
    const int pos = q5k_position(j), elem = element_of(Format::q5_k, j);
    std::memcpy(b + (to_record ? pos : elem), a + (to_record ? elem : pos), 4);
  }
  q5_pack(b, out_qh, out_qs);
}

// Q6_K's 6-bit codes at positions 0..255 as ggml packs a block (ql[128], qh[64]): position 128 h + 32 q + i has its low
// 4 bits in nibble q / 2 of ql[64 h + 32 (q % 2) + i] and its high 2 in bits 2 q of qh[32 h + i]. Unpacked / packed
// 8 positions at a time on 64-bit words.
void q6_unpack(const uint8_t* blk, uint8_t* codes) {
  constexpr uint64_t k4 = 0x0F0F0F0F0F0F0F0Full, k2 = 0x0303030303030303ull;
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 4; ++q)
      for (int g = 0; g < 4; ++g) {
        uint64_t lo, hi;
        std::memcpy(&lo, blk + 64 * h + 32 * (q % 2) + 8 * g, 8);
        std::memcpy(&hi, blk + 128 + 32 * h + 8 * g, 8);
        const uint64_t c = ((lo >> (4 * (q / 2))) & k4) | ((hi >> (2 * q)) & k2) << 4;
        std::memcpy(codes + 128 * h + 32 * q + 8 * g, &c, 8);
      }
}
void q6_pack(const uint8_t* codes, uint8_t* blk) {
  constexpr uint64_t k4 = 0x0F0F0F0F0F0F0F0Full, k2 = 0x0303030303030303ull;
  std::memset(blk, 0, 192);
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 4; ++q)
      for (int g = 0; g < 4; ++g) {
        uint64_t c, lo, hi;
        std::memcpy(&c, codes + 128 * h + 32 * q + 8 * g, 8);
        std::memcpy(&lo, blk + 64 * h + 32 * (q % 2) + 8 * g, 8);
        std::memcpy(&hi, blk + 128 + 32 * h + 8 * g, 8);
        lo |= (c & k4) << (4 * (q / 2));
        hi |= ((c >> 4) & k2) << (2 * q);
        std::memcpy(blk + 64 * h + 32 * (q % 2) + 8 * g, &lo, 8);
        std::memcpy(blk + 128 + 32 * h + 8 * g, &hi, 8);
      }
}
// Q6_K's high bits in the record: the kernels' code vector c (0..3) takes its byte j's two high bits from bits 2c,
// 2c + 1 of qh[j] (j = 0..63), so that one 64-byte load and a shift by 4 - 2c serve every vector. ggml's packing (as
// q6_pack leaves it) keeps vector c = 2 h + e, byte 32 s + i in bits 4 e + 2 s of qh[32 h + i]. `to_record` false:
// the inverse.
void q6_qh_relayout(const uint8_t* src, uint8_t* dst, bool to_record) {
  uint8_t out[64] = {};
  for (int c = 0; c < 4; ++c)
    for (int j = 0; j < 64; ++j) {
      const int g = 32 * (c / 2) + j % 32, gb = 4 * (c % 2) + 2 * (j / 32);  // ggml's byte and bit
      if (to_record)
        out[j] |= uint8_t(((src[g] >> gb) & 3) << (2 * c));
      else
        out[g] |= uint8_t(((src[j] >> (2 * c)) & 3) << gb);
    }
  std::memcpy(dst, out, 64);
}

// Q6_K's record: the codes packed as ggml packs a block, but position 64 k + 4 l + i holds element 16 l + 4 k + i
// (layout::element_of: every code vector's dword lane l is sub-block l), a transpose of 4-element groups, and qh in
// the kernels' order (q6_qh_relayout); scales and d as stored. `to_record` false: the inverse.
void q6_permute(const uint8_t* src, uint8_t* dst, bool to_record) {
  alignas(64) uint8_t a[256], b[256], blk[192];
  std::memcpy(blk, src, 192);
  if (!to_record) q6_qh_relayout(src + 128, blk + 128, false);
  q6_unpack(blk, a);
  for (int k = 0; k < 4; ++k)
    for (int l = 0; l < 16; ++l) {
      const int pos = 64 * k + 4 * l, elem = 16 * l + 4 * k;
      std::memcpy(b + (to_record ? pos : elem), a + (to_record ? elem : pos), 4);
    }
  q6_pack(b, dst);
  if (to_record) q6_qh_relayout(dst + 128, dst + 128, true);
  std::memcpy(dst + 192, src + 192, 18);
}

void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// One unit of a row: `src` points to the unit's first stored block; `nblocks` stored blocks are real (legacy rows
// may end inside a unit: the rest stays zero).
void repack_unit(Format f, const uint8_t* src, int nblocks, uint8_t* rec) {
  switch (f) {
    case Format::q4_k:
    case Format::q5_k: {
      std::memcpy(rec, src, 4);  // d, dmin
      for (int j = 0; j < 8; ++j) scale_min_k4(j, src + 4, rec[4 + j], rec[12 + j]);
      if (f == Format::q4_k)
        put_q4k_codes(src + 16, rec + 20);
      else
        q5_permute(src + 16, src + 48, rec + 20, rec + 52, true);  // qh, qs
      return;
    }
    case Format::q6_k: q6_permute(src, rec, true); return;
    default: break;
  }
  const int bb = stored_block_bytes(f);
  const int co = codes_offset(f);
  for (int b = 0; b < nblocks; ++b) {
    const uint8_t* blk = src + b * bb;
    std::memcpy(rec + 2 * b, blk, 2);                            // d
    if (f == Format::q4_1) std::memcpy(rec + 8 + 2 * b, blk + 2, 2);  // m
  }
  // Dword lane l of a code vector holds block l % 4, its 4 consecutive bytes from offset 4 (l / 4) of the block's
  // 16-byte half (element_of): whole dwords move. Q8_0 codes become unsigned (q ^ 0x80).
  const int q0 = f == Format::q8_0 ? 2 : f == Format::q4_1 ? 4 : 2;
  for (int z = 0; z < (f == Format::q8_0 ? 2 : 1); ++z)
    for (int l = 0; l < 16; ++l) {
      const int b = l % 4;
      if (b >= nblocks) continue;
      uint32_t v;
      std::memcpy(&v, src + b * bb + q0 + 16 * z + 4 * (l / 4), 4);
      if (f == Format::q8_0) v ^= 0x80808080u;
      std::memcpy(rec + co + 64 * z + 4 * l, &v, 4);
    }
}

}  // namespace

namespace layout {

void restore_unit(Format f, const uint8_t* rec, int nblocks, uint8_t* dst) {
  switch (f) {
    case Format::q4_k:
    case Format::q5_k: {
      std::memcpy(dst, rec, 4);
      const uint8_t* sc = rec + 4;
      const uint8_t* m = rec + 12;
      uint8_t* q = dst + 4;
      for (int j = 0; j < 4; ++j) {
        q[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = uint8_t(m[j] | ((m[j + 4] >> 4) << 6));
        q[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
      }
      if (f == Format::q4_k)
        get_q4k_codes(rec + 20, dst + 16);
      else
        q5_permute(rec + 20, rec + 52, dst + 16, dst + 48, false);
      return;
    }
    case Format::q6_k: q6_permute(rec, dst, false); return;
    default: break;
  }
  const int bb = stored_block_bytes(f), co = codes_offset(f);
  for (int b = 0; b < nblocks; ++b) {
    std::memcpy(dst + b * bb, rec + 2 * b, 2);
    if (f == Format::q4_1) std::memcpy(dst + b * bb + 2, rec + 8 + 2 * b, 2);
  }
  for (int j = 0; j < (f == Format::q8_0 ? 128 : 64); ++j) {
    const int p = j % 64, z = j / 64, b = (p / 4) % 4, i = (p / 16) * 4 + p % 4;
    if (b >= nblocks) continue;
    uint8_t* blk = dst + b * bb;
    if (f == Format::q8_0)
      blk[2 + z * 16 + i] = uint8_t(rec[co + j] ^ 0x80);
    else
      blk[(f == Format::q4_1 ? 4 : 2) + i] = rec[co + j];
  }
}

}  // namespace layout

namespace {

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return quant::half_to_float(h);
}

__attribute__((target("avx512f"))) inline __m512i bytes16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The K-quants' rows 16 values at a time with the reference dequantizer's fp32 operations in its order (scale
// products rounded first, then code * scale, then - min), so the result is bit-exact; prefill widens every weight.
__attribute__((target("avx512f"))) void dequantize_k_avx512(Format f, const uint8_t* row, int64_t units, float* out) {
  const __m512i m4 = _mm512_set1_epi32(0xF), m2 = _mm512_set1_epi32(3), one = _mm512_set1_epi32(1);
  for (int64_t u = 0; u < units; ++u, out += 256) {
    const uint8_t* rec = row + u * record_bytes(f);
    if (f == Format::q6_k) {
      alignas(16) uint8_t blk[210];
      q6_permute(rec, blk, false);  // the block as the file holds it
      rec = blk;
      const float d = half_at(rec + 208);
      for (int hh = 0; hh < 2; ++hh)
        for (int qu = 0; qu < 4; ++qu)
          for (int i0 = 0; i0 < 32; i0 += 16) {
            const int e = 128 * hh + 32 * qu + i0;
            __m512i lo = bytes16(rec + 64 * hh + (qu % 2) * 32 + i0);
            lo = _mm512_and_si512(_mm512_srli_epi32(lo, unsigned(4 * (qu / 2))), m4);
            __m512i hi = bytes16(rec + 128 + 32 * hh + i0);
            hi = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hi, unsigned(2 * qu)), m2), 4);
            const __m512i q = _mm512_sub_epi32(_mm512_or_si512(lo, hi), _mm512_set1_epi32(32));
            const float ds = d * float(int8_t(rec[192 + e / 16]));
            _mm512_storeu_ps(out + e, _mm512_mul_ps(_mm512_set1_ps(ds), _mm512_cvtepi32_ps(q)));
          }
      continue;
    }
    const float d = half_at(rec), dmin = half_at(rec + 2);
    alignas(16) uint8_t q4k[128], q5h[32];
    if (f == Format::q4_k) get_q4k_codes(rec + 20, q4k);  // the file's order
    if (f == Format::q5_k) q5_permute(rec + 20, rec + 52, q5h, q4k, false);
    const uint8_t* qs = q4k;
    const uint8_t* qh = q5h;
    for (int j = 0; j < 8; ++j) {
      const float d1 = d * float(rec[4 + j]), m1 = dmin * float(rec[12 + j]);
      for (int i0 = 0; i0 < 32; i0 += 16) {
        __m512i q = _mm512_and_si512(_mm512_srli_epi32(bytes16(qs + 32 * (j / 2) + i0), unsigned(4 * (j % 2))), m4);
        if (f == Format::q5_k)
          q = _mm512_add_epi32(q, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(bytes16(qh + i0), unsigned(j)), one), 4));
        _mm512_storeu_ps(out + 32 * j + i0,
                         _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d1), _mm512_cvtepi32_ps(q)), _mm512_set1_ps(m1)));
      }
    }
  }
  _mm256_zeroupper();
}

}  // namespace

namespace {

// Q4_K records to bf16 without the file's order in between: sub-block s's 32 codes are the nibbles of four dwords of
// the record's codes (get_q4k_codes' gather: for g = 0..3 the dword at 64 (g % 2) + 4 (s + 8 (g / 2)) gives codes
// 8 g .. 8 g + 7, its bytes' low nibbles then their high nibbles); then the reference's fp32 operations (scale
// products rounded first, code * scale, - min) and one rounding to bf16.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void widen_q4k_bf16(const uint8_t* row, int64_t units,
                                                                             uint16_t* out) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  for (int64_t u = 0; u < units; ++u, out += 256) {
    const uint8_t* rec = row + u * record_bytes(Format::q4_k);
    const float d = half_at(rec), dmin = half_at(rec + 2);
    const uint8_t* codes = rec + 20;
    for (int s = 0; s < 8; ++s) {
      const float d1 = d * float(rec[4 + s]), m1 = dmin * float(rec[12 + s]);
      int32_t w[4];
      std::memcpy(&w[0], codes + 4 * s, 4);
      std::memcpy(&w[1], codes + 64 + 4 * s, 4);
      std::memcpy(&w[2], codes + 32 + 4 * s, 4);
      std::memcpy(&w[3], codes + 96 + 4 * s, 4);
      const __m128i v = _mm_setr_epi32(w[0], w[1], w[2], w[3]);
      const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
      const __m512 sd = _mm512_set1_ps(d1), sm = _mm512_set1_ps(m1);
      const __m512 a = _mm512_sub_ps(_mm512_mul_ps(sd, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi32(lo, hi)))), sm);
      const __m512 b = _mm512_sub_ps(_mm512_mul_ps(sd, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi32(lo, hi)))), sm);
      const __m512bh o = _mm512_cvtne2ps_pbh(b, a);
      _mm512_storeu_si512(out + 32 * s, reinterpret_cast<const __m512i&>(o));
    }
  }
  _mm256_zeroupper();
}

// Q6_K records to bf16 without the file's order in between. The record packs its codes as ggml packs a block, but
// position p = 64 k + 4 l + i holds element 16 l + 4 k + i (q6_permute): 16 consecutive positions of one (h, q, i0)
// group share k = 2 h + q / 2 and span four l, so their values go out as four runs of 4 elements. The reference's
// fp32 operations (d * scale rounded first, then times code - 32), one rounding to bf16 each.
__attribute__((target("avx512f,avx512bw,avx512bf16,avx512vl"))) void widen_q6k_bf16(const uint8_t* row,
                                                                                      int64_t units, uint16_t* out) {
  const __m512i m4 = _mm512_set1_epi32(0xF), m2 = _mm512_set1_epi32(3), c32 = _mm512_set1_epi32(32);
  for (int64_t u = 0; u < units; ++u, out += 256) {
    const uint8_t* rec = row + u * record_bytes(Format::q6_k);
    const float d = half_at(rec + 208);
    for (int h = 0; h < 2; ++h)
      for (int q = 0; q < 4; ++q)
        for (int i0 = 0; i0 < 32; i0 += 16) {
          __m512i lo = bytes16(rec + 64 * h + 32 * (q % 2) + i0);
          lo = _mm512_and_si512(_mm512_srli_epi32(lo, unsigned(4 * (q / 2))), m4);
          // kernel vector 2 h + q / 2, byte 32 (q % 2) + i (q6_qh_relayout)
          __m512i hi = bytes16(rec + 128 + 32 * (q % 2) + i0);
          hi = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hi, unsigned(2 * (2 * h + q / 2))), m2), 4);
          const __m512i code = _mm512_sub_epi32(_mm512_or_si512(lo, hi), c32);
          const int l0 = 8 * (q % 2) + i0 / 4, k = 2 * h + q / 2;
          float ds[4];
          for (int c = 0; c < 4; ++c) ds[c] = d * float(int8_t(rec[192 + l0 + c]));
          const __m512 sv = _mm512_setr_ps(ds[0], ds[0], ds[0], ds[0], ds[1], ds[1], ds[1], ds[1], ds[2], ds[2], ds[2],
                                           ds[2], ds[3], ds[3], ds[3], ds[3]);
          const __m256bh b = _mm512_cvtneps_pbh(_mm512_mul_ps(sv, _mm512_cvtepi32_ps(code)));
          alignas(32) uint64_t runs[4];
          _mm256_store_si256(reinterpret_cast<__m256i*>(runs), reinterpret_cast<const __m256i&>(b));
          for (int c = 0; c < 4; ++c) std::memcpy(out + 16 * (l0 + c) + 4 * k, &runs[c], 8);
        }
  }
  _mm256_zeroupper();
}

}  // namespace

bool has_bf16_rows(Format f) {
  static const bool ok = cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512bf16) &&
                         cpu::mayiuse(cpu::Isa::avx512vl);
  return ok && (f == Format::q4_k || f == Format::q6_k);
}

bool dequantize_row_bf16(const Matrix& w, int64_t r, uint16_t* out) {
  if (r < 0 || r >= w.rows) fail("kq_gemv: row {} of {}", r, w.rows);
  if (!has_bf16_rows(w.format)) return false;
  const uint8_t* row = w.records() + size_t(r * w.row_bytes());
  if (w.format == Format::q6_k)
    widen_q6k_bf16(row, w.units, out);
  else
    widen_q4k_bf16(row, w.units, out);
  return true;
}

void dequantize_row(const Matrix& w, int64_t r, float* out) {
  if (r < 0 || r >= w.rows) fail("kq_gemv: row {} of {}", r, w.rows);
  static const bool wide = cpu::mayiuse(cpu::Isa::avx512f);
  if (wide && is_k_quant(w.format)) {
    dequantize_k_avx512(w.format, w.records() + size_t(r * w.row_bytes()), w.units, out);
    return;
  }
  const int uc = unit_cols(w.format), bc = stored_block_cols(w.format);
  uint8_t buf[4 * 210];
  for (int64_t u = 0; u < w.units; ++u) {
    const int64_t c0 = u * uc;
    const int64_t n = std::min<int64_t>(uc, w.cols - c0);
    restore_unit(w.format, w.records() + size_t(r * w.row_bytes() + u * w.record_bytes), int(n / bc), buf);
    quant::ggml_dequantize(ggml_type(w.format), buf, out + c0, n);
  }
}

namespace {

// The checks of make_matrix and the matrix's shape (no records yet).
Matrix matrix_shape(uint32_t type, int64_t rows, int64_t cols, size_t nbytes, bool check_bytes) {
  const auto f = format_of(type);
  if (!f) fail("kq_gemv: {} is not a format the family multiplies (supported: {})", quant::ggml_type_name(type),
               format_names());
  if (rows <= 0 || cols <= 0) fail("kq_gemv: a [{}, {}] {} matrix has no elements", rows, cols, format_name(*f));
  const int bc = stored_block_cols(*f);
  if (cols % bc != 0)
    fail("kq_gemv: {} rows of {} columns: a row must be whole blocks of {}", format_name(*f), cols, bc);
  const int64_t blocks = cols / bc;
  const int64_t row_stored = blocks * stored_block_bytes(*f);
  if (check_bytes && uint64_t(rows) * uint64_t(row_stored) != nbytes)
    fail("kq_gemv: a [{}, {}] {} matrix is {} bytes, {} were given", rows, cols, format_name(*f),
         uint64_t(rows) * uint64_t(row_stored), nbytes);
  Matrix m;
  m.format = *f;
  m.rows = rows;
  m.cols = cols;
  const int per_unit = unit_cols(*f) / bc;  // stored blocks per unit
  m.units = (blocks + per_unit - 1) / per_unit;
  m.record_bytes = record_bytes(*f);
  return m;
}

// The records of m (shaped by matrix_shape) from the stored rows into dst (zeroed first: a legacy row's last unit).
void repack_rows(const Matrix& m, const uint8_t* data, uint8_t* dst) {
  const int bc = stored_block_cols(m.format), per_unit = unit_cols(m.format) / bc;
  const int64_t blocks = m.cols / bc, row_stored = blocks * stored_block_bytes(m.format);
  std::memset(dst, 0, m.bytes());
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t u = 0; u < m.units; ++u) {
      const int64_t b0 = u * per_unit;
      repack_unit(m.format, data + r * row_stored + b0 * stored_block_bytes(m.format),
                  int(std::min<int64_t>(per_unit, blocks - b0)), dst + r * m.row_bytes() + u * m.record_bytes);
    }
}

}  // namespace

Matrix make_matrix(uint32_t type, int64_t rows, int64_t cols, const uint8_t* data, size_t nbytes) {
  Matrix m = matrix_shape(type, rows, cols, nbytes, true);
  m.data.assign(m.bytes() + 64, 0);
  repack_rows(m, data, m.data.data());
  return m;
}

Matrix make_matrix_in(uint32_t type, int64_t rows, int64_t cols, const uint8_t* data, size_t nbytes, uint8_t* dst,
                      std::shared_ptr<const void> keep) {
  Matrix m = matrix_shape(type, rows, cols, nbytes, true);
  repack_rows(m, data, dst);
  m.external = dst;
  m.keep = std::move(keep);
  return m;
}

size_t record_bytes_of(uint32_t type, int64_t rows, int64_t cols) {
  return matrix_shape(type, rows, cols, 0, false).bytes();
}

RecordBits record_bits(Format f) {
  const int per_unit = unit_cols(f) / stored_block_cols(f);
  RecordBits rb;
  rb.stored_bytes = per_unit * stored_block_bytes(f);
  rb.record_bytes = record_bytes(f);
  const int nbits = rb.stored_bytes * 8;
  rb.source.assign(size_t(nbits), -1);
  rb.invert.assign(size_t(nbits), 0);
  std::vector<uint8_t> stored(size_t(rb.stored_bytes), 0), base(size_t(rb.record_bytes)), rec(base.size());
  repack_unit(f, stored.data(), per_unit, base.data());
  auto bit = [](const std::vector<uint8_t>& v, int i) { return (v[size_t(i / 8)] >> (i % 8)) & 1; };
  for (int i = 0; i < nbits; ++i) {
    stored[size_t(i / 8)] = uint8_t(1u << (i % 8));
    repack_unit(f, stored.data(), per_unit, rec.data());
    stored[size_t(i / 8)] = 0;
    int found = -1;
    for (int k = 0; k < rb.record_bytes * 8; ++k) {
      if (bit(rec, k) == bit(base, k)) continue;
      if (found >= 0) fail("kq_gemv: the {} record layout moves stored bit {} to more than one place", format_name(f), i);
      found = k;
    }
    if (found < 0) fail("kq_gemv: the {} record layout drops stored bit {}", format_name(f), i);
    rb.source[size_t(i)] = int16_t(found);
    rb.invert[size_t(i)] = uint8_t(bit(base, found));
  }
  return rb;
}

size_t stored_row_bytes(const Matrix& w) {
  return size_t(w.cols / stored_block_cols(w.format) * stored_block_bytes(w.format));
}

void stored_row(const Matrix& w, int64_t r, uint8_t* out) {
  if (r < 0 || r >= w.rows) fail("kq_gemv: stored row {} of {}", r, w.rows);
  static const std::vector<RecordBits> bits = [] {
    std::vector<RecordBits> v;
    for (Format f : kFormats) v.push_back(record_bits(f));
    return v;
  }();
  const RecordBits& rb = bits[size_t(std::find(std::begin(kFormats), std::end(kFormats), w.format) - kFormats)];
  const int bb = stored_block_bytes(w.format), per_unit = rb.stored_bytes / bb;
  const int64_t blocks = w.cols / stored_block_cols(w.format);
  std::vector<uint8_t> unit(size_t(rb.stored_bytes));
  for (int64_t u = 0; u < w.units; ++u) {
    const uint8_t* rec = w.records() + r * w.row_bytes() + u * w.record_bytes;
    std::fill(unit.begin(), unit.end(), 0);
    for (int i = 0; i < rb.stored_bytes * 8; ++i) {
      const int k = rb.source[size_t(i)];
      const int v = ((rec[k / 8] >> (k % 8)) & 1) ^ rb.invert[size_t(i)];
      unit[size_t(i / 8)] = uint8_t(unit[size_t(i / 8)] | (v << (i % 8)));
    }
    const int64_t nb = std::min<int64_t>(per_unit, blocks - u * per_unit);  // a legacy row's last unit: its blocks
    std::memcpy(out + u * per_unit * bb, unit.data(), size_t(nb * bb));
  }
}

namespace {

// Per block of `len` values (a multiple of 16): scale = amax / 127, q = round-to-nearest-even(x * (127 / amax)),
// |q| <= 127; sums[i] = sum of q[16 i .. 16 i + 15]. The AVX-512 and AVX2 versions compute the same bits (same fp32
// products, the same rounding).
float quantize_block_scalar(const float* x, int len, int8_t* q, int32_t* sums) {
  float amax = 0;
  bool finite = true;
  for (int i = 0; i < len; ++i) {
    amax = std::max(amax, std::fabs(x[i]));
    finite = finite && std::isfinite(x[i]);
  }
  if (!finite) fail("kq_gemv: activations hold a non-finite value");
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  for (int g = 0; g < len / 16; ++g) {
    int32_t sum = 0;
    for (int i = 16 * g; i < 16 * g + 16; ++i) {
      q[i] = int8_t(std::clamp(int(std::nearbyint(x[i] * inv)), -127, 127));
      sum += q[i];
    }
    sums[g] = sum;
  }
  return amax / 127.0f;
}

__attribute__((target("avx512f,avx512bw"))) float quantize_block_avx512(const float* x, int len, int8_t* q,
                                                                         int32_t* sums) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int i = 0; i < len; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    m = _mm512_max_ps(m, _mm512_abs_ps(v));
    bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);  // inf - inf, NaN
  }
  if (bad) fail("kq_gemv: activations hold a non-finite value");
  const float amax = _mm512_reduce_max_ps(m);
  const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int i = 0; i < len; i += 16) {
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv));  // nearest even (MXCSR default)
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    sums[i / 16] = _mm512_reduce_add_epi32(v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(v));
  }
  _mm256_zeroupper();
  return amax / 127.0f;
}

// The same bits on AVX2 (CPUs without AVX-512; GENESIS_MAX_ISA=avx2).
__attribute__((target("avx2"))) float quantize_block_avx2(const float* x, int len, int8_t* q, int32_t* sums) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  __m256 bad = _mm256_setzero_ps();
  for (int i = 0; i < len; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_NEQ_UQ));  // inf, NaN
  }
  if (_mm256_movemask_ps(bad) != 0) fail("kq_gemv: activations hold a non-finite value");
  alignas(32) float mm[8];
  _mm256_store_ps(mm, m);
  float amax = 0;
  for (float v : mm) amax = std::max(amax, v);
  const __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  for (int i = 0; i < len; i += 16) {  // nearest even (MXCSR default), as nearbyint
    __m256i v0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    __m256i v1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inv));
    v0 = _mm256_min_epi32(_mm256_max_epi32(v0, lo), hi);
    v1 = _mm256_min_epi32(_mm256_max_epi32(v1, lo), hi);
    alignas(32) int32_t s8[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(s8), _mm256_add_epi32(v0, v1));
    int32_t sum = 0;
    for (int32_t v : s8) sum += v;
    sums[i / 16] = sum;
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(v0, v1), 0xD8);  // 16 words in order
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i),
                     _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
  }
  _mm256_zeroupper();
  return amax / 127.0f;
}

using BlockFn = float (*)(const float*, int, int8_t*, int32_t*);

BlockFn block_fn() {
  static const BlockFn f = cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) ? quantize_block_avx512
                           : cpu::mayiuse(cpu::Isa::avx2)                                      ? quantize_block_avx2
                                                                                                : quantize_block_scalar;
  return f;
}

}  // namespace

std::vector<std::pair<const char*, layout::QuantizeBlockFn>> layout::quantize_block_variants() {
  std::vector<std::pair<const char*, layout::QuantizeBlockFn>> v = {{"scalar", quantize_block_scalar}};
  if (cpu::mayiuse(cpu::Isa::avx2)) v.emplace_back("avx2", quantize_block_avx2);
  if (cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw)) v.emplace_back("avx512", quantize_block_avx512);
  return v;
}

namespace {

// A K-quant record past its codes: zeros, then Q6_K's 16-element sums (int16) and seeds (-32 * sum, int32) or the
// other K-quants' 32-element sums (fp32, exact: |sum| <= 32 * 127), and the row's scale.
void kquant_record_tail(Format f, float s, const int32_t* sums, uint8_t* rec) {
  std::memset(rec + 256, 0, size_t(kTokenRecord - 256));
  if (f == Format::q6_k) {
    int16_t bs16[16];
    int32_t seed[16];
    for (int b = 0; b < 16; ++b) {
      bs16[b] = int16_t(sums[b]);
      seed[b] = -32 * sums[b];
    }
    std::memcpy(rec + kXBs16, bs16, 32);
    std::memcpy(rec + kXSeed6, seed, 64);
  } else {
    float s32[8];
    for (int b = 0; b < 8; ++b) s32[b] = float(sums[2 * b] + sums[2 * b + 1]);
    std::memcpy(rec + kXSums32, s32, 32);
  }
  std::memcpy(rec + kXScale, &s, 4);
}

// A legacy unit (four 32-blocks) into its record on AVX-512, the same bits as quantize_unit's generic path below
// (each block's amax, 127 / amax, nearest-even conversion, clamp to +-127, the dword lane order of element_of), all in
// registers: the generic path's per-dword copies made a several-row prepare cost 18x one row's (8 rows x 1536 Q8_0
// columns: 13.5 us on Zen 4, run on the calling thread before every product's region).
__attribute__((target("avx512f,avx512bw,avx512dq"))) void quantize_legacy_unit_avx512(Format f, const float* x,
                                                                                      uint8_t* rec) {
  __m512 v[8];
  __mmask16 bad = 0;
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_loadu_ps(x + 16 * i);
    bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v[i], v[i]), _mm512_setzero_ps(), _CMP_NEQ_UQ);  // inf - inf, NaN
  }
  if (bad) fail("kq_gemv: activations hold a non-finite value");
  const int off = f == Format::q8_0 ? 128 : f == Format::q4_0 ? 8 : 0;
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  alignas(64) float dxv[16], sx[16] = {};
  alignas(16) int32_t corr[4];
  __m128i qb[8];
  for (int b = 0; b < 4; ++b) {
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[2 * b]), _mm512_abs_ps(v[2 * b + 1])));
    const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    __m512i q[2];
    for (int k = 0; k < 2; ++k) {
      q[k] = _mm512_cvtps_epi32(_mm512_mul_ps(v[2 * b + k], inv));  // nearest even (MXCSR default)
      q[k] = _mm512_min_epi32(_mm512_max_epi32(q[k], lo), hi);
      qb[2 * b + k] = _mm512_cvtepi32_epi8(q[k]);
    }
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
    const float dx = amax / 127.0f;
    corr[b] = -off * sum;
    if (f == Format::q4_1) sx[b] = dx * float(sum);
    for (int l = b; l < 16; l += 4) dxv[l] = dx;
  }
  // q's dwords 0..15 and 16..31; record vector z's dword lane l is q's dword 8 (l % 4) + 4 z + l / 4 (element_of).
  const __m512i q0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(qb[0]), qb[1], 1)),
                                        _mm256_inserti128_si256(_mm256_castsi128_si256(qb[2]), qb[3], 1), 1);
  const __m512i q1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(qb[4]), qb[5], 1)),
                                        _mm256_inserti128_si256(_mm256_castsi128_si256(qb[6]), qb[7], 1), 1);
  alignas(64) static constexpr int32_t idx[2][16] = {{0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27},
                                                     {4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31}};
  for (int z = 0; z < 2; ++z)
    _mm512_storeu_si512(rec + 64 * z, _mm512_permutex2var_epi32(q0, _mm512_load_si512(idx[z]), q1));
  std::memcpy(rec + kXCorr, corr, 16);
  std::memcpy(rec + kXDx, dxv, 64);
  std::memcpy(rec + kXSx, sx, 64);
  _mm256_zeroupper();
}

// A K-quant unit (256 values, one scale) into its record on AVX-512: quantize_block_avx512, then the codes put in
// the lane order of element_of by permutes (the generic path copies them dword by dword, 64 calls of element_of).
__attribute__((target("avx512f,avx512bw,avx512dq"))) void quantize_kquant_unit_avx512(Format f, const float* x,
                                                                                      uint8_t* rec) {
  // Per code vector k: each lane's source dword in q (mod 32), and the lanes whose source is in q's second half.
  struct Perm {
    alignas(64) int32_t idx[4][16];
    __mmask16 high[4];
  };
  auto make = [](Format g) {
    Perm p{};
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 16; ++l) {
        const int d = element_of(g, 64 * k + 4 * l) / 4;
        p.idx[k][l] = d % 32;
        if (d >= 32) p.high[k] = __mmask16(p.high[k] | (1u << l));
      }
    return p;
  };
  static const Perm q4k = make(Format::q4_k), q6k = make(Format::q6_k);  // Q5_K's order is Q4_K's
  const Perm& p = f == Format::q6_k ? q6k : q4k;
  alignas(64) int8_t q[256];
  int32_t sums[16];
  const float s = quantize_block_avx512(x, 256, q, sums);
  __m512i src[4];
  for (int i = 0; i < 4; ++i) src[i] = _mm512_load_si512(q + 64 * i);
  for (int k = 0; k < 4; ++k) {
    const __m512i ix = _mm512_load_si512(p.idx[k]);
    const __m512i a = _mm512_permutex2var_epi32(src[0], ix, src[1]), b = _mm512_permutex2var_epi32(src[2], ix, src[3]);
    _mm512_storeu_si512(rec + 64 * k, _mm512_mask_blend_epi32(p.high[k], a, b));
  }
  _mm256_zeroupper();
  kquant_record_tail(f, s, sums, rec);
}

// One unit of one activation row into its record; `x` holds unit_cols values (zero-padded by the caller).
void quantize_unit(Format f, BlockFn fn, const float* x, uint8_t* rec) {
  alignas(64) int8_t q[256];
  int32_t sums[16];
  if (is_k_quant(f)) {
    const float s = fn(x, 256, q, sums);
    for (int j = 0; j < 256; j += 4) std::memcpy(rec + j, q + element_of(f, j), 4);  // whole dwords (element_of)
    kquant_record_tail(f, s, sums, rec);
    return;
  }
  const int off = f == Format::q8_0 ? 128 : f == Format::q4_0 ? 8 : 0;
  float dx[4], sx[16] = {}, dxv[16];
  int32_t corr[4];
  for (int b = 0; b < 4; ++b) {
    dx[b] = fn(x + 32 * b, 32, q + 32 * b, sums + 2 * b);
    const int32_t sum = sums[2 * b] + sums[2 * b + 1];
    corr[b] = -off * sum;
    if (f == Format::q4_1) sx[b] = dx[b] * float(sum);
  }
  // dword lane l of vector z holds elements 32 (l % 4) + 16 z + 4 (l / 4) + 0..3 (element_of)
  for (int z = 0; z < 2; ++z)
    for (int l = 0; l < 16; ++l) std::memcpy(rec + 64 * z + 4 * l, q + 32 * (l % 4) + 16 * z + 4 * (l / 4), 4);
  for (int l = 0; l < 16; ++l) dxv[l] = dx[l % 4];
  std::memcpy(rec + kXCorr, corr, 16);
  std::memcpy(rec + kXDx, dxv, 64);
  std::memcpy(rec + kXSx, sx, 64);
}

}  // namespace

std::vector<std::pair<const char*, layout::QuantizeUnitFn>> layout::quantize_unit_variants() {
  std::vector<std::pair<const char*, layout::QuantizeUnitFn>> v = {
      {"generic", [](Format f, const float* x, uint8_t* rec) { quantize_unit(f, quantize_block_scalar, x, rec); }}};
  if (cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512dq))
    v.emplace_back("avx512", [](Format f, const float* x, uint8_t* rec) {
      if (is_k_quant(f)) quantize_kquant_unit_avx512(f, x, rec);
      else quantize_legacy_unit_avx512(f, x, rec);
    });
  return v;
}

void shape_activations(Format f, int n, int64_t cols, Activations& out, bool grouped) {
  if (n < 1 || n > kMaxRows) fail("kq_gemv: {} activation rows; a product takes 1..{}", n, kMaxRows);
  const int bc = stored_block_cols(f);
  if (cols <= 0 || cols % bc != 0)
    fail("kq_gemv: {} activations of {} columns: must be whole blocks of {}", format_name(f), cols, bc);
  const int uc = unit_cols(f);
  out.format = f;
  out.n = n;
  out.cols = cols;
  out.units = (cols + uc - 1) / uc;
  const size_t need = size_t(out.units) * size_t(n) * kTokenRecord;
  if (out.data.size() < need) out.data.resize(need);
  // The grouped copy for the four-unit AVX-512 kernels (several rows of a legacy format; kernel.cpp runs them for
  // 2..8 rows per pass).
  static const bool four_unit_kernels = best_path() == Path::avx512vnni;  // where the AVX-512 kernels run
  out.groups = grouped && four_unit_kernels && !is_k_quant(f) && n >= 2 ? out.units / 4 : 0;
  const size_t gneed = size_t(out.groups) * size_t(n) * kGroupRecord;
  if (out.grouped.size() < gneed) out.grouped.resize(gneed);
}

void quantize_activation_rows(const float* x, int t0, int t1, Activations& out) {
  if (t0 < 0 || t1 > out.n || t0 > t1) fail("kq_gemv: activation rows [{}, {}) of {}", t0, t1, out.n);
  const Format f = out.format;
  const int64_t cols = out.cols, n = out.n;
  const int uc = unit_cols(f);
  const BlockFn fn = block_fn();
  static const bool avx512 = fn == quantize_block_avx512 && cpu::mayiuse(cpu::Isa::avx512dq);
  const layout::QuantizeUnitFn fast =
      !avx512 ? nullptr : is_k_quant(f) ? quantize_kquant_unit_avx512 : quantize_legacy_unit_avx512;
  alignas(64) float pad[256];
  for (int t = t0; t < t1; ++t)
    for (int64_t u = 0; u < out.units; ++u) {
      uint8_t* rec = out.data.data() + (size_t(u) * size_t(n) + size_t(t)) * kTokenRecord;
      const int64_t c0 = u * uc;
      const float* src = x + size_t(t) * size_t(cols) + size_t(c0);
      if (c0 + uc > cols) {  // a legacy row's last unit: zero blocks after the real ones
        std::fill(pad, pad + uc, 0.0f);
        std::memcpy(pad, src, size_t(cols - c0) * 4);
        src = pad;
      }
      if (fast) fast(f, src, rec);
      else quantize_unit(f, fn, src, rec);
    }
  // The grouped copy: a transpose of 16-byte chunks and a gather of the per-block values.
  for (int64_t g = 0; g < out.groups; ++g)
    for (int t = t0; t < t1; ++t) {
      uint8_t* dst = out.grouped.data() + (size_t(g) * size_t(n) + size_t(t)) * kGroupRecord;
      for (int u = 0; u < 4; ++u) {
        const uint8_t* rec = out.data.data() + (size_t(4 * g + u) * size_t(n) + size_t(t)) * kTokenRecord;
        for (int z = 0; z < 2; ++z)
          for (int q = 0; q < 4; ++q) std::memcpy(dst + 64 * (4 * z + q) + 16 * u, rec + 64 * z + 16 * q, 16);
        std::memcpy(dst + kGCorr + 16 * u, rec + kXCorr, 16);
        std::memcpy(dst + kGDx + 16 * u, rec + kXDx, 16);  // lanes 0..3 = blocks 0..3
        std::memcpy(dst + kGSx + 16 * u, rec + kXSx, 16);
      }
      std::memset(dst + kGSx + 64, 0, size_t(kGroupRecord - kGSx - 64));
    }
}

void quantize_activations(Format f, const float* x, int n, int64_t cols, Activations& out, bool grouped) {
  shape_activations(f, n, cols, out, grouped);
  quantize_activation_rows(x, 0, n, out);
}

void dequantize_activations(const Activations& a, int t, double* out) {
  if (t < 0 || t >= a.n) fail("kq_gemv: activation row {} of {}", t, a.n);
  const int uc = unit_cols(a.format);
  for (int64_t u = 0; u < a.units; ++u) {
    const uint8_t* rec = a.data.data() + (size_t(u) * size_t(a.n) + size_t(t)) * kTokenRecord;
    for (int j = 0; j < uc; ++j) {
      const int e = element_of(a.format, j);
      const int64_t c = u * uc + e;
      if (c >= a.cols) continue;
      float s;
      if (is_k_quant(a.format))
        std::memcpy(&s, rec + kXScale, 4);
      else
        std::memcpy(&s, rec + kXDx + 4 * (e / 32), 4);
      out[c] = double(int8_t(rec[j])) * double(s);
    }
  }
}

}  // namespace genesis::kernels::kq_gemv
