// Baselines for `genesis bench gemv` (see baselines.h). Both split rows over the thread pool; OpenBLAS uses as many
// threads as the pool has.
#include "kernels/nf4_gemv/baselines.h"

#include <cblas.h>

#include <algorithm>

#include "cpu/thread_pool.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace genesis::kernels::nf4_gemv {
namespace {

template <class F>
void for_rows(cpu::ThreadPool* pool, int64_t M, F&& f) {
  if (pool == nullptr || pool->size() <= 1) {
    f(int64_t(0), M);
    return;
  }
  pool->run([&](int tid, int n) {
    const int64_t per = (M + n - 1) / n, a = std::min(M, per * tid), b = std::min(M, a + per);
    if (a < b) f(a, b);
  });
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void dequant_rows(const uint8_t* packed,
                                                                               const float* absmax, int64_t K, int bs,
                                                                               int64_t r0, int64_t r1, float* out) {
  const auto& code = quant::kNf4Codes;
  for (int64_t blk = r0 * K / bs; blk < r1 * K / bs; ++blk) {
    const float s = absmax[blk];
    const uint8_t* p = packed + blk * bs / 2;
    float* o = out + blk * bs;
    for (int j = 0; j < bs / 2; ++j) {
      o[2 * j] = code[p[j] >> 4] * s;
      o[2 * j + 1] = code[p[j] & 15] * s;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void fused_rows(const uint8_t* packed,
                                                                             const float* absmax, int64_t M, int64_t K,
                                                                             int bs, const float* x, int tokens,
                                                                             int64_t r0, int64_t r1, float* y) {
  const auto& code = quant::kNf4Codes;
  for (int64_t r = r0; r < r1; ++r)
    for (int t = 0; t < tokens; ++t) {
      const float* xt = x + t * K;
      float sum = 0;
      for (int64_t b = 0; b < K / bs; ++b) {
        float part = 0;
        const uint8_t* p = packed + (r * K + b * bs) / 2;
        for (int j = 0; j < bs / 2; ++j)
          part += code[p[j] >> 4] * xt[b * bs + 2 * j] + code[p[j] & 15] * xt[b * bs + 2 * j + 1];
        sum += part * absmax[(r * K + b * bs) / bs];
      }
      y[t * M + r] = sum;
    }
}

}  // namespace

void naive_dequant_sgemv(const quant::Nf4Matrix& w, const float* x, int tokens, float* y, std::vector<float>& scratch,
                         cpu::ThreadPool* pool) {
  const int64_t M = w.rows, K = w.cols;
  scratch.resize(size_t(M * K));
  for_rows(pool, M, [&](int64_t a, int64_t b) { dequant_rows(w.packed.data(), w.absmax.data(), K, w.blocksize, a, b, scratch.data()); });
  openblas_set_num_threads(pool ? pool->size() : 1);
  if (tokens == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(M), int(K), 1.0f, scratch.data(), int(K), x, 1, 0.0f, y, 1);
  else  // y[T][M] = x[T][K] * W^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, int(M), int(K), 1.0f, x, int(K), scratch.data(),
                int(K), 0.0f, y, int(M));
}

void compiled_fused_loop(const quant::Nf4Matrix& w, const float* x, int tokens, float* y, cpu::ThreadPool* pool) {
  for_rows(pool, w.rows, [&](int64_t a, int64_t b) {
    fused_rows(w.packed.data(), w.absmax.data(), w.rows, w.cols, w.blocksize, x, tokens, a, b, y);
  });
}

}  // namespace genesis::kernels::nf4_gemv
