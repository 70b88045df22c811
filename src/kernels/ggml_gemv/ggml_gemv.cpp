// ggml_gemv: see ggml_gemv.h. Block layouts come from quant/ggml.h.
#include "kernels/ggml_gemv/ggml_gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "quant/ggml.h"

namespace genesis::kernels::ggml_gemv {

namespace {

using quant::GgmlType;

// Formats with a register-level dequantization below; every other format with a reference dequantizer
// (quant::ggml_dequantize: Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) goes through it one block at a time.
bool fast_format(uint32_t t) {
  return t == uint32_t(GgmlType::q8_0) || t == uint32_t(GgmlType::q4_0) || t == uint32_t(GgmlType::q4_1);
}

bool quantized_format(uint32_t t) {
  const auto info = quant::ggml_type_info(t);
  return info && info->dequantize && info->block >= 32 && info->block <= 256;
}

float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return quant::half_to_float(h);
}

// Block b of a row dequantized into out[32], as ggml's dequantize_row_* does.
void dequant_block(uint32_t type, const uint8_t* blk, float* out) {
  switch (GgmlType(type)) {
    case GgmlType::q8_0: {
      const float d = fp16(blk);
      for (int i = 0; i < 32; ++i) out[i] = float(int8_t(blk[2 + i])) * d;
      break;
    }
    case GgmlType::q4_0: {
      const float d = fp16(blk);
      for (int i = 0; i < 16; ++i) {
        out[i] = float(int(blk[2 + i] & 0x0F) - 8) * d;
        out[i + 16] = float(int(blk[2 + i] >> 4) - 8) * d;
      }
      break;
    }
    case GgmlType::q4_1: {
      const float d = fp16(blk), m = fp16(blk + 2);
      for (int i = 0; i < 16; ++i) {
        out[i] = float(blk[4 + i] & 0x0F) * d + m;
        out[i + 16] = float(blk[4 + i] >> 4) * d + m;
      }
      break;
    }
    default: quant::ggml_dequantize(type, blk, out, quant::ggml_type_info(type)->block);
  }
}

size_t block_bytes(uint32_t type) { return quantized_format(type) ? size_t(quant::ggml_type_info(type)->block_bytes) : 0; }
int64_t block_elems(uint32_t type) { return quantized_format(type) ? quant::ggml_type_info(type)->block : 0; }

void rows_scalar(const GgmlMatrix& w, const float* x, float* y, int64_t tokens, int64_t r0, int64_t r1) {
  const size_t bb = block_bytes(w.type);
  const int64_t be = block_elems(w.type), nb = w.cols / be;
  float v[256];
  std::vector<double> acc(static_cast<size_t>(tokens));
  for (int64_t r = r0; r < r1; ++r) {
    std::fill(acc.begin(), acc.end(), 0.0);
    const uint8_t* row = w.bytes.data() + size_t(r) * w.row_bytes;
    for (int64_t b = 0; b < nb; ++b) {
      dequant_block(w.type, row + size_t(b) * bb, v);
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xb = x + t * w.cols + b * be;
        double s = 0;
        for (int64_t i = 0; i < be; ++i) s += double(v[i]) * double(xb[i]);
        acc[size_t(t)] += s;
      }
    }
    for (int64_t t = 0; t < tokens; ++t) y[t * w.rows + r] = float(acc[size_t(t)]);
  }
}

// The 32 values of a block as two 16-lane vectors (elements 0-15, 16-31).
__attribute__((target("f16c"))) inline float fp16_f16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);  // exact, like quant::half_to_float
}

__attribute__((target("avx512f,avx512bw,f16c"))) inline void block_avx512(uint32_t type, const uint8_t* blk,
                                                                          __m512& lo, __m512& hi) {
  const __m512 d = _mm512_set1_ps(fp16_f16c(blk));
  if (type == uint32_t(GgmlType::q8_0)) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a)), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), d);
    return;
  }
  const bool q41 = type == uint32_t(GgmlType::q4_1);
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (q41 ? 4 : 2)));
  const __m512i b32 = _mm512_cvtepu8_epi32(q);
  const __m512i nib = _mm512_set1_epi32(0x0F);
  __m512i l = _mm512_and_si512(b32, nib), h = _mm512_srli_epi32(b32, 4);
  if (!q41) {
    const __m512i eight = _mm512_set1_epi32(8);
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(l, eight)), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(h, eight)), d);
  } else {
    // q * d is exact in fp32; adding m rounds once, as ggml's q * d + m does.
    const __m512 m = _mm512_set1_ps(fp16_f16c(blk + 2));
    lo = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(l), d), m);
    hi = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(h), d), m);
  }
}

