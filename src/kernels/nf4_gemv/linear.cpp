// nf4_gemv behind the Linear seam: packed NF4 weights run by the JIT kernels. The activation rows go in chunks, each
// served by the largest kernel of the set that fits what is left (a set for 1..16 rows shares one pass over the
// weights per chunk of up to 16 rows); each chunk's activations are converted once by prepare().
#include <fmt/format.h>

#include "common/error.h"

#include "kernels/nf4_gemv/nf4_gemv.h"

#include <cblas.h>

namespace genesis::kernels::nf4_gemv {

namespace {

constexpr std::string_view kName = "nf4_gemv";

struct Nf4LinearActivations : LinearActivations {
  std::vector<PreparedActivations> chunks;
  std::vector<int> chunk_rows;
};

class Nf4Linear final : public Linear {
 public:
  Nf4Linear(std::shared_ptr<const PackedWeights> w, std::shared_ptr<const KernelSet> k)
      : Linear(w->M, w->K), w_(std::move(w)), k_(std::move(k)) {
    if (!k_ || !(*k_)[1]) fail("nf4_gemv: a Linear [{}, {}] without a one-row kernel", w_->M, w_->K);
  }
  size_t bytes() const override { return w_->bytes(); }
  std::string format() const override { return "NF4"; }
  std::string describe() const override { return fmt::format("NF4 ({})", (*k_)[1]->id()); }
  // The prepared layout depends on the path and blocksize (and on the chunking, which follows the kernel set).
  std::string_view activation_kind() const override { return kind_; }
  std::unique_ptr<LinearActivations> new_activations() const override {
    return std::make_unique<Nf4LinearActivations>();
  }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    if (n < 1) fail("nf4_gemv: prepare() with {} rows of x", n);
    auto& p = activations_as<Nf4LinearActivations>(a, kName);
    p.n = n, p.cols = cols();
    p.chunk_rows.clear();
    for (int64_t t = 0; t < n;) {
      int r = int(std::min<int64_t>(n - t, kMaxTokens));
      while (!(*k_)[size_t(r)]) --r;
      p.chunk_rows.push_back(r);
      t += r;
    }
    if (p.chunks.size() < p.chunk_rows.size()) p.chunks.resize(p.chunk_rows.size());
    int64_t t = 0;
    for (size_t c = 0; c < p.chunk_rows.size(); ++c) {
      (*k_)[size_t(p.chunk_rows[c])]->prepare(x + t * cols(), cols(), p.chunks[c]);
      t += p.chunk_rows[c];
    }
  }
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& p = activations_as<Nf4LinearActivations>(a, kName);
    const int64_t g0 = r0 / kGroupRows, g1 = (r1 + kGroupRows - 1) / kGroupRows;
    int64_t t = 0;
    for (size_t c = 0; c < p.chunk_rows.size(); ++c) {
      (*k_)[size_t(p.chunk_rows[c])]->run_prepared(*w_, p.chunks[c], y + t * rows(), g0, g1);
      t += p.chunk_rows[c];
    }
  }
  int64_t row_granule() const override { return kGroupRows; }
  void row_f32(int64_t r, float* out) const override {
    fail("nf4_gemv: no row lookup on a packed NF4 matrix [{}, {}] (embeddings are never NF4)", rows(), cols());
  }

 private:
  std::shared_ptr<const PackedWeights> w_;
  std::shared_ptr<const KernelSet> k_;
  std::string kind_ = activation_kind_of();
  // Matrices share prepared activations when their layout (path, blocksize) and chunking (the set's row counts) agree.
  std::string activation_kind_of() const {
    std::string s = fmt::format("nf4/{}/{}/", path_name(w_->path), w_->blocksize);
    for (int t = 1; t <= kMaxTokens; ++t) s += (*k_)[size_t(t)] ? '1' : '0';
    return s;
  }
};

// The reference product on the bitsandbytes layout: each row dequantized into a buffer, then an fp32 dot product
// (OpenBLAS sdot) per row of x. Correct, not fast: the kernels' ground truth inside a model (--experts nf4-reference).
class Nf4ReferenceLinear final : public Linear {
 public:
  explicit Nf4ReferenceLinear(quant::Nf4Matrix m) : Linear(m.rows, m.cols), m_(std::move(m)) {}
  size_t bytes() const override { return m_.packed.size() + m_.absmax.size() * sizeof(float); }
  std::string format() const override { return "NF4"; }
  std::string describe() const override {
    return fmt::format("NF4 (blocksize {}), reference: dequantized rows + fp32 dot", m_.blocksize);
  }
  std::string_view activation_kind() const override { return "f32"; }
  std::unique_ptr<LinearActivations> new_activations() const override { return std::make_unique<FloatActivations>(); }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    prepare_float(x, n, cols(), a, "nf4 reference");
  }
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& f = activations_as<FloatActivations>(a, "nf4 reference");
    thread_local std::vector<float> row;
    row.resize(size_t(cols()));
    for (int64_t r = r0; r < r1; ++r) {
      row_f32(r, row.data());
      for (int64_t t = 0; t < f.n; ++t)
        y[t * rows() + r] = cblas_sdot(int(cols()), row.data(), 1, f.x + t * cols(), 1);
    }
  }
  int64_t row_granule() const override { return 1; }
  void row_f32(int64_t r, float* out) const override {
    const int64_t base = r * cols();
    for (int64_t c = 0; c < cols(); ++c) {
      const int64_t i = base + c;
      out[c] = quant::kNf4Codes[quant::nf4_code_at(m_.packed.data(), size_t(i))] * m_.absmax[size_t(i / m_.blocksize)];
    }
  }

 private:
  quant::Nf4Matrix m_;
};

}  // namespace

std::shared_ptr<const Linear> make_reference_linear(quant::Nf4Matrix m) {
  return std::make_shared<const Nf4ReferenceLinear>(std::move(m));
}

std::shared_ptr<const Linear> make_linear(std::shared_ptr<const PackedWeights> w, std::shared_ptr<const KernelSet> k) {
  return std::make_shared<const Nf4Linear>(std::move(w), std::move(k));
}

}  // namespace genesis::kernels::nf4_gemv
