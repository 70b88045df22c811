// The nf4_gemv family's public interface: y[t][m] = sum_k W[m][k] * x[t][k] for t < tokens (1..16), with W in NF4,
// dequantized inside registers and never materialized. Tokens share one pass over the weights.
// Callers: pack() the weights once per path, get a Kernel for (problem, genome), run() it over a thread pool.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/linear.h"
#include "kernels/nf4_gemv/genome.h"
#include "quant/nf4.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::kernels::nf4_gemv {

inline constexpr int kMaxTokens = 16;
inline constexpr int kGroupRows = 16;  // rows interleaved in the packed layout (one zmm lane per row)

struct Problem {
  int64_t M = 0;  // output rows (out features)
  int64_t K = 0;  // inner dimension (in features); a multiple of blocksize
  int tokens = 1;
  int blocksize = quant::kNf4DefaultBlocksize;

  void validate() const;  // throws genesis::Error naming what was asked and what is possible
  std::string shape() const;  // "MxK"
};

// 64-byte aligned, zero-initialized byte buffer.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  AlignedBuffer(AlignedBuffer&&) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&&) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();
  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  AlignedBuffer clone() const;

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

// A weight matrix in one path's native layout. Rows are padded to groups of 16 (one vector lane per row). Each
// group is one sequential stream of records, one per quantization block: the block's codes for the 16 rows
// (8 * blocksize bytes, interleaved per path, see pack.cpp) followed by the 16 rows' absmax (16 floats).
struct PackedWeights {
  Path path = Path::scalar;
  int64_t M = 0, K = 0;
  int blocksize = quant::kNf4DefaultBlocksize;
  AlignedBuffer data;

  int64_t groups() const { return (M + kGroupRows - 1) / kGroupRows; }
  int64_t blocks() const { return K / blocksize; }
  int64_t record_bytes() const { return 8 * int64_t(blocksize) + 64; }
  int64_t group_bytes() const { return blocks() * record_bytes(); }
  size_t bytes() const { return data.size(); }  // what one pass over the weights reads
  PackedWeights clone() const;
};

// Activations converted once per call into the path's format ([block][token][blocksize] elements, plus per
// (block, token) aux data for int8), so that matrices sharing an input (gate and up) convert it once.
struct PreparedActivations {
  Path path = Path::scalar;
  int tokens = 0;
  int64_t K = 0;
  int blocksize = 0;
  AlignedBuffer data;
  AlignedBuffer aux;
};

// Repack bitsandbytes layout into a path's layout (exact: no re-quantization), and back.
PackedWeights pack(const quant::Nf4Matrix& m, Path path);
quant::Nf4Matrix unpack(const PackedWeights& p);

class Kernel {
 public:
  virtual ~Kernel() = default;
  // x: [tokens][K] fp32 (row stride K), y: [tokens][M] fp32 (row stride M). pool == nullptr runs on the caller.
  virtual void run(const PackedWeights& w, const float* x, float* y, cpu::ThreadPool* pool) const = 0;
  // Run on a subset of 16-row groups only (used by the MoE runtime to split (expert, row block) tasks).
  virtual void run_groups(const PackedWeights& w, const float* x, float* y, int64_t group_begin,
                          int64_t group_end) const = 0;
  // The same with activations converted once by prepare() (y: [tokens][M], row stride M).
  virtual void prepare(const float* x, int64_t K, PreparedActivations& out) const = 0;
  virtual void run_prepared(const PackedWeights& w, const PreparedActivations& x, float* y, int64_t group_begin,
                            int64_t group_end) const = 0;
  virtual const std::string& id() const = 0;
  virtual const Genome& genome() const = 0;
};

// A kernel for (problem's tokens and blocksize, genome), from the process-wide code cache. Throws genesis::Error
// for an invalid genome, a path this CPU (or GENESIS_MAX_ISA) does not allow, or an unsupported problem.
// allow_faults: only the factory's sandboxed tests may build genomes that carry a planted Fault.
std::shared_ptr<const Kernel> get_kernel(const Problem& problem, const Genome& genome, bool allow_faults = false);

// Kernels for 1..kMaxTokens rows of x sharing one pass ([t] serves t rows; [0] unused; null where absent, [1] required).
using KernelSet = std::array<std::shared_ptr<const Kernel>, kMaxTokens + 1>;
// Packed weights behind the Linear seam (kernels/linear.h): x's rows go in chunks, each on the largest kernel of the
// set that fits.
std::shared_ptr<const Linear> make_linear(std::shared_ptr<const PackedWeights> w, std::shared_ptr<const KernelSet> k);
// The bitsandbytes layout behind the Linear seam, on the reference product (rows dequantized + fp32 dot).
std::shared_ptr<const Linear> make_reference_linear(quant::Nf4Matrix m);

// Paths this CPU can run (after GENESIS_MAX_ISA), fastest first; best_path() is the first.
std::vector<Path> available_paths();
Path best_path();
// Throws genesis::Error naming the path and the paths that are possible, if this CPU cannot run `p`.
void require_path(Path p);

// fp64 ground truth on the bitsandbytes layout: y[t*M + m].
void reference(const quant::Nf4Matrix& w, const float* x, int tokens, double* y);

// Documented error bound of a path for output (m, t), against reference(): see family.cpp.
double error_bound(Path p, const quant::Nf4Matrix& w, const float* x, int64_t m, int t);
std::string error_bound_text(Path p);

// For `genesis info`: every path with the ISA it needs, whether this CPU may use it, its error bound, and the path
// the runtime will use (best_path()).
struct PathInfo {
  Path path;
  std::string needs;
  bool usable;
  std::string bound;
};
std::vector<PathInfo> path_info();

// Bytes one call reads (packed weights + scales + activations) and flops, for the roofline.
double bytes_moved(const Problem& pr, Path p);
double flops(const Problem& pr);

}  // namespace genesis::kernels::nf4_gemv
