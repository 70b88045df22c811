// float_dense: see float_dense.h.
#include "kernels/float_dense/float_dense.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <fmt/format.h>

#include "common/error.h"
#include "cpu/isa.h"
#include "quant/half.h"

#include <cblas.h>

namespace genesis::kernels::float_dense {

namespace {

// sum_c bf16(w[c]) * x[c], fp32 accumulation.
using DotFn = float (*)(const uint16_t* w, const float* x, int64_t n);

float dot_scalar(const uint16_t* w, const float* x, int64_t n) {
  float acc[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int j = 0; j < 8; ++j) acc[j] += quant::bf16_to_f32(w[c + j]) * x[c + j];
  float s = 0;
  for (float a : acc) s += a;
  for (; c < n; ++c) s += quant::bf16_to_f32(w[c]) * x[c];
  return s;
}

__attribute__((target("avx2,fma"))) float dot_avx2(const uint16_t* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m256i w0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c)));
    const __m256i w1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c + 8)));
    a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), _mm256_loadu_ps(x + c), a0);
    a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), _mm256_loadu_ps(x + c + 8), a1);
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(a0, a1));
  float s = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  return s + dot_scalar(w + c, x + c, n - c);
}

__attribute__((target("avx512f"))) float dot_avx512(const uint16_t* w, const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    const __m512i w0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c)));
    const __m512i w1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c + 16)));
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w0, 16)), _mm512_loadu_ps(x + c), a0);
    a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w1, 16)), _mm512_loadu_ps(x + c + 16), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + dot_scalar(w + c, x + c, n - c);
}

// AVX-512: tiles of R rows x T tokens (R, T <= 4), one fp32 accumulator per (row, token) over 16-column steps, so a
// row's result does not depend on the tile it falls in (threads and tails change nothing). The weights (bf16, widened,
// or fp32) are loaded once per step and meet T tokens; the x rows of a token block stay in L1/L2 while the rows
// stream.
#define GENESIS_AVX512_TILE __attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline
GENESIS_AVX512_TILE __m512 load_w(const uint16_t* w, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w)), 16));
}
GENESIS_AVX512_TILE __m512 load_w(const float* w, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w); }

template <class Wt, int R, int T>
GENESIS_AVX512_TILE void tile_step(const Wt* w, int64_t cols, const float* x, int64_t c, __mmask16 m,
                                   __m512 (&acc)[R][T]) {
  __m512 wv[R];
  for (int i = 0; i < R; ++i) wv[i] = load_w(w + i * cols + c, m);
  for (int j = 0; j < T; ++j) {
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + j * cols + c);
    for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
  }
}

template <class Wt, int R, int T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tile(const Wt* w, int64_t cols, const float* x, float* y,
                                                                int64_t ldy, const float* bias) {
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) tile_step<Wt, R, T>(w, cols, x, c, __mmask16(0xFFFF), acc);
  if (c < cols) tile_step<Wt, R, T>(w, cols, x, c, __mmask16((1u << (cols - c)) - 1), acc);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[i] : 0.0f);
}

template <class Wt>
using TileFn = void (*)(const Wt*, int64_t, const float*, float*, int64_t, const float*);
template <class Wt, int R>
constexpr std::array<TileFn<Wt>, 4> tiles_of_rows() {
  return {tile<Wt, R, 1>, tile<Wt, R, 2>, tile<Wt, R, 3>, tile<Wt, R, 4>};
}
template <class Wt>
constexpr std::array<std::array<TileFn<Wt>, 4>, 4> kTiles = {tiles_of_rows<Wt, 1>(), tiles_of_rows<Wt, 2>(),
                                                             tiles_of_rows<Wt, 3>(), tiles_of_rows<Wt, 4>()};

template <class Wt>
__attribute__((target("avx512f"))) void rows_avx512(const Wt* w, int64_t rows, int64_t cols, const float* x, float* y,
                                                    int64_t n, int64_t r0, int64_t r1) {
  constexpr int64_t kTokenBlock = 64;  // x rows reused by every row tile while they sit in L2
  for (int64_t t0 = 0; t0 < n; t0 += kTokenBlock) {
    const int64_t t1 = std::min(n, t0 + kTokenBlock);
    for (int64_t r = r0; r < r1; r += 4) {
      const int64_t R = std::min<int64_t>(4, r1 - r);
      for (int64_t t = t0; t < t1; t += 4) {
        const int64_t T = std::min<int64_t>(4, t1 - t);
        kTiles<Wt>[size_t(R - 1)][size_t(T - 1)](w + r * cols, cols, x + t * cols, y + t * rows + r, rows, nullptr);
      }
    }
  }
  _mm256_zeroupper();  // the callers are SSE code: no dirty upper state behind
}

// AVX2, fp32 weights: 4 rows at a time, each token's 4 dot products over 8-column steps, x's step loaded once for
// the 4 rows.
__attribute__((target("avx2,fma"))) void f32_rows_avx2(const float* w, int64_t rows, int64_t cols, const float* x,
                                                       float* y, int64_t n, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r += 4) {
    const int64_t R = std::min<int64_t>(4, r1 - r);
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * cols;
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      int64_t c = 0;
      for (; c + 8 <= cols; c += 8) {
        const __m256 xv = _mm256_loadu_ps(xt + c);
        for (int64_t i = 0; i < R; ++i) a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(w + (r + i) * cols + c), xv, a[i]);
      }
      for (int64_t i = 0; i < R; ++i) {
        alignas(32) float l[8];
        _mm256_store_ps(l, a[i]);
        float sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        for (int64_t cc = c; cc < cols; ++cc) sum += w[(r + i) * cols + cc] * xt[cc];
        y[t * rows + r + i] = sum;
      }
    }
  }
  _mm256_zeroupper();
}

