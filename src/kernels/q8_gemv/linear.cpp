// q8_gemv behind the Linear seam: few rows of x quantized per 32-block and run by gemv_rows; from kGemmRows rows the
// matrix is widened in blocks (exactly q * scale) and multiplied by sgemm.
#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"

#include "kernels/q8_gemv/q8_gemv.h"

namespace genesis::kernels::q8_gemv {

namespace {

struct Q8LinearActivations : LinearActivations {
  const float* x = nullptr;           // n >= kGemmRows: the fp32 rows, for the widened GEMM
  std::vector<Q8Activations> rows;    // n < kGemmRows: each row quantized
};

constexpr std::string_view kName = "q8_gemv";

class Q8Linear final : public Linear {
 public:
  explicit Q8Linear(std::shared_ptr<const Q8Matrix> m) : Linear(m->rows, m->cols), m_(std::move(m)) {}
  size_t bytes() const override { return m_->bytes(); }
  std::string format() const override { return "int8 blocks"; }
  std::string describe() const override { return fmt::format("int8 blocks (q8_gemv {})", path_name(path())); }
  std::string_view activation_kind() const override { return "q8/32"; }
  std::unique_ptr<LinearActivations> new_activations() const override {
    return std::make_unique<Q8LinearActivations>();
  }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    if (n < 1) fail("q8_gemv: prepare() with {} rows of x", n);
    auto& q = activations_as<Q8LinearActivations>(a, kName);
    q.n = n, q.cols = cols(), q.x = x;
    if (n >= kGemmRows) return;
    if (q.rows.size() < size_t(n)) q.rows.resize(size_t(n));
    for (int64_t t = 0; t < n; ++t) quantize_activations(x + t * cols(), cols(), q.rows[size_t(t)]);
  }
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& q = activations_as<Q8LinearActivations>(a, kName);
    if (q.n >= kGemmRows) {
      widened_gemm_rows(*this, q.x, q.n, y, r0, r1);
      return;
    }
    // Rows in blocks of about 32 KB of weights, each met by every row of x while it sits in cache: the range is read
    // from memory once per product, not once per row of x (decode of several sequences). Each (row, x row) is the
    // same gemv_rows computation as alone.
    const int64_t block = std::max<int64_t>(16, (32768 * 8 / (cols() * 9)) / 16 * 16);
    for (int64_t b = r0; b < r1; b += block)
      for (int64_t t = 0; t < q.n; ++t)
        gemv_rows(*m_, q.rows[size_t(t)], y + t * rows(), b, std::min(r1, b + block), path());
  }
  void row_f32(int64_t r, float* out) const override { dequantize_row(*m_, r, out); }

 private:
  static Path path() {
    static const Path p = best_path();
    return p;
  }
  std::shared_ptr<const Q8Matrix> m_;
};

}  // namespace

std::shared_ptr<const Linear> make_linear(std::shared_ptr<const Q8Matrix> m) {
  return std::make_shared<const Q8Linear>(std::move(m));
}

}  // namespace genesis::kernels::q8_gemv
