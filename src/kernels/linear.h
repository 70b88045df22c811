// The one seam for a linear layer: y = W x for a [rows, cols] weight matrix, whatever holds it. Every kernel family
// that serves model matrices implements Linear in its own folder (float_dense: fp32 and bf16; q8_gemv: int8 blocks;
// ggml_gemv: GGUF blocks as stored; nf4_gemv: NF4 on the JIT kernels); the runtime's policy (runtime/model/
// linear_policy) picks one per matrix at load, and the step only calls prepare() and run_rows(). A new format then
// touches its family folder and the policy, not the step.
//
// A product is two calls: prepare() converts the activations x [n][cols] once into the family's form (int8 blocks,
// the JIT kernel's layout, or just a pointer to fp32 rows), then run_rows() computes any range of output rows; threads
// call run_rows() concurrently on disjoint ranges of one prepared x. Matrices with the same activation_kind() and cols
// accept each other's prepared activations (q, k and v share one conversion of x).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace genesis::kernels {

// x as one family wants it; made by Linear::new_activations(), filled by prepare(), reused across calls.
struct LinearActivations {
  virtual ~LinearActivations() = default;
  int64_t n = 0;     // rows of x
  int64_t cols = 0;  // columns of x
};

enum class Placement { cpu, gpu };

class Linear {
 public:
  Linear(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {}
  virtual ~Linear() = default;
  Linear(const Linear&) = delete;
  Linear& operator=(const Linear&) = delete;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  // Bytes one pass over the weights reads (the roofline of a decode step).
  virtual size_t bytes() const = 0;
  // Short format name for reports and grouping: "f32", "bf16", "int8 blocks", "NF4", "Q4_K", ...
  virtual std::string format() const = 0;
  // Format and kernel, e.g. "int8 blocks (q8_gemv avx512vnni)".
  virtual std::string describe() const = 0;
  virtual Placement placement() const { return Placement::cpu; }

  // Activations: equal kinds (and cols) can share one prepare(). The container comes from new_activations().
  virtual std::string_view activation_kind() const = 0;
  virtual std::unique_ptr<LinearActivations> new_activations() const = 0;
  // x: [n][cols] fp32, row stride cols. x must stay alive until the last run_rows() on these activations (some
  // families keep a pointer to it). Throws genesis::Error for n < 1 or activations of another kind.
  virtual void prepare(const float* x, int64_t n, LinearActivations& a) const = 0;
  // prepare() in two parts, so that a region's tasks can convert x's rows in parallel (a few-row product's prepare()
  // on the caller was serial work before its region): prepare_shape() does what must come first, on one thread, and
  // returns true when prepare_rows() must then fill every row, ranges [i0, i1) on any threads (disjoint ranges
  // concurrently), all before the first run_rows(); false when it ran prepare() whole (the default, for a family or
  // a case without a split).
  virtual bool prepare_shape(const float* x, int64_t n, LinearActivations& a) const {
    prepare(x, n, a);
    return false;
  }
  virtual void prepare_rows(const float* /*x*/, int64_t /*i0*/, int64_t /*i1*/, LinearActivations& /*a*/) const {}
  // y[t * rows() + r] = sum_k W[r, k] x[t, k] for t < a.n and r in [r0, r1); r0 a multiple of row_granule().
  virtual void run_rows(const LinearActivations& a, float* y, int64_t r0, int64_t r1) const = 0;
  // Row ranges handed to run_rows() start at multiples of this (the packing's row groups).
  virtual int64_t row_granule() const { return 16; }
  // Rows of x from which the product runs on AMX tiles (kernels/amx), widening its weights once per call; 0: never.
  // The runtime makes its steps and expert units longer where this is not 0.
  virtual int64_t tile_rows() const { return 0; }
  // Row r of W as the family holds it, widened to fp32 (embedding lookup). Throws genesis::Error where the family
  // has no row access.
  virtual void row_f32(int64_t r, float* out) const = 0;
  // Row r rounded to bf16 (round to nearest even: the same bits as row_f32() rounded), where the family has a path
  // that skips the fp32 row (the AMX tiles' widening); false where not (the caller takes row_f32()).
  virtual bool row_bf16(int64_t /*r*/, uint16_t* /*out*/) const { return false; }

  // The GGUF block type the family holds W in (quant::GgmlType id; 0: none, W is not a GGUF block matrix), and row r
  // as the file stores it (stored_row_bytes() bytes: the blocks, without a family's repacking or padding), for a
  // device that reads the file's blocks itself (the hybrid mode's GPU). stored_row throws where stored_type() is 0.
  virtual uint32_t stored_type() const { return 0; }
  virtual size_t stored_row_bytes() const { return 0; }
  virtual void stored_row(int64_t r, uint8_t* out) const;

 private:
  int64_t rows_, cols_;
};

[[noreturn]] void throw_activation_mismatch(std::string_view family);

// fp32 activations kept by pointer (families that read x as it is: fp32, bf16, ggml blocks; and every family's
// many-row path, which widens weights and runs a GEMM).
struct FloatActivations : LinearActivations {
  const float* x = nullptr;
};
void prepare_float(const float* x, int64_t n, int64_t cols, LinearActivations& a, std::string_view family);

// Rows [r0, r1) for many rows of x (prefill): blocks of W's rows widened to fp32 once through row_f32() (exact), then
// one OpenBLAS sgemm over all n rows of x, on the calling thread. y[t * w.rows() + r].
void widened_gemm_rows(const Linear& w, const float* x, int64_t n, float* y, int64_t r0, int64_t r1);
// Rows of x from which widened_gemm_rows beats a family's own few-row kernel.
inline constexpr int64_t kGemmRows = 16;

// Two matrices over the same x, stacked: rows [0, top.rows()) are top's, the rest bottom's (an expert's gate and up
// when the file stores them in two formats). Throws genesis::Error when their cols differ.
std::shared_ptr<const Linear> make_stacked(std::shared_ptr<const Linear> top, std::shared_ptr<const Linear> bottom);

// The activations a family's prepare() received, checked: throws genesis::Error naming both kinds on a mismatch.
template <class A>
const A& activations_as(const LinearActivations& a, std::string_view family) {
  const A* p = dynamic_cast<const A*>(&a);
  if (!p) throw_activation_mismatch(family);
  return *p;
}
template <class A>
A& activations_as(LinearActivations& a, std::string_view family) {
  A* p = dynamic_cast<A*>(&a);
  if (!p) throw_activation_mismatch(family);
  return *p;
}

}  // namespace genesis::kernels