DotFn pick_dot() {
  if (cpu::mayiuse(cpu::Isa::avx512f)) return dot_avx512;
  if (cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma)) return dot_avx2;
  return dot_scalar;
}

void bf16_rows(const uint16_t* w, int64_t rows, int64_t cols, const float* x, float* y, int64_t n, int64_t r0,
               int64_t r1) {
  static const bool wide = cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) &&
                           cpu::mayiuse(cpu::Isa::avx512vl);
  if (wide) {
    rows_avx512(w, rows, cols, x, y, n, r0, r1);
    return;
  }
  static const DotFn dot = pick_dot();
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < n; ++t) y[t * rows + r] = dot(w + r * cols, x + t * cols, cols);
}

void check_size(size_t have, int64_t rows, int64_t cols, const char* what) {
  if (rows < 1 || cols < 1 || have != size_t(rows * cols))
    fail("float_dense: {} matrix [{}, {}] given {} values", what, rows, cols, have);
}

class F32Linear final : public Linear {
 public:
  F32Linear(int64_t rows, int64_t cols, std::vector<float> w) : Linear(rows, cols), w_(std::move(w)) {
    check_size(w_.size(), rows, cols, "fp32");
  }
  size_t bytes() const override { return w_.size() * 4; }
  std::string format() const override { return "f32"; }
  std::string describe() const override { return "f32 (row tiles; OpenBLAS sgemm from 16 rows)"; }
  int64_t row_granule() const override { return 1; }
  std::string_view activation_kind() const override { return "f32"; }
  std::unique_ptr<LinearActivations> new_activations() const override { return std::make_unique<FloatActivations>(); }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    prepare_float(x, n, cols(), a, "float_dense f32");
  }
  // Few rows of x (decode): our tiles (AVX-512, AVX2), each task's rows streamed once. OpenBLAS's sgemv took a
  // lock-guarded buffer from its allocator on every call: 16 threads splitting a 1 MiB router into 32 KiB tasks
  // spent 2.8 ms per token in it on the 16-core host (1.0 ms in 128 KiB tasks). Many rows, or a CPU without AVX2:
  // OpenBLAS on the calling thread (the runtime keeps it single-threaded inside a step and splits rows itself).
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& f = activations_as<FloatActivations>(a, "float_dense f32");
    static const bool wide = cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) &&
                             cpu::mayiuse(cpu::Isa::avx512vl),
                      avx2 = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma);
    if (f.n < kGemmRows && wide) return rows_avx512(w_.data(), rows(), cols(), f.x, y, f.n, r0, r1);
    if (f.n < kGemmRows && avx2) return f32_rows_avx2(w_.data(), rows(), cols(), f.x, y, f.n, r0, r1);
    const float* w0 = w_.data() + r0 * cols();
    if (f.n == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(r1 - r0), int(cols()), 1.0f, w0, int(cols()), f.x, 1, 0.0f,
                  y + r0, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(f.n), int(r1 - r0), int(cols()), 1.0f, f.x,
                  int(cols()), w0, int(cols()), 0.0f, y + r0, int(rows()));
  }
  void row_f32(int64_t r, float* out) const override {
    std::memcpy(out, &w_[size_t(r * cols())], size_t(cols()) * 4);
  }

 private:
  std::vector<float> w_;
};

class Bf16Linear final : public Linear {
 public:
  Bf16Linear(int64_t rows, int64_t cols, std::vector<uint16_t> w) : Linear(rows, cols), w_(std::move(w)) {
    check_size(w_.size(), rows, cols, "bf16");
  }
  size_t bytes() const override { return w_.size() * 2; }
  std::string format() const override { return "bf16"; }
  std::string describe() const override { return "bf16 (widened in registers; sgemm from 16 rows)"; }
  int64_t row_granule() const override { return 1; }
  std::string_view activation_kind() const override { return "f32"; }
  std::unique_ptr<LinearActivations> new_activations() const override { return std::make_unique<FloatActivations>(); }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    prepare_float(x, n, cols(), a, "float_dense bf16");
  }
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& f = activations_as<FloatActivations>(a, "float_dense bf16");
    if (f.n >= kGemmRows) widened_gemm_rows(*this, f.x, f.n, y, r0, r1);
    else bf16_rows(w_.data(), rows(), cols(), f.x, y, f.n, r0, r1);
  }
  void row_f32(int64_t r, float* out) const override {
    const uint16_t* src = &w_[size_t(r * cols())];
    for (int64_t c = 0; c < cols(); ++c) out[c] = quant::bf16_to_f32(src[c]);
  }

 private:
  std::vector<uint16_t> w_;
};

}  // namespace

std::shared_ptr<const Linear> make_f32(int64_t rows, int64_t cols, std::vector<float> w) {
  return std::make_shared<const F32Linear>(rows, cols, std::move(w));
}
std::shared_ptr<const Linear> make_bf16(int64_t rows, int64_t cols, std::vector<uint16_t> w) {
  return std::make_shared<const Bf16Linear>(rows, cols, std::move(w));
}

}  // namespace genesis::kernels::float_dense
