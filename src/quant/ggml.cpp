// ggml block formats and reference dequantizers; see ggml.h. Each block layout is written out as ggml defines it
// (little-endian, fp16 scales), with static_asserts on the sizes.
#include "quant/ggml.h"

#include "quant/half.h"

#include <fmt/format.h>

#include <cstring>

#include "common/error.h"

namespace genesis::quant {

namespace {

constexpr int kQK = 32;    // elements per block of the legacy formats
constexpr int kQK_K = 256; // elements per super-block of the k-quants

struct BlockQ4_0 { uint16_t d; uint8_t qs[kQK / 2]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[kQK / 2]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[kQK / 2]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[kQK / 2]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[kQK]; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[kQK_K / 2]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[kQK_K / 8]; uint8_t qs[kQK_K / 2]; };
struct BlockQ6_K { uint8_t ql[kQK_K / 2]; uint8_t qh[kQK_K / 4]; int8_t scales[kQK_K / 16]; uint16_t d; };
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210 && sizeof(BlockQ5_0) == 22);

template <class B>
B load(const uint8_t* p) {
  B b;
  std::memcpy(&b, p, sizeof(B));  // GGUF data is only 32-byte aligned per tensor: blocks may be unaligned
  return b;
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

}  // namespace

float half_to_float(uint16_t h) { return f16_to_f32(h); }

std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::f32: return GgmlTypeInfo{"F32", 1, 4, true};
    case GgmlType::f16: return GgmlTypeInfo{"F16", 1, 2, true};
    case GgmlType::bf16: return GgmlTypeInfo{"BF16", 1, 2, true};
    case GgmlType::q4_0: return GgmlTypeInfo{"Q4_0", kQK, 18, true};
    case GgmlType::q4_1: return GgmlTypeInfo{"Q4_1", kQK, 20, true};
    case GgmlType::q5_0: return GgmlTypeInfo{"Q5_0", kQK, 22, true};
    case GgmlType::q5_1: return GgmlTypeInfo{"Q5_1", kQK, 24, true};
    case GgmlType::q8_0: return GgmlTypeInfo{"Q8_0", kQK, 34, true};
    case GgmlType::q8_1: return GgmlTypeInfo{"Q8_1", kQK, 36, false};
    case GgmlType::q2_k: return GgmlTypeInfo{"Q2_K", kQK_K, 84, false};
    case GgmlType::q3_k: return GgmlTypeInfo{"Q3_K", kQK_K, 110, false};
    case GgmlType::q4_k: return GgmlTypeInfo{"Q4_K", kQK_K, 144, true};
    case GgmlType::q5_k: return GgmlTypeInfo{"Q5_K", kQK_K, 176, true};
    case GgmlType::q6_k: return GgmlTypeInfo{"Q6_K", kQK_K, 210, true};
    case GgmlType::q8_k: return GgmlTypeInfo{"Q8_K", kQK_K, 292, false};
  }
  return std::nullopt;
}

std::string ggml_type_name(uint32_t type) {
  auto i = ggml_type_info(type);
  return i ? i->name : fmt::format("ggml type {}", type);
}

std::optional<uint64_t> ggml_row_bytes(uint32_t type, uint64_t n) {
  auto i = ggml_type_info(type);
  if (!i || n % uint64_t(i->block) != 0) return std::nullopt;
  uint64_t b = 0;
  if (__builtin_mul_overflow(n / uint64_t(i->block), uint64_t(i->block_bytes), &b)) return std::nullopt;
  return b;
}