// A Q4_K block's eight sub-block scales d * sc_j and mins dmin * m_j (6-bit sc / m packed in 12 bytes), as ggml's
// get_scale_min_k4 unpacks them.
__attribute__((target("f16c"))) inline void q4_k_scales(const uint8_t* blk, float* dj, float* mj) {
  const float d = fp16_f16c(blk), dmin = fp16_f16c(blk + 2);
  const uint8_t* sc = blk + 4;
  for (int j = 0; j < 8; ++j) {
    uint8_t a, b;
    if (j < 4) {
      a = sc[j] & 63, b = sc[j + 4] & 63;
    } else {
      a = uint8_t((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
      b = uint8_t((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
    }
    dj[j] = d * float(a), mj[j] = dmin * float(b);
  }
}

// Q4_K: 256 values in 8 sub-blocks of 32, value = (d * sc_j) * q - (dmin * m_j) with 6-bit sc/m packed in 12 bytes;
// the same operations, in the same order, as ggml's dequantize_row_q4_K, 16 lanes at a time.
__attribute__((target("avx512f,avx512bw,f16c"))) void q4_k_block(const uint8_t* blk, float* out) {
  const uint8_t* q = blk + 16;
  float dj[8], mj[8];
  q4_k_scales(blk, dj, mj);
  const __m512i nib = _mm512_set1_epi32(0x0F);
  for (int c = 0; c < 4; ++c) {  // 64 values per 32 bytes: low nibbles first, then high
    for (int h = 0; h < 2; ++h) {
      const __m512i b32 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 32 * c + 16 * h)));
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(b32, nib));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b32, 4));
      _mm512_store_ps(out + 64 * c + 16 * h,
                      _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dj[2 * c]), lo), _mm512_set1_ps(mj[2 * c])));
      _mm512_store_ps(out + 64 * c + 32 + 16 * h,
                      _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dj[2 * c + 1]), hi), _mm512_set1_ps(mj[2 * c + 1])));
    }
  }
}

__attribute__((target("avx512f,avx512bw"))) inline __m512i load16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Q6_K: 256 values, 4 low bits in ql, 2 high bits in qh, int8 scale per 16 values, value = (d * sc) * (q - 32); the
// same operations as ggml's dequantize_row_q6_K, 16 lanes at a time.
__attribute__((target("avx512f,avx512bw,f16c"))) void q6_k_block(const uint8_t* blk, float* out) {
  const uint8_t* ql = blk;
  const uint8_t* qh = blk + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
  const float d = fp16_f16c(blk + 208);
  const __m512i nib = _mm512_set1_epi32(0x0F), three = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
  for (int n = 0; n < 2; ++n, ql += 64, qh += 32, sc += 8, out += 128) {
    for (int g = 0; g < 2; ++g) {  // l = 16 g .. 16 g + 15, is = g
      const int l0 = 16 * g;
      const __m512i a = load16(ql + l0), b = load16(ql + l0 + 32), h = load16(qh + l0);
      const __m512i q1 = _mm512_sub_epi32(
          _mm512_or_si512(_mm512_and_si512(a, nib), _mm512_slli_epi32(_mm512_and_si512(h, three), 4)), k32);
      const __m512i q2 = _mm512_sub_epi32(
          _mm512_or_si512(_mm512_and_si512(b, nib),
                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, 2), three), 4)), k32);
      const __m512i q3 = _mm512_sub_epi32(
          _mm512_or_si512(_mm512_srli_epi32(a, 4),
                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, 4), three), 4)), k32);
      const __m512i q4 = _mm512_sub_epi32(
          _mm512_or_si512(_mm512_srli_epi32(b, 4),
                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, 6), three), 4)), k32);
      _mm512_store_ps(out + l0, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[g])), _mm512_cvtepi32_ps(q1)));
      _mm512_store_ps(out + l0 + 32, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[g + 2])), _mm512_cvtepi32_ps(q2)));
      _mm512_store_ps(out + l0 + 64, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[g + 4])), _mm512_cvtepi32_ps(q3)));
      _mm512_store_ps(out + l0 + 96, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[g + 6])), _mm512_cvtepi32_ps(q4)));
    }
  }
}

