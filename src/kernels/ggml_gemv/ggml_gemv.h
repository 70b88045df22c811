// ggml_gemv: matrix-vector products straight on GGUF's block formats, for `--keep-quant`: the matrix stays as the
// file stores it, each block is dequantized exactly as ggml's dequantize_row_* does and multiplied with fp32
// activations. So the result is the dequantized model's, at the file's bytes per weight (llama.cpp instead quantizes
// the activations to 8 bits). Q8_0, Q4_0 and Q4_1 are dequantized in registers; Q5_0, Q5_1, Q4_K, Q5_K and Q6_K one
// block at a time through quant::ggml_dequantize into a buffer (correct, not fast: no register-level path yet).
// Paths: AVX-512 (compiled with intrinsics, chosen at run time) and scalar C++ (the reference, fp64 accumulation).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/linear.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::kernels::ggml_gemv {

// A [rows, cols] matrix in one ggml block format, rows contiguous (row_bytes each), as GGUF stores it.
struct GgmlMatrix {
  uint32_t type = 0;  // quant::GgmlType id
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
  std::vector<uint8_t> bytes;  // rows * row_bytes
};

// Whether the family multiplies this ggml type (a quantized format with a reference dequantizer).
bool supported(uint32_t type);
std::string supported_names();

// Builds a GgmlMatrix from rows of blocks; throws genesis::Error for an unsupported type, a column count that is not
// a multiple of the block, or a byte count that does not match.
GgmlMatrix make_matrix(uint32_t type, int64_t rows, int64_t cols, const uint8_t* data, size_t nbytes);

enum class Path { scalar, avx512 };
Path best_path();  // AVX-512 when the CPU (and GENESIS_MAX_ISA) allows it
const char* path_name(Path p);

// y[t * rows + r] = sum_k W[r, k] * x[t * cols + k] for t < tokens, rows [r0, r1).
void gemv_rows(const GgmlMatrix& w, const float* x, float* y, int64_t tokens, int64_t r0, int64_t r1, Path path);
// All rows, split over the pool (may be null), on the best path.
void gemv(const GgmlMatrix& w, const float* x, float* y, int64_t tokens, cpu::ThreadPool* pool);

// The matrix behind the Linear seam (kernels/linear.h): few rows on gemv_rows, many through widened blocks + sgemm.
std::shared_ptr<const Linear> make_linear(std::shared_ptr<const GgmlMatrix> m);

}  // namespace genesis::kernels::ggml_gemv
