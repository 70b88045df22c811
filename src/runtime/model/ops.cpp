// fp32 kernels of the forward pass (norms, rope, activations, dot/axpy, routing) and the BLAS threading setting.
// Matrix products live in dense.cpp and the kernel families; expert matrices in moe.cpp.
#include "runtime/model/ops.h"

#include <immintrin.h>

#include "cpu/isa.h"
#include "cpu/simd.h"
#include "quant/half.h"

#include <algorithm>
#include <cmath>
#include <numbers>

extern "C" void openblas_set_num_threads(int num_threads);  // OpenBLAS (also in its cblas.h)

namespace genesis::runtime {

namespace {

// The sum of squares in fp64 (exact products, 16 lanes in 4 chains) and y = w * (x * inv) in fp32, as the scalar
// loops below compute them up to the fp64 summation order. A scalar fp64 chain cost 4 cycles per element: on the
// 16-core host's decode the norms of a layer (hidden, post-attention, QK per head) ran ~10 us serially.
__attribute__((target("avx2,fma"))) void rms_norm_avx2(const float* x, const float* w, float* y, int64_t n,
                                                       double eps) {
  __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256d d[4] = {_mm256_cvtps_pd(_mm256_castps256_ps128(v0)), _mm256_cvtps_pd(_mm256_extractf128_ps(v0, 1)),
                          _mm256_cvtps_pd(_mm256_castps256_ps128(v1)), _mm256_cvtps_pd(_mm256_extractf128_ps(v1, 1))};
    for (int k = 0; k < 4; ++k) a[k] = _mm256_fmadd_pd(d[k], d[k], a[k]);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3])));
  double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float inv = float(1.0 / std::sqrt(ss / double(n) + eps));
  const __m256 iv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), iv)));
  for (; i < n; ++i) y[i] = w[i] * (x[i] * inv);
  _mm256_zeroupper();
}

}  // namespace

void rms_norm(const float* x, const float* w, float* y, int64_t n, double eps) {
  static const bool avx2 = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma);
  if (avx2) return rms_norm_avx2(x, w, y, n, eps);
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float inv = float(1.0 / std::sqrt(ss / double(n) + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * inv);
}

namespace {

// 1 / base^(2i/dim) for i < dim/2, computed in float32 as transformers does.
std::vector<float> base_inv_freq(double base, int64_t dim) {
  std::vector<float> f(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = float(2 * i) / float(dim);
    f[size_t(i)] = float(1.0 / double(std::pow(float(base), e)));
  }
  return f;
}

double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

}  // namespace

RopeTable rope_table(const ModelConfig& c, int64_t seq_len) {
  const RopeConfig& r = c.rope;
  const int64_t dim = c.rotary_dim();
  RopeTable t;
  switch (r.type) {
    case RopeType::default_:
      t.inv_freq = base_inv_freq(r.theta, dim);
      break;
    case RopeType::linear:
      t.inv_freq = base_inv_freq(r.theta, dim);
      for (float& f : t.inv_freq) f = float(f / r.factor);
      break;
    case RopeType::dynamic: {
      const double max_pos = double(c.max_position_embeddings);
      const double len = std::max(double(seq_len), max_pos);
      const double base =
          r.theta * std::pow((r.factor * len / max_pos) - (r.factor - 1), double(dim) / double(dim - 2));
      t.inv_freq = base_inv_freq(base, dim);
      break;
    }
    case RopeType::llama3: {
      t.inv_freq = base_inv_freq(r.theta, dim);
      const double old_ctx = double(r.original_max_position_embeddings);
      const double low_wavelen = old_ctx / r.low_freq_factor, high_wavelen = old_ctx / r.high_freq_factor;
      for (float& f : t.inv_freq) {
        const double wavelen = 2 * std::numbers::pi / double(f);
        double v = wavelen > low_wavelen ? double(f) / r.factor : double(f);
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          const double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          v = (1 - smooth) * v / r.factor + smooth * v;
        }
        f = float(v);
      }
      break;
    }
    case RopeType::yarn: {
      const double orig = double(r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                                        : c.max_position_embeddings);
      const double factor = r.factor;
      double attn = r.attention_factor;
      if (attn == 0.0) {
        attn = (r.mscale != 0.0 && r.mscale_all_dim != 0.0)
                   ? yarn_mscale(factor, r.mscale) / yarn_mscale(factor, r.mscale_all_dim)
                   : yarn_mscale(factor, 1.0);
      }
      auto correction_dim = [&](double rotations) {
        return (double(dim) * std::log(orig / (rotations * 2 * std::numbers::pi))) / (2 * std::log(r.theta));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (r.truncate) low = std::floor(low), high = std::ceil(high);
      low = std::max(low, 0.0);
      high = std::min(high, double(dim - 1));
      if (low == high) high += 0.001;
      const std::vector<float> extra = base_inv_freq(r.theta, dim);
      t.inv_freq.resize(extra.size());
      for (size_t i = 0; i < extra.size(); ++i) {
        const float ramp = std::clamp(float((float(i) - low) / (high - low)), 0.0f, 1.0f);
        const float extra_factor = 1.0f - ramp;
        const float inter = float(double(extra[i]) / factor);
        t.inv_freq[i] = inter * (1 - extra_factor) + extra[i] * extra_factor;
      }
      t.attention_scaling = float(attn);
      break;
    }
  }
  return t;
}