void ggml_dequantize(uint32_t type, const void* src, float* y, int64_t n) {
  const auto info = ggml_type_info(type);
  if (!info || !info->dequantize)
    fail("no dequantizer for {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
         ggml_type_name(type));
  if (n % info->block != 0) fail("{}: {} elements is not a multiple of the block of {}", info->name, n, info->block);
  const auto* p = static_cast<const uint8_t*>(src);
  const int64_t nb = n / info->block;
  switch (GgmlType(type)) {
    case GgmlType::f32: std::memcpy(y, p, size_t(n) * 4); return;
    case GgmlType::f16:
      for (int64_t i = 0; i < n; ++i) y[i] = half_to_float(load<uint16_t>(p + 2 * i));
      return;
    case GgmlType::bf16:
      for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(load<uint16_t>(p + 2 * i));
      return;
    case GgmlType::q4_0:
      for (int64_t b = 0; b < nb; ++b, y += kQK) {
        const auto x = load<BlockQ4_0>(p + b * 18);
        const float d = half_to_float(x.d);
        for (int j = 0; j < kQK / 2; ++j) {
          y[j] = float((x.qs[j] & 0x0F) - 8) * d;
          y[j + kQK / 2] = float((x.qs[j] >> 4) - 8) * d;
        }
      }
      return;
    case GgmlType::q4_1:
      for (int64_t b = 0; b < nb; ++b, y += kQK) {
        const auto x = load<BlockQ4_1>(p + b * 20);
        const float d = half_to_float(x.d), m = half_to_float(x.m);
        for (int j = 0; j < kQK / 2; ++j) {
          y[j] = float(x.qs[j] & 0x0F) * d + m;
          y[j + kQK / 2] = float(x.qs[j] >> 4) * d + m;
        }
      }
      return;
    case GgmlType::q5_0:
      for (int64_t b = 0; b < nb; ++b, y += kQK) {
        const auto x = load<BlockQ5_0>(p + b * 22);
        const float d = half_to_float(x.d);
        uint32_t qh;
        std::memcpy(&qh, x.qh, 4);
        for (int j = 0; j < kQK / 2; ++j) {
          const uint8_t h0 = uint8_t(((qh >> j) << 4) & 0x10), h1 = uint8_t((qh >> (j + 12)) & 0x10);
          y[j] = float(((x.qs[j] & 0x0F) | h0) - 16) * d;
          y[j + kQK / 2] = float(((x.qs[j] >> 4) | h1) - 16) * d;
        }
      }
      return;
    case GgmlType::q5_1:
      for (int64_t b = 0; b < nb; ++b, y += kQK) {
        const auto x = load<BlockQ5_1>(p + b * 24);
        const float d = half_to_float(x.d), m = half_to_float(x.m);
        uint32_t qh;
        std::memcpy(&qh, x.qh, 4);
        for (int j = 0; j < kQK / 2; ++j) {
          const uint8_t h0 = uint8_t(((qh >> j) << 4) & 0x10), h1 = uint8_t((qh >> (j + 12)) & 0x10);
          y[j] = float((x.qs[j] & 0x0F) | h0) * d + m;
          y[j + kQK / 2] = float((x.qs[j] >> 4) | h1) * d + m;
        }
      }
      return;
    case GgmlType::q8_0:
      for (int64_t b = 0; b < nb; ++b, y += kQK) {
        const auto x = load<BlockQ8_0>(p + b * 34);
        const float d = half_to_float(x.d);
        for (int j = 0; j < kQK; ++j) y[j] = float(x.qs[j]) * d;
      }
      return;
    case GgmlType::q4_k:
      for (int64_t b = 0; b < nb; ++b) {
        const auto x = load<BlockQ4_K>(p + b * 144);
        const float d = half_to_float(x.d), dmin = half_to_float(x.dmin);
        const uint8_t* q = x.qs;
        for (int j = 0, is = 0; j < kQK_K; j += 64, is += 2, q += 32) {
          uint8_t sc, m;
          scale_min_k4(is, x.scales, sc, m);
          const float d1 = d * float(sc), m1 = dmin * float(m);
          scale_min_k4(is + 1, x.scales, sc, m);
          const float d2 = d * float(sc), m2 = dmin * float(m);
          for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
        }
      }
      return;
    case GgmlType::q5_k:
      for (int64_t b = 0; b < nb; ++b) {
        const auto x = load<BlockQ5_K>(p + b * 176);
        const float d = half_to_float(x.d), dmin = half_to_float(x.dmin);
        const uint8_t* ql = x.qs;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < kQK_K; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
          uint8_t sc, m;
          scale_min_k4(is, x.scales, sc, m);
          const float d1 = d * float(sc), m1 = dmin * float(m);
          scale_min_k4(is + 1, x.scales, sc, m);
          const float d2 = d * float(sc), m2 = dmin * float(m);
          for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + (x.qh[l] & u1 ? 16 : 0)) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + (x.qh[l] & u2 ? 16 : 0)) - m2;
        }
      }
      return;
    case GgmlType::q6_k:
      for (int64_t b = 0; b < nb; ++b) {
        const auto x = load<BlockQ6_K>(p + b * 210);
        const float d = half_to_float(x.d);
        const uint8_t* ql = x.ql;
        const uint8_t* qh = x.qh;
        const int8_t* sc = x.scales;
        for (int n0 = 0; n0 < kQK_K; n0 += 128, y += 128, ql += 64, qh += 32, sc += 8) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * float(sc[is]) * float(q1);
            y[l + 32] = d * float(sc[is + 2]) * float(q2);
            y[l + 64] = d * float(sc[is + 4]) * float(q3);
            y[l + 96] = d * float(sc[is + 6]) * float(q4);
          }
        }
      }
      return;
    default: break;
  }
  fail("no dequantizer for {}", ggml_type_name(type));
}

}  // namespace genesis::quant
