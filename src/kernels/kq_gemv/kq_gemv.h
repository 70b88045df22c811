// kq_gemv: y[t][r] = sum_k W[r][k] x[t][k] for t < n (1..16 activation rows sharing one pass over the weights), with
// W in a GGUF block format (Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1) and the activations quantized to int8 per block as
// ggml does (Q8_K: 256-element blocks with per-16 sums for the K-quants; 32-element blocks for the legacy formats).
// Products are exact integer dot products (vpdpbusd / vpmaddubsw + vpdpwssd) scaled per block in fp32; the kernels are
// generated through jit/'s IR. See README.md for the kernel layouts (Q6_K runs on the bytes as stored; the others are
// rearranged at load into records of the same size, except Q4_K / Q5_K whose 12-byte 6-bit scales become 16 bytes).
// Callers: make_matrix() once at load; per product quantize_activations() once, then run_rows() over row ranges
// (one call per thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/kq_gemv/genome.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::kernels::kq_gemv {

inline constexpr int kMaxTokens = 16;  // activation rows one generated kernel takes (one pass over the weights)
inline constexpr int kMaxRows = 256;   // activation rows one product takes (in passes of <= kMaxTokens)

enum class Format { q4_k, q5_k, q6_k, q8_0, q4_0, q4_1 };
inline constexpr Format kFormats[] = {Format::q4_k, Format::q5_k, Format::q6_k,
                                      Format::q8_0, Format::q4_0, Format::q4_1};

const char* format_name(Format f);                       // "Q4_K" ...
std::optional<Format> parse_format(const std::string& s);  // case-insensitive "q4_k" / "Q4_K"
std::optional<Format> format_of(uint32_t ggml_type);
uint32_t ggml_type(Format f);
bool is_k_quant(Format f);
std::string format_names();  // "Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1"

// avx2: AVX2 + FMA + F16C (JIT, ymm, vpmaddubsw + vpmaddwd); avx2vnni: the same with AVX-VNNI's {vex} vpdpbusd /
// vpdpwssd; avx512vnni: AVX512-F/BW/VNNI (JIT, zmm).
enum class Path { scalar, avx512vnni, avx2, avx2vnni };
const char* path_name(Path p);
std::optional<Path> parse_path(const std::string& s);
// Paths this CPU (after GENESIS_MAX_ISA) can run, fastest first; best_path() is the first.
std::vector<Path> available_paths();
Path best_path();
void require_path(Path p);  // genesis::Error naming the path and what is possible

// A weight matrix in the kernels' layout: rows contiguous, each row `units()` records of `record_bytes()` bytes
// (a unit is 256 columns for the K-quants, 128 for the legacy formats; a legacy row whose block count is not a
// multiple of 4 is padded with zero blocks).
struct Matrix {
  Format format = Format::q4_k;
  int64_t rows = 0, cols = 0;
  int64_t units = 0;        // per row
  int64_t record_bytes = 0;
  std::vector<uint8_t> data;  // rows * units * record_bytes, plus 64 bytes of slack for full-vector loads
  // Or the records in a caller's memory (make_matrix_in): `external`, kept alive by `keep`; data is then empty.
  const uint8_t* external = nullptr;
  std::shared_ptr<const void> keep;
  const uint8_t* records() const { return external ? external : data.data(); }
  int64_t row_bytes() const { return units * record_bytes; }
  size_t bytes() const { return size_t(rows * row_bytes()); }  // what one product reads of the weights
  std::string describe() const;
};

// The stored bytes of a [rows, cols] tensor of `ggml_type`, rows contiguous as GGUF holds them, into a Matrix.
// Throws genesis::Error for an unsupported type, cols not a multiple of the format's block, or a byte count that
// does not match the type and shape.
Matrix make_matrix(uint32_t ggml_type, int64_t rows, int64_t cols, const uint8_t* data, size_t nbytes);
// The same with the records written to dst (record_bytes_of() bytes, then 64 readable bytes of slack: the next
// matrix's records or padding), which `keep` keeps alive: a loader's arena of many matrices.
Matrix make_matrix_in(uint32_t ggml_type, int64_t rows, int64_t cols, const uint8_t* data, size_t nbytes, uint8_t* dst,
                      std::shared_ptr<const void> keep);
// The records' bytes of a [rows, cols] matrix of ggml_type (what make_matrix_in writes); throws as make_matrix does
// for a format or shape the family does not take.
size_t record_bytes_of(uint32_t ggml_type, int64_t rows, int64_t cols);

// The record layout as a permutation of the stored bits: for a unit (one K-quant super-block, four legacy blocks),
// stored bit i (byte i / 8, bit i % 8) is record bit source[i], inverted where invert[i] (every stored bit is kept).
// Derived from the repacking itself (so a device can undo it without knowing the layout); tested by recovering the
// stored bytes from records. A legacy row's last unit may hold fewer than four blocks: its first blocks are the stored ones.
struct RecordBits {
  int stored_bytes = 0, record_bytes = 0;  // per unit
  std::vector<int16_t> source;             // [stored_bytes * 8]
  std::vector<uint8_t> invert;             // [stored_bytes * 8]
};
RecordBits record_bits(Format f);

