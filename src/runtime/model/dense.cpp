// Dense products; see dense.h. The bf16 kernels are compiled per function for their ISA (never -march=native) and
// chosen at run time with cpu::mayiuse(), so one binary runs everywhere.
#include "runtime/model/dense.h"

#include "common/error.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "runtime/model/ops.h"

#include <cblas.h>

namespace genesis::runtime {

namespace {

// sum_c bf16(w[c]) * x[c], fp32 accumulation.
using DotFn = float (*)(const uint16_t* w, const float* x, int64_t n);

float dot_scalar(const uint16_t* w, const float* x, int64_t n) {
  float acc[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int j = 0; j < 8; ++j) {
      const uint32_t u = uint32_t(w[c + j]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      acc[j] += f * x[c + j];
    }
  float s = 0;
  for (float a : acc) s += a;
  for (; c < n; ++c) {
    const uint32_t u = uint32_t(w[c]) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    s += f * x[c];
  }
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
// row's result does not depend on the tile it falls in (threads and tails change nothing). The weights are widened
// once per step and meet T tokens; the x rows of a token block stay in L1/L2 while the rows stream.
#define GENESIS_AVX512_BF16_TILE __attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline
template <int R, int T>
GENESIS_AVX512_BF16_TILE void bf16_tile_step(const uint16_t* w, int64_t cols, const float* x, int64_t c, __mmask16 m,
                                             __m512 (&acc)[R][T]) {
  __m512 wv[R];
  for (int i = 0; i < R; ++i)
    wv[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + i * cols + c)), 16));
  for (int j = 0; j < T; ++j) {
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + j * cols + c);
    for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
  }
}

template <int R, int T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void bf16_tile(const uint16_t* w, int64_t cols, const float* x,
                                                                      float* y, int64_t ldy, const float* bias) {
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) bf16_tile_step<R, T>(w, cols, x, c, __mmask16(0xFFFF), acc);
  if (c < cols) bf16_tile_step<R, T>(w, cols, x, c, __mmask16((1u << (cols - c)) - 1), acc);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[i] : 0.0f);
}

using TileFn = void (*)(const uint16_t*, int64_t, const float*, float*, int64_t, const float*);
template <int R>
constexpr std::array<TileFn, 4> tiles_of_rows() {
  return {bf16_tile<R, 1>, bf16_tile<R, 2>, bf16_tile<R, 3>, bf16_tile<R, 4>};
}
constexpr std::array<std::array<TileFn, 4>, 4> kTiles = {tiles_of_rows<1>(), tiles_of_rows<2>(), tiles_of_rows<3>(),
                                                        tiles_of_rows<4>()};

__attribute__((target("avx512f"))) void bf16_rows_avx512(const Dense& d, const float* x, float* y, int64_t n,
                                                         int64_t r0, int64_t r1) {
  const float* bias = d.bias.empty() ? nullptr : d.bias.data();
  constexpr int64_t kTokenBlock = 64;  // x rows reused by every row tile while they sit in L2
  for (int64_t t0 = 0; t0 < n; t0 += kTokenBlock) {
    const int64_t t1 = std::min(n, t0 + kTokenBlock);
    for (int64_t r = r0; r < r1; r += 4) {
      const int64_t R = std::min<int64_t>(4, r1 - r);
      for (int64_t t = t0; t < t1; t += 4) {
        const int64_t T = std::min<int64_t>(4, t1 - t);
        kTiles[size_t(R - 1)][size_t(T - 1)](&d.w16[size_t(r * d.cols)], d.cols, x + t * d.cols, y + t * d.rows + r,
                                             d.rows, bias ? bias + r : nullptr);
      }
    }
  }
  _mm256_zeroupper();  // the callers are SSE code: no dirty upper state behind
}

DotFn pick_dot() {
  if (cpu::mayiuse(cpu::Isa::avx512f)) return dot_avx512;
  if (cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma)) return dot_avx2;
  return dot_scalar;
}

void bf16_rows(const Dense& d, const float* x, float* y, int64_t n, int64_t r0, int64_t r1, DotFn dot) {
  static const bool wide = cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) &&
                           cpu::mayiuse(cpu::Isa::avx512vl);
  if (wide) {
    bf16_rows_avx512(d, x, y, n, r0, r1);
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* w = &d.w16[size_t(r * d.cols)];
    const float b = d.bias.empty() ? 0.0f : d.bias[size_t(r)];
    for (int64_t t = 0; t < n; ++t) y[t * d.rows + r] = dot(w, x + t * d.cols, d.cols) + b;
  }
}

}  // namespace

