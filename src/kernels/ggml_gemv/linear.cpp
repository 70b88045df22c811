// ggml_gemv behind the Linear seam: the matrix as the GGUF file stores it, fp32 activations; from kGemmRows rows of x
// blocks of rows are dequantized (ggml's formula) and multiplied by sgemm.
#include <fmt/format.h>

#include <cstring>

#include "common/error.h"

#include "quant/ggml.h"
#include "kernels/ggml_gemv/ggml_gemv.h"

namespace genesis::kernels::ggml_gemv {

namespace {

constexpr std::string_view kName = "ggml_gemv";

class GgmlLinear final : public Linear {
 public:
  explicit GgmlLinear(std::shared_ptr<const GgmlMatrix> m) : Linear(m->rows, m->cols), m_(std::move(m)) {}
  size_t bytes() const override { return m_->bytes.size(); }
  std::string format() const override { return quant::ggml_type_name(m_->type); }
  std::string describe() const override {
    return fmt::format("{} kept as stored (ggml_gemv {})", format(), path_name(path()));
  }
  std::string_view activation_kind() const override { return "f32"; }
  std::unique_ptr<LinearActivations> new_activations() const override { return std::make_unique<FloatActivations>(); }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    prepare_float(x, n, cols(), a, kName);
  }
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& f = activations_as<FloatActivations>(a, kName);
    if (f.n >= kGemmRows) widened_gemm_rows(*this, f.x, f.n, y, r0, r1);
    else gemv_rows(*m_, f.x, y, f.n, r0, r1, path());
  }
  int64_t row_granule() const override { return 1; }
  uint32_t stored_type() const override { return m_->type; }
  size_t stored_row_bytes() const override { return m_->row_bytes; }
  void stored_row(int64_t r, uint8_t* out) const override {
    if (r < 0 || r >= rows()) fail("ggml_gemv: stored row {} of {}", r, rows());
    std::memcpy(out, m_->bytes.data() + size_t(r) * m_->row_bytes, m_->row_bytes);
  }
  void row_f32(int64_t r, float* out) const override {
    quant::ggml_dequantize(m_->type, m_->bytes.data() + size_t(r) * m_->row_bytes, out, cols());
  }

 private:
  static Path path() {
    static const Path p = best_path();
    return p;
  }
  std::shared_ptr<const GgmlMatrix> m_;
};

}  // namespace

std::shared_ptr<const Linear> make_linear(std::shared_ptr<const GgmlMatrix> m) {
  return std::make_shared<const GgmlLinear>(std::move(m));
}

}  // namespace genesis::kernels::ggml_gemv