// Activations x[n][cols] (row stride cols, n <= kMaxRows) quantized for one matrix format: per unit and activation row a 320-byte
// record (int8 codes in the kernel's order, then the block sums and scales the format needs). Reusable across calls
// (buffers grow, never shrink) and across matrices of the same format and cols (gate and up share one).
struct Activations {
  Format format = Format::q4_k;
  int n = 0;
  int64_t cols = 0, units = 0;
  std::vector<uint8_t> data;  // [unit][n][kTokenRecord]
  // Legacy formats with 2+ rows: the same records regrouped for the AVX-512 kernels that take four units at a time
  // (README.md "Legacy formats, several rows"): [group of 4 units][n][kGroupRecord], units / 4 groups (0: none).
  int64_t groups = 0;
  std::vector<uint8_t> grouped;
};
inline constexpr int64_t kTokenRecord = 384;
inline constexpr int64_t kGroupRecord = 768;
// `grouped` false: no grouped copy (the caller runs the rows on the AMX int8 tiles, which read the plain records).
void quantize_activations(Format f, const float* x, int n, int64_t cols, Activations& out, bool grouped = true);
// quantize_activations() in two parts, so that threads can quantize rows apart: shape_activations() sizes `out` for
// n rows (on one thread, first), then quantize_activation_rows() fills rows [t0, t1) (x: all n rows, as above), on
// any thread, concurrently on disjoint rows. Non-finite values are a genesis::Error from either.
void shape_activations(Format f, int n, int64_t cols, Activations& out, bool grouped = true);
void quantize_activation_rows(const float* x, int t0, int t1, Activations& out);
// The quantized values q * scale of activation row t, in natural order (cols entries), exactly.
void dequantize_activations(const Activations& a, int t, double* out);

// y[t * ldy + r] for t < a.n and r in [r0, r1). Thread-safe (one call per thread on disjoint rows). The genome
// (genome.h) shapes the JIT path's code and blocking; the scalar path ignores it. A genome carrying a planted Fault
// is a genesis::Error unless allow_faults (the factory's sandboxed tests only).
void run_rows(const Matrix& w, const Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1, Path path,
              const Genome& genome = Genome::baseline(), bool allow_faults = false);
// The whole product on the best path, rows split over the pool (may be null): quantizes x[n][cols] once.
void gemv(const Matrix& w, const float* x, int n, float* y, int64_t ldy, cpu::ThreadPool* pool,
          Activations& scratch);

// fp64 ground truth of the same semantics: the stored weights as quant::ggml_dequantize returns them, times the
// quantized activations. y[t * rows + r].
void reference(uint32_t ggml_type, const uint8_t* stored, int64_t rows, int64_t cols, const Activations& a,
               double* y);
// Bound on |run_rows - reference| for (row r, activation row t), every path: see README.md.
double error_bound(uint32_t ggml_type, const uint8_t* stored, int64_t cols, int64_t r, const Activations& a, int t);
std::string error_bound_text();

// Row r's bytes as the GGUF file stores them (its blocks; a legacy row's padding left out): stored_row_bytes(w)
// bytes recovered from the records through record_bits().
size_t stored_row_bytes(const Matrix& w);
void stored_row(const Matrix& w, int64_t r, uint8_t* out);

// Row r of the matrix widened to fp32, bit-exact with quant::ggml_dequantize of the stored row (same fp32 operations).
void dequantize_row(const Matrix& w, int64_t r, float* out);
// Row r rounded to bf16 straight from the records (the same bits as dequantize_row() rounded to nearest even), for
// the AMX tiles' widening: Q4_K and Q6_K on CPUs with AVX-512 BW, VL and BF16; false for the other formats and CPUs.
bool dequantize_row_bf16(const Matrix& w, int64_t r, uint16_t* out);
bool has_bf16_rows(Format f);  // dequantize_row_bf16 serves this format on this CPU

// Bytes one product reads (weights + activation records) and its flops, for the roofline.
double bytes_moved(const Matrix& w, int n);
double flops(const Matrix& w, int n);

}  // namespace genesis::kernels::kq_gemv

namespace genesis::kernels {
class Linear;
}
namespace genesis::kernels::kq_gemv {
// The family behind the Linear seam (linear.cpp): int8 activations and the JIT kernel (best path) for 1..kMaxRows
// rows of x; above, blocks of rows widened by dequantize_row() and one sgemm. Activation kind "kq_gemv <fmt>"
// (Q4_K and Q5_K share one). `genome`: the schedule of one activation row's product (the runtime passes the knowledge
// base's tuned genome, runtime/model/linear_policy.h); several rows run its genes without its instruction order.
std::shared_ptr<const Linear> make_linear(std::shared_ptr<const Matrix> m, const Genome& genome = Genome::baseline());
}  // namespace genesis::kernels::kq_gemv