namespace {

// Rows [r0, r1) of an fp32 product through OpenBLAS on the calling thread (OpenBLAS is single-threaded inside the
// step: see use_blas_single_threaded in ops.h). w0 points at row r0 of the [rows, cols] matrix.
void fp32_rows(const float* w0, const float* bias, const float* x, float* y, int64_t n, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1) {
  if (bias)
    for (int64_t t = 0; t < n; ++t) std::copy(bias + r0, bias + r1, y + t * rows + r0);
  const float beta = bias ? 1.0f : 0.0f;
  if (n == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(r1 - r0), int(cols), 1.0f, w0, int(cols), x, 1, beta,
                y + r0, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(r1 - r0), int(cols), 1.0f, x, int(cols),
                w0, int(cols), beta, y + r0, int(rows));
}

// Int8-block rows [r0, r1) for every token of x (decode of several sequences): blocks of about 32 KB of weights, each
// read from memory once and then met by every token from cache, instead of the whole range streamed once per token.
// Each (row, token) is the same gemv_rows computation as alone.
void q8_rows_tokens(const kernels::q8_gemv::Q8Matrix& m, const std::vector<kernels::q8_gemv::Q8Activations>& xa,
                    int64_t n, float* y, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                    kernels::q8_gemv::Path path) {
  const int64_t block = std::max<int64_t>(16, (32768 * 8 / (cols * 9)) / 16 * 16);
  for (int64_t b = r0; b < r1; b += block)
    for (int64_t t = 0; t < n; ++t)
      kernels::q8_gemv::gemv_rows(m, xa[size_t(t)], y + t * rows, b, std::min(r1, b + block), path);
}

// Many rows of x (prefill): blocks of bf16 or int8 rows widened to fp32 once (exact), then an OpenBLAS sgemm over all
// of x's rows, so the products run at GEMM speed instead of converting every weight once per few rows of x.
constexpr int64_t kGemmRows = 16;
void widened_rows_gemm(const Dense& d, const float* x, float* y, int64_t n, int64_t r0, int64_t r1) {
  // One sgemm per thread's row range where it fits (OpenBLAS packs x, n x cols, again in every call), with the
  // widened block capped at 8 MB per thread (Mixtral's down projection has 14336 columns).
  const int64_t kBlock = std::clamp<int64_t>((int64_t(8) << 20) / (4 * d.cols), 64, 1024);
  thread_local std::vector<float> wf;
  wf.resize(size_t(std::min(kBlock, r1 - r0) * d.cols));
  const float* bias = d.bias.empty() ? nullptr : d.bias.data();
  for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
    const int64_t rb = std::min(kBlock, r1 - b0);
    if (d.is_q8()) {
      for (int64_t r = 0; r < rb; ++r) kernels::q8_gemv::dequantize_row(*d.q8, b0 + r, &wf[size_t(r * d.cols)]);
    } else {
      const uint16_t* src = &d.w16[size_t(b0 * d.cols)];
      for (int64_t i = 0; i < rb * d.cols; ++i) {
        const uint32_t u = uint32_t(src[i]) << 16;
        std::memcpy(&wf[size_t(i)], &u, 4);
      }
    }
    fp32_rows(wf.data(), bias, x, y, n, d.rows, d.cols, b0, b0 + rb);
  }
}

void add_bias(const Dense& d, float* y, int64_t n) {
  if (d.bias.empty()) return;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < d.rows; ++r) y[i * d.rows + r] += d.bias[size_t(r)];
}
}  // namespace

