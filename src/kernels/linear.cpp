// What every Linear family shares: the activation check, fp32 activations by pointer, and the widened-GEMM path for
// many rows (see linear.h).
#include "kernels/linear.h"

#include <algorithm>
#include <vector>

#include <cblas.h>
#include <fmt/format.h>

#include "common/error.h"

namespace genesis::kernels {

void throw_activation_mismatch(std::string_view family) {
  fail("{}: activations prepared by another family's Linear (activation kinds differ)", family);
}

void Linear::stored_row(int64_t, uint8_t*) const {
  fail("{}: this matrix is not held as GGUF blocks (no stored rows)", describe());
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

namespace {

struct StackedActivations : LinearActivations {
  std::unique_ptr<LinearActivations> top, bottom;
};

class StackedLinear final : public Linear {
 public:
  StackedLinear(std::shared_ptr<const Linear> top, std::shared_ptr<const Linear> bottom)
      : Linear(top->rows() + bottom->rows(), top->cols()), top_(std::move(top)), bottom_(std::move(bottom)) {
    if (top_->cols() != bottom_->cols())
      fail("stacked matrices need the same columns: [{}, {}] over [{}, {}]", top_->rows(), top_->cols(),
           bottom_->rows(), bottom_->cols());
    kind_ = fmt::format("stacked({}|{})", top_->activation_kind(), bottom_->activation_kind());
  }
  size_t bytes() const override { return top_->bytes() + bottom_->bytes(); }
  std::string format() const override { return top_->format() + "+" + bottom_->format(); }
  std::string describe() const override { return top_->describe() + " over " + bottom_->describe(); }
  std::string_view activation_kind() const override { return kind_; }
  std::unique_ptr<LinearActivations> new_activations() const override {
    auto a = std::make_unique<StackedActivations>();
    a->top = top_->new_activations();
    a->bottom = bottom_->new_activations();
    return a;
  }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    auto& s = activations_as<StackedActivations>(a, "stacked");
    s.n = n, s.cols = cols();
    top_->prepare(x, n, *s.top);
    bottom_->prepare(x, n, *s.bottom);
  }
  // Each part writes rows of its own height: run it on a buffer and scatter into y's [n][rows()] rows.
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& s = activations_as<StackedActivations>(a, "stacked");
    const int64_t split = top_->rows();
    thread_local std::vector<float> buf;
    auto part = [&](const Linear& l, const LinearActivations& pa, int64_t p0, int64_t p1, int64_t offset) {
      if (p0 >= p1) return;
      buf.resize(size_t(s.n * l.rows()));
      l.run_rows(pa, buf.data(), p0, p1);
      for (int64_t t = 0; t < s.n; ++t)
        std::copy(buf.begin() + t * l.rows() + p0, buf.begin() + t * l.rows() + p1, y + t * rows() + offset + p0);
    };
    part(*top_, *s.top, std::min(r0, split), std::min(r1, split), 0);
    part(*bottom_, *s.bottom, std::max(r0, split) - split, std::max(r1, split) - split, split);
  }
  int64_t row_granule() const override { return std::max(top_->row_granule(), bottom_->row_granule()); }
  void row_f32(int64_t r, float* out) const override {
    if (r < top_->rows()) top_->row_f32(r, out);
    else bottom_->row_f32(r - top_->rows(), out);
  }

 private:
  std::shared_ptr<const Linear> top_, bottom_;
  std::string kind_;
};

}  // namespace

std::shared_ptr<const Linear> make_stacked(std::shared_ptr<const Linear> top, std::shared_ptr<const Linear> bottom) {
  return std::make_shared<const StackedLinear>(std::move(top), std::move(bottom));
}

}  // namespace genesis::kernels