// Q4_K rows with the scales folded out of the inner loop: per sub-block j of 32, sum_k (d_j q_k - m_j) x_k =
// d_j * sum_k q_k x_k - m_j * sum_k x_k; the sums of x per sub-block are computed once per token (xsum). Same value as
// dequantize-then-dot up to fp32 rounding (the tests hold it to 1e-5 of the dot's scale).
__attribute__((target("avx512f,avx512bw,f16c"))) void rows_q4_k(const GgmlMatrix& w, const float* x, float* y,
                                                                int64_t tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.cols / 256, nsub = w.cols / 32;
  thread_local std::vector<float> xsum;  // called per 64-row block of every expert: no allocation per call
  xsum.resize(static_cast<size_t>(tokens * nsub));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < nsub; ++j) {
      const __m512 a = _mm512_add_ps(_mm512_loadu_ps(x + t * w.cols + 32 * j), _mm512_loadu_ps(x + t * w.cols + 32 * j + 16));
      xsum[size_t(t * nsub + j)] = _mm512_reduce_add_ps(a);
    }
  constexpr int64_t kT = 4;
  const __m512i nib = _mm512_set1_epi32(0x0F);
  for (int64_t t0 = 0; t0 < tokens; t0 += kT) {
    const int64_t nt = std::min(kT, tokens - t0);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.bytes.data() + size_t(r) * w.row_bytes;
      __m512 acc[kT];
      float mins[kT] = {0, 0, 0, 0};
      for (int64_t t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + size_t(b) * 144;
        const uint8_t* q = blk + 16;
        float dj[8], mj[8];
        q4_k_scales(blk, dj, mj);
        for (int64_t t = 0; t < nt; ++t) {
          const float* xs = &xsum[size_t((t0 + t) * nsub + b * 8)];
          for (int j = 0; j < 8; ++j) mins[t] += mj[j] * xs[j];
        }
        for (int c = 0; c < 4; ++c) {
          const __m512i b0 = load16(q + 32 * c), b1 = load16(q + 32 * c + 16);
          const __m512 l0 = _mm512_cvtepi32_ps(_mm512_and_si512(b0, nib));
          const __m512 l1 = _mm512_cvtepi32_ps(_mm512_and_si512(b1, nib));
          const __m512 h0 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b0, 4));
          const __m512 h1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b1, 4));
          const __m512 dl = _mm512_set1_ps(dj[2 * c]), dh = _mm512_set1_ps(dj[2 * c + 1]);
          for (int64_t t = 0; t < nt; ++t) {
            const float* xb = x + (t0 + t) * w.cols + b * 256 + 64 * c;
            const __m512 sl = _mm512_fmadd_ps(l1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(xb)));
            const __m512 sh =
                _mm512_fmadd_ps(h1, _mm512_loadu_ps(xb + 48), _mm512_mul_ps(h0, _mm512_loadu_ps(xb + 32)));
            acc[t] = _mm512_fmadd_ps(sl, dl, acc[t]);
            acc[t] = _mm512_fmadd_ps(sh, dh, acc[t]);
          }
        }
      }
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * w.rows + r] = _mm512_reduce_add_ps(acc[t]) - mins[t];
    }
  }
}

