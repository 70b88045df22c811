// fp32 kernels of the forward pass (norms, rope, activations, dot/axpy, routing) and the BLAS threading setting.
// Matrix products live in dense.cpp and the kernel families; expert matrices in moe.cpp.
#include "runtime/model/ops.h"

#include <immintrin.h>

#include "cpu/isa.h"

#include <algorithm>
#include <cmath>
#include <numbers>

extern "C" void openblas_set_num_threads(int num_threads);  // OpenBLAS (also in its cblas.h)

namespace genesis::runtime {

void rms_norm(const float* x, const float* w, float* y, int64_t n, double eps) {
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

void apply_rope(float* x, int64_t heads, int64_t head_dim, int64_t rotary_dim, int64_t pos, const RopeTable& t) {
  const int64_t half = rotary_dim / 2;
  // cos/sin of float(pos) * inv_freq, the product rounded to fp32 like torch's fp32 matmul of positions x freqs.
  float cs[512], sn[512];
  std::vector<float> big_c, big_s;
  float* c = cs;
  float* s = sn;
  if (half > 512) {
    big_c.resize(size_t(half)), big_s.resize(size_t(half));
    c = big_c.data(), s = big_s.data();
  }
  for (int64_t i = 0; i < half; ++i) {
    const float a = float(pos) * t.inv_freq[size_t(i)];
    c[i] = float(std::cos(double(a))) * t.attention_scaling;
    s[i] = float(std::sin(double(a))) * t.attention_scaling;
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      v[i] = x1 * c[i] - x2 * s[i];
      v[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * up[i];
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

void softmax(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

std::vector<std::pair<int, float>> route_top_k(const float* logits, int64_t n_experts, int64_t k, bool renormalize) {
  std::vector<float> p(logits, logits + n_experts);
  softmax(p.data(), n_experts);
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
