// What every Linear family shares: the activation check, fp32 activations by pointer, and the widened-GEMM path for
// many rows (see linear.h).
#include "kernels/linear.h"

#include <algorithm>
#include <vector>

#include <cblas.h>

#include "common/error.h"

namespace genesis::kernels {

void throw_activation_mismatch(std::string_view family) {
  fail("{}: activations prepared by another family's Linear (activation kinds differ)", family);
}

void prepare_float(const float* x, int64_t n, int64_t cols, LinearActivations& a, std::string_view family) {
  if (n < 1) fail("{}: prepare() with {} rows of x", family, n);
  auto& f = activations_as<FloatActivations>(a, family);
  f.x = x, f.n = n, f.cols = cols;
}

void widened_gemm_rows(const Linear& w, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  const int64_t cols = w.cols();
  // One sgemm per call where it fits (OpenBLAS packs x, n x cols, again in every call), with the widened block
  // capped at 8 MB per thread (Mixtral's down projection has 14336 columns).
  const int64_t block = std::clamp<int64_t>((int64_t(8) << 20) / (4 * cols), 64, 1024);
  thread_local std::vector<float> wf;
  wf.resize(size_t(std::min(block, r1 - r0) * cols));
  for (int64_t b0 = r0; b0 < r1; b0 += block) {
    const int64_t rb = std::min(block, r1 - b0);
    for (int64_t r = 0; r < rb; ++r) w.row_f32(b0 + r, &wf[size_t(r * cols)]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(rb), int(cols), 1.0f, x, int(cols), wf.data(),
                int(cols), 0.0f, y + b0, int(w.rows()));
  }
}

}  // namespace genesis::kernels