void rope_cos_sin(int64_t pos, int64_t rotary_dim, const RopeTable& t, float* cs) {
  const int64_t half = rotary_dim / 2;
  // cos/sin of float(pos) * inv_freq, the product rounded to fp32 like torch's fp32 matmul of positions x freqs.
  for (int64_t i = 0; i < half; ++i) {
    const float a = float(pos) * t.inv_freq[size_t(i)];
    cs[i] = float(std::cos(double(a))) * t.attention_scaling;
    cs[half + i] = float(std::sin(double(a))) * t.attention_scaling;
  }
}

void apply_rope(float* x, int64_t heads, int64_t head_dim, int64_t rotary_dim, const float* cs) {
  const int64_t half = rotary_dim / 2;
  const float *c = cs, *s = cs + half;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      v[i] = x1 * c[i] - x2 * s[i];
      v[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

namespace {

float dot_portable(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

__attribute__((target("avx512f"))) float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  const float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  _mm256_zeroupper();
  return s;
}

using DotF32 = float (*)(const float*, const float*, int64_t);
DotF32 pick_dot_f32() { return cpu::mayiuse(cpu::Isa::avx512f) ? dot_avx512 : dot_portable; }

}  // namespace

float dot_f32(const float* a, const float* b, int64_t n) {
  static const DotF32 f = pick_dot_f32();
  return f(a, b, n);
}

namespace {
void axpy_portable(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
// Explicit: at -O2 GCC leaves the loop above scalar (x and y may alias, and the cheap cost model refuses the check).
__attribute__((target("avx512f"))) void axpy_avx512(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
  _mm256_zeroupper();
}
using AxpyF32 = void (*)(float, const float*, float*, int64_t);
AxpyF32 pick_axpy_f32() { return cpu::mayiuse(cpu::Isa::avx512f) ? axpy_avx512 : axpy_portable; }
}  // namespace

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  static const AxpyF32 f = pick_axpy_f32();
  f(a, x, y, n);
}

namespace {

// Keys and values of the KV cache are fp32 or IEEE binary16 (KvType): one kernel per ISA for both, the element
// widened to fp32 as it is loaded (F16C's VCVTPH2PS on AVX2, its AVX-512 form there).
inline float ld1(const float* p) { return *p; }
inline float ld1(const uint16_t* p) { return quant::f16_to_f32(*p); }
__attribute__((target("avx2,fma,f16c"))) inline __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma,f16c"))) inline __m256 ld8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx512f"))) inline __m512 ld16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 ld16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <class T>
void scores_portable(const float* q, int64_t G, const T* k, int64_t cnt, int64_t d, float scale, float* s) {
  for (int64_t j = 0; j < cnt; ++j)
    for (int64_t g = 0; g < G; ++g) {
      float acc = 0.0f;
      for (int64_t i = 0; i < d; ++i) acc += q[g * d + i] * ld1(k + j * d + i);
      s[g * cnt + j] = scale * acc;
    }
}

template <class T>
void weighted_portable(const float* p, int64_t G, const T* v, int64_t cnt, int64_t d, float* o, int64_t ldo) {
  for (int64_t g = 0; g < G; ++g) {
    float* og = o + g * ldo;
    std::fill(og, og + d, 0.0f);
    for (int64_t j = 0; j < cnt; ++j)
      for (int64_t i = 0; i < d; ++i) og[i] += p[g * cnt + j] * ld1(v + j * d + i);
  }
}

constexpr int64_t kValueBlock = 32;  // value rows per block of group_weighted_sum (16 KiB at head_dim 128)

