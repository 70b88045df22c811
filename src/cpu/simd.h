// Small AVX-512 helpers shared by the kernels and the runtime's element-wise code.
#pragma once

#include <immintrin.h>

namespace genesis::cpu {

// The sums of v[0..15] (16 fp32 lanes each) in one vector, lane r that of v[r]: a transposing tree (per 128-bit lane
// pairs of rows, then 64-bit halves, then 128-bit lanes), 45 shuffles and adds for the 16 sums instead of a
// horizontal reduction per vector. Each sum is the same pairwise tree over its own lanes whatever the other vectors
// hold, so a vector's sum does not depend on its neighbours (kq_gemv's sum_lanes relies on it).
__attribute__((target("avx512f"))) inline __m512 hsum16x16(const __m512* v) {
  __m512 s1[8], s2[4], s3[2];
  for (int k = 0; k < 8; ++k)  // vectors 2k, 2k+1 -> per 128-bit lane [2k, 2k+1, 2k, 2k+1]
    s1[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  for (int q = 0; q < 4; ++q) {  // vectors 4q..4q+3 in each 128-bit lane
    const __m512d a = _mm512_castps_pd(s1[2 * q]), b = _mm512_castps_pd(s1[2 * q + 1]);
    s2[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // [0..3, 0..3, 4..7, 4..7] and [8..11, 8..11, 12..15, 12..15], then 0..15
  for (int h = 0; h < 2; ++h)
    s3[h] = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2 * h], s2[2 * h + 1], 0x88),
                          _mm512_shuffle_f32x4(s2[2 * h], s2[2 * h + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s3[0], s3[1], 0x88), _mm512_shuffle_f32x4(s3[0], s3[1], 0xDD));
}

}  // namespace genesis::cpu
