// Scalar and AVX2 nf4_gemv group loops (see compiled.h). Per block: accumulate code * x in fp32, then scale by the
// row's absmax — the same arithmetic shape as the JIT fp32 path, hence the same error bound.
#include "kernels/nf4_gemv/compiled.h"

#include <immintrin.h>

#include <cstring>

#include "kernels/nf4_gemv/nf4_gemv.h"
#include "quant/nf4.h"

namespace genesis::kernels::nf4_gemv {

void compiled_group_scalar(const uint8_t* group, int64_t n_blocks, int bs, const float* x, int tokens, float* out) {
  const auto& code = quant::kNf4Codes;
  const int64_t rec = 8 * int64_t(bs) + 64;
  float acc[kMaxTokens][kGroupRows] = {};
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* c = group + b * rec;
    const float* sc = reinterpret_cast<const float*>(c + 8 * bs);
    const float* xb = x + size_t(b) * size_t(tokens) * size_t(bs);
    float blk[kMaxTokens][kGroupRows] = {};
    for (int s = 0; s < bs / 2; ++s)
      for (int r = 0; r < kGroupRows; ++r) {
        const uint8_t byte = c[s * 16 + r];
        const float c0 = code[byte & 15], c1 = code[byte >> 4];
        for (int t = 0; t < tokens; ++t) {
          const float* xt = xb + size_t(t) * size_t(bs);
          blk[t][r] += c0 * xt[2 * s] + c1 * xt[2 * s + 1];
        }
      }
    for (int t = 0; t < tokens; ++t)
      for (int r = 0; r < kGroupRows; ++r) acc[t][r] += blk[t][r] * sc[r];
  }
  for (int t = 0; t < tokens; ++t) std::memcpy(out + t * kGroupRows, acc[t], sizeof(acc[t]));
}

// 16-entry table lookup: two 8-entry permutes, picked by bit 3 of the index.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 lookup16(__m256 tab_lo, __m256 tab_hi, __m256i idx) {
  const __m256 lo = _mm256_permutevar8x32_ps(tab_lo, idx), hi = _mm256_permutevar8x32_ps(tab_hi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

__attribute__((target("avx2,fma"))) void compiled_group_avx2(const uint8_t* group, int64_t n_blocks, int bs,
                                                             const float* x, int tokens, float* out) {
  const auto& code = quant::kNf4Codes;
  const __m256 tab_lo = _mm256_loadu_ps(code.data()), tab_hi = _mm256_loadu_ps(code.data() + 8);
  const __m256i nib = _mm256_set1_epi32(15);
  const int64_t rec = 8 * int64_t(bs) + 64;
  __m256 acc[kMaxTokens][2];
  for (int t = 0; t < tokens; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* c = group + b * rec;
    const float* sc = reinterpret_cast<const float*>(c + 8 * bs);
    const float* xb = x + size_t(b) * size_t(tokens) * size_t(bs);
    __m256 blk[kMaxTokens][2];
    for (int t = 0; t < tokens; ++t) blk[t][0] = blk[t][1] = _mm256_setzero_ps();
    for (int s = 0; s < bs / 2; ++s)
      for (int h = 0; h < 2; ++h) {
        const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + s * 16 + 8 * h)));
        const __m256 w0 = lookup16(tab_lo, tab_hi, _mm256_and_si256(bytes, nib));
        const __m256 w1 = lookup16(tab_lo, tab_hi, _mm256_srli_epi32(bytes, 4));
        for (int t = 0; t < tokens; ++t) {
          const float* xt = xb + size_t(t) * size_t(bs);
          blk[t][h] = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xt + 2 * s), blk[t][h]);
          blk[t][h] = _mm256_fmadd_ps(w1, _mm256_broadcast_ss(xt + 2 * s + 1), blk[t][h]);
        }
      }
    for (int h = 0; h < 2; ++h) {
      const __m256 s8 = _mm256_loadu_ps(sc + 8 * h);
      for (int t = 0; t < tokens; ++t) acc[t][h] = _mm256_fmadd_ps(blk[t][h], s8, acc[t][h]);
    }
  }
  for (int t = 0; t < tokens; ++t) {
    _mm256_storeu_ps(out + t * kGroupRows, acc[t][0]);
    _mm256_storeu_ps(out + t * kGroupRows + 8, acc[t][1]);
  }
}

}  // namespace genesis::kernels::nf4_gemv