// The sums of a[0..7] (16 lanes each) in one 8-lane vector: lanes 0-3 those of a[0..3], lanes 4-7 those of a[4..7].
__attribute__((target("avx512f,avx2,fma,f16c"))) inline __m256 hsum8x16(const __m512* a) {
  __m256 h[8];
  for (int i = 0; i < 8; ++i)
    h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[i]), 1)));
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 4 keys x H heads (H <= 4) of group_scores: each key chunk loaded (and, from a binary16 cache, widened) once for
// the H heads and each query chunk once for the 4 keys, the 4H sums reduced together into s[h * cnt + r].
template <int H, class T>
__attribute__((target("avx512f,avx2,fma,f16c"))) inline void scores_4keys(const float* q, const T* kj, int64_t d,
                                                                          int64_t cnt, __m256 sc, float* s) {
  __m512 a[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; i += 16) {
    const __m512 k0 = ld16(kj + i), k1 = ld16(kj + d + i), k2 = ld16(kj + 2 * d + i), k3 = ld16(kj + 3 * d + i);
    for (int h = 0; h < H; ++h) {
      const __m512 x = _mm512_loadu_ps(q + h * d + i);
      a[4 * h] = _mm512_fmadd_ps(x, k0, a[4 * h]);
      a[4 * h + 1] = _mm512_fmadd_ps(x, k1, a[4 * h + 1]);
      a[4 * h + 2] = _mm512_fmadd_ps(x, k2, a[4 * h + 2]);
      a[4 * h + 3] = _mm512_fmadd_ps(x, k3, a[4 * h + 3]);
    }
  }
  // a[4h + r]: head h, key r.
  const __m256 r0 = _mm256_mul_ps(sc, hsum8x16(a));
  _mm_storeu_ps(s, _mm256_castps256_ps128(r0));
  if (H > 1) _mm_storeu_ps(s + cnt, _mm256_extractf128_ps(r0, 1));
  if (H > 2) {
    const __m256 r1 = _mm256_mul_ps(sc, hsum8x16(a + 8));
    _mm_storeu_ps(s + 2 * cnt, _mm256_castps256_ps128(r1));
    if (H > 3) _mm_storeu_ps(s + 3 * cnt, _mm256_extractf128_ps(r1, 1));
  }
}

// d a multiple of 16. Blocks of 4 keys: the heads in blocks of 4 (scores_4keys), the key blocks outside, so that the
// keys are read from memory once; a remainder of 2 or 3 heads (SmolLM2 has 3 per KV head) as one block of its own, so
// that its keys are widened once for all of them (one head at a time, each widened every key again: 3 heads at 64
// columns 8.6-9.0 -> 5.7 ns per position, hot, 2-core Zen 4). One head alone (no grouping) over blocks of 16 keys,
// the 16 keys' products reduced together (cpu::hsum16x16). Other keys one by one.
template <class T>
__attribute__((target("avx512f,avx2,fma,f16c"))) void scores_avx512(const float* q, int64_t G, const T* k,
                                                                    int64_t cnt, int64_t d, float scale, float* s) {
  const __m256 sc = _mm256_set1_ps(scale);
  const int64_t G4 = G & ~int64_t(3), rest = G - G4, cnt4 = cnt & ~int64_t(3);
  const int64_t Gb = rest >= 2 ? G : G4;  // heads in 4-key blocks
  for (int64_t j = 0; j < cnt4; j += 4) {
    const T* kj = k + j * d;
    for (int64_t g = 0; g < G4; g += 4) scores_4keys<4>(q + g * d, kj, d, cnt, sc, s + g * cnt + j);
    if (rest == 3) scores_4keys<3>(q + G4 * d, kj, d, cnt, sc, s + G4 * cnt + j);
    else if (rest == 2) scores_4keys<2>(q + G4 * d, kj, d, cnt, sc, s + G4 * cnt + j);
  }
  const __m512 sc16 = _mm512_set1_ps(scale);
  const int64_t cnt16 = cnt & ~int64_t(15);
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * d;
    int64_t j = g < Gb ? cnt4 : 0;
    if (g >= Gb)
      for (; j < cnt16; j += 16) {
        __m512 v[16];
        for (int r = 0; r < 16; ++r) {
          const T* kj = k + (j + r) * d;
          __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(qg), ld16(kj)), a1 = _mm512_setzero_ps();
          int64_t i = 16;
          for (; i + 32 <= d; i += 32) {
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i), ld16(kj + i), a1);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i + 16), ld16(kj + i + 16), a0);
          }
          if (i < d) a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i), ld16(kj + i), a1);
          v[r] = _mm512_add_ps(a0, a1);
        }
        _mm512_storeu_ps(s + g * cnt + j, _mm512_mul_ps(sc16, cpu::hsum16x16(v)));
      }
    for (; j < cnt; ++j) {
      const T* kj = k + j * d;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      int64_t i = 0;
      for (; i + 32 <= d; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i), ld16(kj + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i + 16), ld16(kj + i + 16), a1);
      }
      if (i < d) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i), ld16(kj + i), a0);
      s[g * cnt + j] = scale * _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
  }
  _mm256_zeroupper();
}