// Formats without a register-level path: each block through the reference dequantizer into a buffer, then FMAs.
// Q6_K is dequantized with vector code into the same buffer.
__attribute__((target("avx512f,avx512bw,f16c"))) void rows_avx512_generic(const GgmlMatrix& w, const float* x,
                                                                          float* y, int64_t tokens, int64_t r0,
                                                                          int64_t r1) {
  const size_t bb = block_bytes(w.type);
  const int64_t be = block_elems(w.type), nb = w.cols / be;
  constexpr int64_t kT = 8;
  alignas(64) float v[256];
  for (int64_t t0 = 0; t0 < tokens; t0 += kT) {
    const int64_t nt = std::min(kT, tokens - t0);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.bytes.data() + size_t(r) * w.row_bytes;
      __m512 acc[kT][2];
      for (int64_t t = 0; t < nt; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + size_t(b) * bb;
        if (w.type == uint32_t(GgmlType::q4_k)) q4_k_block(blk, v);
        else if (w.type == uint32_t(GgmlType::q6_k)) q6_k_block(blk, v);
        else quant::ggml_dequantize(w.type, blk, v, be);
        for (int64_t t = 0; t < nt; ++t) {
          const float* xb = x + (t0 + t) * w.cols + b * be;
          for (int64_t i = 0; i < be; i += 32) {
            acc[t][0] = _mm512_fmadd_ps(_mm512_load_ps(v + i), _mm512_loadu_ps(xb + i), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(_mm512_load_ps(v + i + 16), _mm512_loadu_ps(xb + i + 16), acc[t][1]);
          }
        }
      }
      for (int64_t t = 0; t < nt; ++t)
        y[(t0 + t) * w.rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
    }
  }
}

__attribute__((target("avx512f,avx512bw,f16c"))) void rows_avx512(const GgmlMatrix& w, const float* x, float* y,
                                                                  int64_t tokens, int64_t r0, int64_t r1) {
  if (w.type == uint32_t(GgmlType::q4_k)) return rows_q4_k(w, x, y, tokens, r0, r1);
  if (!fast_format(w.type)) return rows_avx512_generic(w, x, y, tokens, r0, r1);
  const size_t bb = block_bytes(w.type);
  constexpr int64_t kBlock = 32;
  const int64_t nb = w.cols / kBlock;
  constexpr int64_t kT = 8;  // tokens sharing one pass over a row
  for (int64_t t0 = 0; t0 < tokens; t0 += kT) {
    const int64_t nt = std::min(kT, tokens - t0);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.bytes.data() + size_t(r) * w.row_bytes;
      // Two accumulators per token (block halves): the FMA chains are half as long as with one.
      __m512 acc[kT][2];
      for (int64_t t = 0; t < nt; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        __m512 lo, hi;
        block_avx512(w.type, row + size_t(b) * bb, lo, hi);
        for (int64_t t = 0; t < nt; ++t) {
          const float* xb = x + (t0 + t) * w.cols + b * kBlock;
          acc[t][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), acc[t][0]);
          acc[t][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), acc[t][1]);
        }
      }
      for (int64_t t = 0; t < nt; ++t)
        y[(t0 + t) * w.rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
    }
  }
}

}  // namespace

bool supported(uint32_t type) { return quantized_format(type); }
std::string supported_names() { return "Q8_0, Q4_0, Q4_1 (register-level); Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (by block)"; }

GgmlMatrix make_matrix(uint32_t type, int64_t rows, int64_t cols, const uint8_t* data, size_t nbytes) {
  if (!supported(type))
    fail("ggml_gemv: no kernel for {} (kernels: {})", quant::ggml_type_name(type), supported_names());
  const int64_t be = block_elems(type);
  if (rows <= 0 || cols <= 0 || cols % be != 0)
    fail("ggml_gemv: a [{}, {}] {} matrix; columns must be a positive multiple of {}", rows, cols,
         quant::ggml_type_name(type), be);
  GgmlMatrix m;
  m.type = type, m.rows = rows, m.cols = cols;
  m.row_bytes = size_t(cols / be) * block_bytes(type);
  if (nbytes != m.row_bytes * size_t(rows))
    fail("ggml_gemv: {} bytes for a [{}, {}] {} matrix, expected {}", nbytes, rows, cols,
         quant::ggml_type_name(type), m.row_bytes * size_t(rows));
  m.bytes.assign(data, data + nbytes);
  return m;
}

Path best_path() { return cpu::mayiuse(cpu::Isa::avx512bw) ? Path::avx512 : Path::scalar; }
const char* path_name(Path p) { return p == Path::avx512 ? "avx512" : "scalar"; }

void gemv_rows(const GgmlMatrix& w, const float* x, float* y, int64_t tokens, int64_t r0, int64_t r1, Path path) {
  if (!supported(w.type)) fail("ggml_gemv: no kernel for {}", quant::ggml_type_name(w.type));
  if (path == Path::avx512) rows_avx512(w, x, y, tokens, r0, r1);
  else rows_scalar(w, x, y, tokens, r0, r1);
}

void gemv(const GgmlMatrix& w, const float* x, float* y, int64_t tokens, cpu::ThreadPool* pool) {
  static const Path path = best_path();
  if (!pool || pool->size() == 1 || w.rows < 64) {
    gemv_rows(w, x, y, tokens, 0, w.rows, path);
    return;
  }
  const int nt = pool->size();
  const int64_t per = (w.rows + nt - 1) / nt;
  pool->run([&](int tid, int) {
    const int64_t r0 = std::min(w.rows, int64_t(tid) * per), r1 = std::min(w.rows, r0 + per);
    if (r0 < r1) gemv_rows(w, x, y, tokens, r0, r1, path);
  });
}

}  // namespace genesis::kernels::ggml_gemv
