// kq_gemv behind the Linear seam: the matrix in the kernel layout (see README.md), x quantized to int8 once per
// product, up to kMaxRows (256) rows of x (kernel passes of at most 16 rows); above, rows widened to fp32 (ggml's
// dequantization, exact) and one sgemm. Measured on 768x2048 Q4_K, 1 thread: 64 rows 0.76 ms on the kernels, 65
// rows 2.5 ms widened, 128 rows 2.4 ms widened (the widening dominates); Q6_K 2048x768: 0.88 / 3.5 / 5.1 ms.
// Where the CPU has AMX, products of tile_rows() rows or more run on bf16 tiles instead (kernels/amx: x packed
// once in prepare()); the legacy formats (Q8_0, Q4_0, Q4_1) run from tiles::min_rows() rows on AMX int8 tiles
// (tiles.h: the same int8 semantics as the kernels, x packed as B tiles in prepare()).
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "kernels/amx/amx_gemm.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/kq_gemv/tiles.h"
#include "kernels/linear.h"

namespace genesis::kernels::kq_gemv {
namespace {

constexpr std::string_view kName = "kq_gemv";

std::string env_text(const char* name) {
  const char* e = std::getenv(name);
  return e ? e : "";
}

struct KqActivations : LinearActivations {
  Activations q;             // n <= kMaxRows: int8 activations for the kernels
  const float* x = nullptr;  // n > kMaxRows: fp32 rows for the widened GEMM
  bool tiles = false;        // n >= tile_rows() where AMX exists: the product runs on AMX tiles
  amx::PackedRows packed;    // then x as the tiles' B operand
  bool int8_tiles = false;   // a legacy format from tiles::min_rows() rows (below tile_rows()): AMX int8 tiles
  tiles::Packed packed8;     // then q as their B operand
};

class KqLinear final : public Linear {
 public:
  KqLinear(std::shared_ptr<const Matrix> m, const Genome& genome)
      : Linear(m->rows, m->cols),
        m_(std::move(m)),
        kind_(std::string("kq_gemv ") + (m_->format == Format::q5_k ? "Q4_K" : format_name(m_->format))),
        genome_(genome),
        genome_rows_(genome) {
    genome_.validate();
    if (genome_.fault != Fault::none) fail("kq_gemv: make_linear with a genome that carries a planted test fault");
    genome_rows_.order.clear();  // an order fits the body of one activation row, not of a pass of several
    // GENESIS_KQ_ROWS_GENOME="pfm=8192 pfk=t0 ...": the named genes for passes of several rows, in every product (an
    // A/B switch for whole-model runs; the factory tunes the one-row product).
    // GENESIS_KQ_GENOME: the same for one-row passes (in place of the knowledge base's genome or the baseline).
    static const std::string rows_override = env_text("GENESIS_KQ_ROWS_GENOME");
    static const std::string one_override = env_text("GENESIS_KQ_GENOME");
    if (!rows_override.empty()) genome_rows_ = Genome::parse(rows_override);
    if (!one_override.empty()) genome_ = Genome::parse(one_override);
  }
  size_t bytes() const override { return m_->bytes(); }
  std::string format() const override { return format_name(m_->format); }
  uint32_t stored_type() const override { return ggml_type(m_->format); }
  size_t stored_row_bytes() const override { return kq_gemv::stored_row_bytes(*m_); }
  void stored_row(int64_t r, uint8_t* out) const override { kq_gemv::stored_row(*m_, r, out); }
  std::string describe() const override {
    return fmt::format("{} in the kq_gemv layout (kq_gemv {}, int8 activations{}{}{})", format(), path_name(path()),
                       genome_ == Genome::baseline() ? "" : ", genome " + genome_.serialize(),
                       int8_tiles() ? fmt::format("; AMX int8 tiles from {} rows", tiles::min_rows()) : "",
                       amx::available() ? fmt::format("; AMX bf16 tiles from {} rows", tile_rows()) : "");
  }
  std::string_view activation_kind() const override { return kind_; }
  std::unique_ptr<LinearActivations> new_activations() const override { return std::make_unique<KqActivations>(); }
  void prepare(const float* x, int64_t n, LinearActivations& a) const override {
    KqActivations& k = setup(x, n, a);
    if (k.tiles) amx::pack_rows(x, n, cols(), k.packed);
    else if (n <= kMaxRows) quantize_activations(m_->format, x, int(n), cols(), k.q, !k.int8_tiles);
    if (k.int8_tiles) tiles::pack(k.q, k.packed8);
  }
  // Several rows for the kernels split by row; the tiles' packing and one row stay whole.
  bool prepare_shape(const float* x, int64_t n, LinearActivations& a) const override {
    KqActivations& k = setup(x, n, a);
    if (n < 2 || k.tiles || k.int8_tiles || n > kMaxRows) {
      prepare(x, n, a);
      return false;
    }
    shape_activations(m_->format, int(n), cols(), k.q);
    return true;
  }
  void prepare_rows(const float* x, int64_t i0, int64_t i1, LinearActivations& a) const override {
    quantize_activation_rows(x, int(i0), int(i1), activations_as<KqActivations>(a, kName).q);
  }
  void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const override {
    const auto& k = activations_as<KqActivations>(a, kName);
    if (k.cols != cols()) fail("kq_gemv: activations of {} columns for a matrix of {}", k.cols, cols());
    if (k.tiles) {
      amx::widened_rows(*this, k.packed, y, r0, r1);
      return;
    }
    if (k.int8_tiles) {
      tiles::run_rows(*m_, k.packed8, y, rows(), r0, r1);
      return;
    }
    if (k.n > kMaxRows) {
      widened_gemm_rows(*this, k.x, k.n, y, r0, r1);
      return;
    }
    kq_gemv::run_rows(*m_, k.q, y, rows(), r0, r1, path(), k.q.n == 1 ? genome_ : genome_rows_);
  }
  int64_t row_granule() const override { return 1; }
  // Q4_K's straight rows pay from 48 rows; Q6_K's (2x faster tile products) still from 64 (amx_gemm.h). The legacy
  // formats on int8 tiles keep them up to tiles::kMaxRows (128): 3-4x faster than the bf16 tiles at 64-128 rows;
  // even at 256, where x's quantizing and packing on the calling thread cost more than the bf16 packing (tiles.h).
  int64_t tile_rows() const override {
    if (!amx::available()) return 0;
    const int64_t bf16 = amx::min_rows(m_->format == Format::q4_k && has_bf16_rows(m_->format));
    return int8_tiles() ? std::max<int64_t>(tiles::kMaxRows + 1, bf16) : bf16;
  }
  void row_f32(int64_t r, float* out) const override {
    if (r < 0 || r >= rows()) fail("kq_gemv: row {} of {}", r, rows());
    dequantize_row(*m_, r, out);
  }
  bool row_bf16(int64_t r, uint16_t* out) const override { return dequantize_row_bf16(*m_, r, out); }

 private:
  bool int8_tiles() const { return tiles::serves(m_->format) && tiles::available(); }
  KqActivations& setup(const float* x, int64_t n, LinearActivations& a) const {
    auto& k = activations_as<KqActivations>(a, kName);
    if (n < 1) fail("kq_gemv: {} rows of activations", n);
    k.n = n;
    k.cols = cols();
    k.x = x;
    k.tiles = amx::available() && n >= tile_rows();
    k.int8_tiles = !k.tiles && n <= kMaxRows && int8_tiles() && n >= tiles::min_rows();
    return k;
  }
  static Path path() {
    static const Path p = best_path();
    return p;
  }
  std::shared_ptr<const Matrix> m_;
  std::string kind_;
  Genome genome_;       // one activation row (the factory tunes that product)
  Genome genome_rows_;  // several rows: the same genes without the instruction order
};

}  // namespace

std::shared_ptr<const Linear> make_linear(std::shared_ptr<const Matrix> m, const Genome& genome) {
  if (!m) fail("kq_gemv: make_linear without a matrix");
  return std::make_shared<const KqLinear>(std::move(m), genome);
}

}  // namespace genesis::kernels::kq_gemv