// HP heads x NC chunks of 16 columns of group_weighted_sum over value rows [j0, j1): each value chunk loaded (and
// widened) once for the HP heads; o accumulated unless j0 == 0.
template <int HP, int NC, class T>
__attribute__((target("avx512f"))) inline void weighted_heads(const float* p, const T* v, int64_t cnt, int64_t d,
                                                              int64_t j0, int64_t j1, float* o, int64_t ldo) {
  __m512 a[HP][NC];
  for (int h = 0; h < HP; ++h)
    for (int c = 0; c < NC; ++c) a[h][c] = j0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(o + h * ldo + c * 16);
  for (int64_t j = j0; j < j1; ++j) {
    __m512 w[HP];
    for (int h = 0; h < HP; ++h) w[h] = _mm512_set1_ps(p[h * cnt + j]);
    const T* vj = v + j * d;
    for (int c = 0; c < NC; ++c) {
      const __m512 x = ld16(vj + c * 16);
      for (int h = 0; h < HP; ++h) a[h][c] = _mm512_fmadd_ps(w[h], x, a[h][c]);
    }
  }
  for (int h = 0; h < HP; ++h)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o + h * ldo + c * 16, a[h][c]);
}

// d a multiple of 16, at most 256. A head dim of 64, 128, 192 or 256 in column quarters of 64, four heads a pass over
// a block of value rows (which stays in L1 for every pass): 16 accumulators, each value chunk widened once per pass.
// In head pairs over chunks of 128 columns (the other head dims still), each value was widened once per pair and
// SmolLM2's third head widened every value again: weighted sums per position and KV head, hot, 2-core Zen 4
// (median of 20000 calls, 128 positions): 3 heads at 64 columns 7.2 -> 4.3 ns, 4 at 128 15.4 -> 9.7 ns, 8 at 128
// 30.8 -> 19.8 ns.
template <class T>
__attribute__((target("avx512f"))) void weighted_avx512(const float* p, int64_t G, const T* v, int64_t cnt, int64_t d,
                                                        float* o, int64_t ldo) {
  const int64_t G2 = G & ~int64_t(1);
  for (int64_t j0 = 0; j0 < cnt; j0 += kValueBlock) {
    const int64_t j1 = std::min(cnt, j0 + kValueBlock);
    if (d % 64 == 0) {  // column quarters of 64: four heads a pass
      for (int64_t c0 = 0; c0 < d; c0 += 64)
        for (int64_t g = 0; g < G; g += 4) {
          const int64_t n = std::min<int64_t>(4, G - g);
          const float* pg = p + g * cnt;
          float* og = o + g * ldo + c0;
          if (n == 4) weighted_heads<4, 4>(pg, v + c0, cnt, d, j0, j1, og, ldo);
          else if (n == 3) weighted_heads<3, 4>(pg, v + c0, cnt, d, j0, j1, og, ldo);
          else if (n == 2) weighted_heads<2, 4>(pg, v + c0, cnt, d, j0, j1, og, ldo);
          else weighted_heads<1, 4>(pg, v + c0, cnt, d, j0, j1, og, ldo);
        }
      continue;
    }
    for (int64_t g = 0; g < G; g += 2) {
      const bool pair = g < G2;
      for (int64_t c0 = 0; c0 < d; c0 += 128) {
        const int64_t nc = std::min<int64_t>(8, (d - c0) / 16);
        __m512 a0[8], a1[8];
        float *o0 = o + g * ldo + c0, *o1 = o0 + ldo;
        for (int64_t c = 0; c < nc; ++c) {
          a0[c] = j0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(o0 + c * 16);
          a1[c] = j0 == 0 || !pair ? _mm512_setzero_ps() : _mm512_loadu_ps(o1 + c * 16);
        }
        const float *p0 = p + g * cnt, *p1 = pair ? p0 + cnt : p0;
        for (int64_t j = j0; j < j1; ++j) {
          const __m512 w0 = _mm512_set1_ps(p0[j]), w1 = _mm512_set1_ps(p1[j]);
          const T* vj = v + j * d + c0;
          for (int64_t c = 0; c < nc; ++c) {
            const __m512 x = ld16(vj + c * 16);
            a0[c] = _mm512_fmadd_ps(w0, x, a0[c]);
            a1[c] = _mm512_fmadd_ps(w1, x, a1[c]);
          }
        }
        for (int64_t c = 0; c < nc; ++c) {
          _mm512_storeu_ps(o0 + c * 16, a0[c]);
          if (pair) _mm512_storeu_ps(o1 + c * 16, a1[c]);
        }
      }
    }
  }
  _mm256_zeroupper();
}

__attribute__((target("avx2,fma,f16c"))) float hsum256(__m256 v) {
  const __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 y = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(y, _mm_shuffle_ps(y, y, 1)));
}