void dense_product(const Dense& d, const float* x, float* y, int64_t n, cpu::ThreadPool* pool) {
  if (d.is_gq()) {
    kernels::ggml_gemv::gemv(*d.gq, x, y, n, pool);
    add_bias(d, y, n);
    return;
  }
  if (d.is_nf4()) {
    if (!d.kernel1 || !d.kernel8) fail("dense_product: an NF4 matrix [{}, {}] without kernels", d.rows, d.cols);
    // Eight tokens share one pass over the weights; a tail of fewer runs token by token.
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) d.kernel8->run(*d.nf4, x + t * d.cols, y + t * d.rows, pool);
    for (; t < n; ++t) d.kernel1->run(*d.nf4, x + t * d.cols, y + t * d.rows, pool);
    add_bias(d, y, n);
    return;
  }
  const int nt = pool ? pool->size() : 1;
  // Contiguous row ranges, a multiple of 16 rows each: every thread streams its own part of the matrix.
  const int64_t per = ((d.rows + nt - 1) / nt + 15) / 16 * 16;
  auto split = [&](auto&& rows_fn) {
    if (nt == 1 || d.rows < 64) {
      rows_fn(int64_t(0), d.rows);
      return;
    }
    pool->run([&](int tid, int) {
      const int64_t r0 = std::min(d.rows, int64_t(tid) * per), r1 = std::min(d.rows, r0 + per);
      if (r0 < r1) rows_fn(r0, r1);
    });
  };
  if (d.is_q8()) {
    if (n >= kGemmRows) {
      split([&](int64_t r0, int64_t r1) { widened_rows_gemm(d, x, y, n, r0, r1); });
      return;
    }
    namespace q8 = kernels::q8_gemv;
    static const q8::Path path = q8::best_path();
    thread_local std::vector<q8::Q8Activations> xa;
    const std::vector<q8::Q8Activations>* xp = &xa;  // the caller's: inside the workers `xa` names their own
    if (xa.size() < size_t(n)) xa.resize(size_t(n));
    for (int64_t t = 0; t < n; ++t) q8::quantize_activations(x + t * d.cols, d.cols, xa[size_t(t)]);
    split([&](int64_t r0, int64_t r1) { q8_rows_tokens(*d.q8, *xp, n, y, d.rows, d.cols, r0, r1, path); });
    add_bias(d, y, n);
    return;
  }
  if (!d.bf16()) {
    const float* b = d.bias.empty() ? nullptr : d.bias.data();
    split([&](int64_t r0, int64_t r1) { fp32_rows(d.w.data() + r0 * d.cols, b, x, y, n, d.rows, d.cols, r0, r1); });
    return;
  }
  static const DotFn dot = pick_dot();
  if (n >= kGemmRows) {
    split([&](int64_t r0, int64_t r1) { widened_rows_gemm(d, x, y, n, r0, r1); });
    return;
  }
  split([&](int64_t r0, int64_t r1) { bf16_rows(d, x, y, n, r0, r1, dot); });
}

void dense_products(std::span<const DenseJob> jobs, const float* x, int64_t n, cpu::ThreadPool* pool) {
  const bool q8 = !jobs.empty() && jobs[0].d->is_q8(), bf16 = !jobs.empty() && jobs[0].d->bf16();
  bool fuse = pool && pool->size() > 1 && n < kGemmRows && (q8 || bf16);
  int64_t total = 0;
  for (const DenseJob& j : jobs) {
    fuse = fuse && j.d->is_q8() == q8 && j.d->bf16() == bf16 && j.d->cols == jobs[0].d->cols;
    total += j.d->rows;
  }
  if (!fuse) {
    for (const DenseJob& j : jobs) dense_product(*j.d, x, j.y, n, pool);
    return;
  }
  const int64_t cols = jobs[0].d->cols;
  const int nt = pool->size();
  const int64_t per = ((total + nt - 1) / nt + 15) / 16 * 16;
  // Thread tid's rows [tid * per, (tid + 1) * per) of the matrices stacked, cut at each matrix's boundary.
  auto region = [&](auto&& rows_fn) {
    pool->run([&](int tid, int) {
      const int64_t g0 = int64_t(tid) * per, g1 = g0 + per;
      int64_t off = 0;
      for (const DenseJob& j : jobs) {
        const int64_t r0 = std::max(g0, off) - off, r1 = std::min(g1, off + j.d->rows) - off;
        if (r0 < r1) rows_fn(j, r0, r1);
        off += j.d->rows;
      }
    });
  };
  if (q8) {
    namespace q8g = kernels::q8_gemv;
    static const q8g::Path path = q8g::best_path();
    thread_local std::vector<q8g::Q8Activations> xa;
    const std::vector<q8g::Q8Activations>* xp = &xa;  // the caller's instances, read by the workers
    if (xa.size() < size_t(n)) xa.resize(size_t(n));
    for (int64_t t = 0; t < n; ++t) q8g::quantize_activations(x + t * cols, cols, xa[size_t(t)]);
    region([&](const DenseJob& j, int64_t r0, int64_t r1) {
      q8_rows_tokens(*j.d->q8, *xp, n, j.y, j.d->rows, cols, r0, r1, path);
    });
    for (const DenseJob& j : jobs) add_bias(*j.d, j.y, n);
    return;
  }
  static const DotFn dot = pick_dot();
  region([&](const DenseJob& j, int64_t r0, int64_t r1) { bf16_rows(*j.d, x, j.y, n, r0, r1, dot); });
}

}  // namespace genesis::runtime