// The sums of a[0..7] in one vector: lanes 0-3 the sums of a[0..3], lanes 4-7 those of a[4..7].
__attribute__((target("avx2,fma,f16c"))) inline __m256 hsum8x8(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// d a multiple of 8. Blocks of 4 keys x 2 heads: each key chunk and query chunk loaded once for 8 products (the loads, not the
// multiply-adds, bounded a key-by-head loop), the 8 sums reduced together; the key blocks outside, so that the keys
// are read from L2 once. Other keys and an odd head one by one.
template <class T>
__attribute__((target("avx2,fma,f16c"))) void scores_avx2(const float* q, int64_t G, const T* k, int64_t cnt,
                                                          int64_t d, float scale, float* s) {
  const __m256 sc = _mm256_set1_ps(scale);
  const int64_t G2 = G & ~int64_t(1), cnt4 = cnt & ~int64_t(3);
  for (int64_t j = 0; j < cnt4; j += 4) {  // the 4 key rows stay in L1 while every head pair reads them
    const T* kj = k + j * d;
    for (int64_t g = 0; g < G2; g += 2) {
      const float *q0 = q + g * d, *q1 = q0 + d;
      __m256 a[8];
      for (__m256& x : a) x = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += 8) {
        const __m256 x0 = _mm256_loadu_ps(q0 + i), x1 = _mm256_loadu_ps(q1 + i);
        for (int r = 0; r < 4; ++r) {
          const __m256 kr = ld8(kj + r * d + i);
          a[r] = _mm256_fmadd_ps(x0, kr, a[r]);
          a[4 + r] = _mm256_fmadd_ps(x1, kr, a[4 + r]);
        }
      }
      const __m256 r = _mm256_mul_ps(sc, hsum8x8(a));
      _mm_storeu_ps(s + g * cnt + j, _mm256_castps256_ps128(r));
      _mm_storeu_ps(s + (g + 1) * cnt + j, _mm256_extractf128_ps(r, 1));
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * d;
    for (int64_t j = g < G2 ? cnt4 : 0; j < cnt; ++j) {
      const T* kj = k + j * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 16 <= d; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), ld8(kj + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i + 8), ld8(kj + i + 8), a1);
      }
      if (i < d) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), ld8(kj + i), a0);
      s[g * cnt + j] = scale * hsum256(_mm256_add_ps(a0, a1));
    }
  }
  _mm256_zeroupper();
}

// d a multiple of 8. When d is a multiple of 64 the heads go in pairs over the row in chunks of 64: 16 accumulators,
// each value chunk loaded once for both heads; otherwise (and an odd head) one head over chunks of 128 columns.
template <class T>
__attribute__((target("avx2,fma,f16c"))) void weighted_avx2(const float* p, int64_t G, const T* v, int64_t cnt,
                                                            int64_t d, float* o, int64_t ldo) {
  const int64_t nc = d / 8;
  const int64_t G2 = d % 64 == 0 ? G & ~int64_t(1) : 0;
  for (int64_t j0 = 0; j0 < cnt; j0 += kValueBlock) {  // a block of value rows stays in L1 for all the heads
    const int64_t j1 = std::min(cnt, j0 + kValueBlock);
    for (int64_t g = 0; g < G2; g += 2)
      for (int64_t c0 = 0; c0 < nc; c0 += 8) {
        __m256 a0[8], a1[8];
        float *o0 = o + g * ldo + c0 * 8, *o1 = o0 + ldo;
        for (int c = 0; c < 8; ++c) {
          a0[c] = j0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(o0 + c * 8);
          a1[c] = j0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(o1 + c * 8);
        }
        const float *p0 = p + g * cnt, *p1 = p0 + cnt;
        for (int64_t j = j0; j < j1; ++j) {
          const __m256 w0 = _mm256_set1_ps(p0[j]), w1 = _mm256_set1_ps(p1[j]);
          const T* vj = v + j * d + c0 * 8;
          for (int c = 0; c < 8; ++c) {
            const __m256 x = ld8(vj + c * 8);
            a0[c] = _mm256_fmadd_ps(w0, x, a0[c]);
            a1[c] = _mm256_fmadd_ps(w1, x, a1[c]);
          }
        }
        for (int c = 0; c < 8; ++c) {
          _mm256_storeu_ps(o0 + c * 8, a0[c]);
          _mm256_storeu_ps(o1 + c * 8, a1[c]);
        }
      }
    for (int64_t g = G2; g < G; ++g)
      for (int64_t c0 = 0; c0 < nc; c0 += 16) {  // 128 columns (16 registers) at a time
        const int64_t m = std::min<int64_t>(16, nc - c0);
        __m256 acc[16];
        float* og = o + g * ldo + c0 * 8;
        for (int64_t c = 0; c < m; ++c) acc[c] = j0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(og + c * 8);
        const float* pg = p + g * cnt;
        for (int64_t j = j0; j < j1; ++j) {
          const __m256 w = _mm256_set1_ps(pg[j]);
          const T* vj = v + j * d + c0 * 8;
          for (int64_t c = 0; c < m; ++c) acc[c] = _mm256_fmadd_ps(w, ld8(vj + c * 8), acc[c]);
        }
        for (int64_t c = 0; c < m; ++c) _mm256_storeu_ps(og + c * 8, acc[c]);
      }
  }
  _mm256_zeroupper();
}

bool use_avx512() {
  static const bool b = cpu::mayiuse(cpu::Isa::avx512f);
  return b;
}
bool use_avx2() {
  static const bool b = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma) && cpu::mayiuse(cpu::Isa::f16c);
  return b;
}

template <class T>
void scores_any(const float* q, int64_t G, const T* k, int64_t cnt, int64_t d, float scale, float* s) {
  if (use_avx512() && d % 16 == 0) scores_avx512(q, G, k, cnt, d, scale, s);
  else if (use_avx2() && d % 8 == 0) scores_avx2(q, G, k, cnt, d, scale, s);
  else scores_portable(q, G, k, cnt, d, scale, s);
}

template <class T>
void weighted_any(const float* p, int64_t G, const T* v, int64_t cnt, int64_t d, float* o, int64_t ldo) {
  if (use_avx512() && d % 16 == 0 && d <= 256) weighted_avx512(p, G, v, cnt, d, o, ldo);
  else if (use_avx2() && d % 8 == 0) weighted_avx2(p, G, v, cnt, d, o, ldo);
  else weighted_portable(p, G, v, cnt, d, o, ldo);
}

__attribute__((target("avx2,fma,f16c"))) void to_f16_avx2(const float* x, uint16_t* y, int64_t n) {
  const __m256 hi = _mm256_set1_ps(65504.0f), lo = _mm256_set1_ps(-65504.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // MAXPS / MINPS return their second operand where either is NaN: a NaN passes through both.
    const __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(x + i)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) y[i] = quant::f32_to_f16(std::clamp(x[i], -65504.0f, 65504.0f));
}

__attribute__((target("avx2,fma,f16c"))) void from_f16_avx2(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, ld8(x + i));
  for (; i < n; ++i) y[i] = quant::f16_to_f32(x[i]);
}

}  // namespace

void group_scores(const float* q, int64_t G, const float* k, int64_t cnt, int64_t d, float scale, float* s) {
  scores_any(q, G, k, cnt, d, scale, s);
}
void group_scores(const float* q, int64_t G, const uint16_t* k, int64_t cnt, int64_t d, float scale, float* s) {
  scores_any(q, G, k, cnt, d, scale, s);
}

void group_weighted_sum(const float* p, int64_t G, const float* v, int64_t cnt, int64_t d, float* o, int64_t ldo) {
  weighted_any(p, G, v, cnt, d, o, ldo);
}
void group_weighted_sum(const float* p, int64_t G, const uint16_t* v, int64_t cnt, int64_t d, float* o, int64_t ldo) {
  weighted_any(p, G, v, cnt, d, o, ldo);
}

namespace {

void delta_portable(float* S, int64_t dk, int64_t dv, const float* q, const float* k, const float* v, float decay,
                    float beta, float* o) {
  thread_local std::vector<float> sk;
  sk.assign(size_t(dv), 0.0f);
  std::fill(o, o + dv, 0.0f);
  for (int64_t i = 0; i < dk; ++i)
    for (int64_t j = 0; j < dv; ++j) {
      sk[size_t(j)] += k[i] * S[i * dv + j];
      o[j] += q[i] * S[i * dv + j];
    }
  float qk = 0.0f;
  for (int64_t i = 0; i < dk; ++i) qk += q[i] * k[i];
  for (int64_t j = 0; j < dv; ++j) {
    const float delta = (v[j] - decay * sk[size_t(j)]) * beta;
    sk[size_t(j)] = delta;
    o[j] = decay * o[j] + qk * delta;
  }
  for (int64_t i = 0; i < dk; ++i)
    for (int64_t j = 0; j < dv; ++j) S[i * dv + j] = decay * S[i * dv + j] + k[i] * sk[size_t(j)];
}

// Per slab of 64 columns (4 x 16 lanes): one pass over the slab's rows accumulates S^T k and S^T q in registers, a
// second rewrites the slab (32 KiB at 128 rows: still in L1) with the slab's delta in registers.
__attribute__((target("avx512f"))) void delta_avx512(float* S, int64_t dk, int64_t dv, const float* q, const float* k,
                                                     const float* v, float decay, float beta, float qk, float* o) {
  constexpr int W = 4;
  const __m512 dec = _mm512_set1_ps(decay), bet = _mm512_set1_ps(beta), qkv = _mm512_set1_ps(qk);
  for (int64_t c0 = 0; c0 < dv; c0 += 16 * W) {
    __m512 sk[W], so[W];
    for (int c = 0; c < W; ++c) sk[c] = _mm512_setzero_ps(), so[c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dk; ++i) {
      const __m512 ki = _mm512_set1_ps(k[i]), qi = _mm512_set1_ps(q[i]);
      const float* row = S + i * dv + c0;
      for (int c = 0; c < W; ++c) {
        const __m512 x = _mm512_loadu_ps(row + 16 * c);
        sk[c] = _mm512_fmadd_ps(ki, x, sk[c]);
        so[c] = _mm512_fmadd_ps(qi, x, so[c]);
      }
    }
    for (int c = 0; c < W; ++c) {
      // delta = beta (v - decay S^T k); o = decay S^T q + (q . k) delta
      sk[c] = _mm512_mul_ps(bet, _mm512_fnmadd_ps(dec, sk[c], _mm512_loadu_ps(v + c0 + 16 * c)));
      _mm512_storeu_ps(o + c0 + 16 * c, _mm512_fmadd_ps(qkv, sk[c], _mm512_mul_ps(dec, so[c])));
    }
    for (int64_t i = 0; i < dk; ++i) {
      const __m512 ki = _mm512_set1_ps(k[i]);
      float* row = S + i * dv + c0;
      for (int c = 0; c < W; ++c)
        _mm512_storeu_ps(row + 16 * c, _mm512_fmadd_ps(dec, _mm512_loadu_ps(row + 16 * c), _mm512_mul_ps(ki, sk[c])));
    }
  }
  _mm256_zeroupper();
}

// The same in slabs of 32 columns (4 x 8 lanes; 16 KiB at 128 rows).
__attribute__((target("avx2,fma"))) void delta_avx2(float* S, int64_t dk, int64_t dv, const float* q, const float* k,
                                                    const float* v, float decay, float beta, float qk, float* o) {
  constexpr int W = 4;
  const __m256 dec = _mm256_set1_ps(decay), bet = _mm256_set1_ps(beta), qkv = _mm256_set1_ps(qk);
  for (int64_t c0 = 0; c0 < dv; c0 += 8 * W) {
    __m256 sk[W], so[W];
    for (int c = 0; c < W; ++c) sk[c] = _mm256_setzero_ps(), so[c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dk; ++i) {
      const __m256 ki = _mm256_set1_ps(k[i]), qi = _mm256_set1_ps(q[i]);
      const float* row = S + i * dv + c0;
      for (int c = 0; c < W; ++c) {
        const __m256 x = _mm256_loadu_ps(row + 8 * c);
        sk[c] = _mm256_fmadd_ps(ki, x, sk[c]);
        so[c] = _mm256_fmadd_ps(qi, x, so[c]);
      }
    }
    for (int c = 0; c < W; ++c) {
      sk[c] = _mm256_mul_ps(bet, _mm256_fnmadd_ps(dec, sk[c], _mm256_loadu_ps(v + c0 + 8 * c)));
      _mm256_storeu_ps(o + c0 + 8 * c, _mm256_fmadd_ps(qkv, sk[c], _mm256_mul_ps(dec, so[c])));
    }
    for (int64_t i = 0; i < dk; ++i) {
      const __m256 ki = _mm256_set1_ps(k[i]);
      float* row = S + i * dv + c0;
      for (int c = 0; c < W; ++c)
        _mm256_storeu_ps(row + 8 * c, _mm256_fmadd_ps(dec, _mm256_loadu_ps(row + 8 * c), _mm256_mul_ps(ki, sk[c])));
    }
  }
  _mm256_zeroupper();
}

}  // namespace

void delta_rule_token(float* S, int64_t dk, int64_t dv, const float* q, const float* k, const float* v, float decay,
                      float beta, float* o) {
  static const bool avx512 = cpu::mayiuse(cpu::Isa::avx512f),
                    avx2 = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma);
  if (avx512 && dv % 64 == 0) return delta_avx512(S, dk, dv, q, k, v, decay, beta, dot_f32(q, k, dk), o);
  if (avx2 && dv % 32 == 0) return delta_avx2(S, dk, dv, q, k, v, decay, beta, dot_f32(q, k, dk), o);
  delta_portable(S, dk, dv, q, k, v, decay, beta, o);
}

void to_f16_saturated(const float* x, uint16_t* y, int64_t n) {
  if (use_avx2()) return to_f16_avx2(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = quant::f32_to_f16(std::isnan(x[i]) ? x[i] : std::clamp(x[i], -65504.0f, 65504.0f));
}

void from_f16(const uint16_t* x, float* y, int64_t n) {
  if (use_avx2()) return from_f16_avx2(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = quant::f16_to_f32(x[i]);
}

namespace {

// exp(x): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes' degree-6 polynomial (within 2 ulp of the correctly
// rounded value), times 2^n built in the exponent bits. Inputs below -87.3 give 0; above 88.3 (n would pass 127) they
// are clamped there, a finite 2.2e38 (softmax's inputs are <= 0; SwiGLU's exp(-g) that large makes its output 0).
constexpr float kExpLo = -87.33654f, kExpHi = 88.3f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

__attribute__((target("avx512f"))) inline __m512 exp512(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpLo), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kP0);
  for (float c : {kP1, kP2, kP3, kP4, kP5}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(__mmask16(~under), _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
}

__attribute__((target("avx2,fma"))) inline __m256 exp256(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(kExpLo), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP0);
  for (float c : {kP1, kP2, kP3, kP4, kP5}) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx512f"))) double exp_shift_sum_avx512(float* x, int64_t n, float shift) {
  const __m512 sh = _mm512_set1_ps(shift);
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sh)));
    _mm512_mask_storeu_ps(x + i, m, e);
    s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  const double r = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
  _mm256_zeroupper();
  return r;
}

__attribute__((target("avx2,fma"))) double exp_shift_sum_avx2(float* x, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
    _mm256_storeu_ps(x + i, e);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
  double r = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  if (i < n) {
    alignas(32) float tail[8] = {};
    for (int64_t j = i; j < n; ++j) tail[j - i] = x[j] - shift;
    _mm256_store_ps(tail, exp256(_mm256_load_ps(tail)));
    for (int64_t j = i; j < n; ++j) r += (x[j] = tail[j - i]);
  }
  _mm256_zeroupper();
  return r;
}

double exp_shift_sum_portable(float* x, int64_t n, float shift) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - shift));
  return sum;
}

// out[i] = silu(gate[i]) * up[i], or silu(gate[i]) alone when up is null.
__attribute__((target("avx512f"))) void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 d = _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    const __m512 a = _mm512_div_ps(g, d);
    _mm512_mask_storeu_ps(out + i, m, up ? _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, up + i)) : a);
  }
  _mm256_zeroupper();
}

// The last n % 8 values through masked loads and stores (as the AVX-512 path's masked tail): every value gets the
// same bits whatever range it is computed in (dense_swiglu runs a row in task ranges).
__attribute__((target("avx2,fma"))) void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 8) {
    const bool whole = n - i >= 8;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(n - i, 8))),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 g = whole ? _mm256_loadu_ps(gate + i) : _mm256_maskload_ps(gate + i, m);
    const __m256 d = _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g)));
    __m256 a = _mm256_div_ps(g, d);
    if (up) a = _mm256_mul_ps(a, whole ? _mm256_loadu_ps(up + i) : _mm256_maskload_ps(up + i, m));
    if (whole) _mm256_storeu_ps(out + i, a);
    else _mm256_maskstore_ps(out + i, m, a);
  }
  _mm256_zeroupper();
}

void swiglu_any(const float* gate, const float* up, float* out, int64_t n) {
  static const bool avx512 = cpu::mayiuse(cpu::Isa::avx512f),
                    avx2 = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma);
  if (avx512) return swiglu_avx512(gate, up, out, n);
  if (avx2) return swiglu_avx2(gate, up, out, n);
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * (up ? up[i] : 1.0f);
  }
}

}  // namespace

void swiglu(const float* gate, const float* up, float* out, int64_t n) { swiglu_any(gate, up, out, n); }

void silu(float* x, int64_t n) { swiglu_any(x, nullptr, x, n); }

double exp_shift_sum(float* x, int64_t n, float shift) {
  static const bool avx512 = cpu::mayiuse(cpu::Isa::avx512f),
                    avx2 = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma);
  if (avx512) return exp_shift_sum_avx512(x, n, shift);
  if (avx2) return exp_shift_sum_avx2(x, n, shift);
  return exp_shift_sum_portable(x, n, shift);
}

void softmax(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  const double sum = exp_shift_sum(x, n, mx);
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

namespace {
// The router's softmax with the C library's exp (its top-k must not move with a vector exp's last-bit differences).
void softmax_libm(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  const float inv = float(1.0 / exp_shift_sum_portable(x, n, mx));
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}
}  // namespace

std::vector<std::pair<int, float>> route_top_k(const float* logits, int64_t n_experts, int64_t k, bool renormalize) {
  std::vector<float> p(logits, logits + n_experts);
  softmax_libm(p.data(), n_experts);
  std::vector<int> idx(static_cast<size_t>(n_experts));
  for (int64_t i = 0; i < n_experts; ++i) idx[size_t(i)] = int(i);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b);
  });
  std::vector<std::pair<int, float>> out(static_cast<size_t>(k));
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    out[size_t(i)] = {idx[size_t(i)], p[size_t(idx[size_t(i)])]};
    sum += out[size_t(i)].second;
  }
  if (renormalize)
    for (auto& e : out) e.second /= sum;
  return out;
}

void use_blas_single_threaded() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

int64_t argmax(std::span<const float> v) {
  return int64_t(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace genesis::runtime
