// q8_gemv: products with an int8 matrix (blocks of 32 weights along a row, one fp32 scale each; Q8_0's layout with
// an fp32 scale) and int8 activations (32-element blocks, as ggml's Q8_0 quantizes them), as int8 dot products
// (AVX-512 VNNI vpdpbusd) with fp32 accumulation across blocks. The runtime holds a GGUF's 4-8 bit non-expert
// matrices this way (`--dense q8`): 1.125 bytes per weight where bf16 takes 2, and a second rounding of at most
// 1/254 of each block's largest weight, far below the file's own 4-6 bit step. Compiled C++ (intrinsics chosen at run
// time), outside the factory; the scalar path is exact integer arithmetic and serves every CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/linear.h"

namespace genesis::kernels::q8_gemv {

inline constexpr int64_t kBlock = 32;

// [rows, cols] int8, cols a multiple of kBlock: w[r * cols + k] = q + 128 (q in [-127, 127], stored unsigned for
// vpdpbusd), scale[r * blocks + b]; 16 padding scales at the end (the AVX-512 loop loads 16 at a time).
struct Q8Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> w;
  std::vector<float> scale;
  int64_t blocks() const { return cols / kBlock; }
  size_t bytes() const { return w.size() + size_t(rows * blocks()) * 4; }  // what one product reads
};

// Rounds each block to 127 levels of its largest magnitude (round to nearest, ties away from zero). Throws
// genesis::Error if cols is not a multiple of kBlock.
Q8Matrix quantize(const float* w, int64_t rows, int64_t cols);
// Row r's weights as the matrix holds them (q * scale).
void dequantize_row(const Q8Matrix& m, int64_t r, float* out);

// One row of activations quantized per block (x = q * sx), laid out for the kernels: q padded to whole 64-column
// chunks, per chunk 16 lanes of the blocks' scales and of -128 * (sum of the lane's 4 q) (vpdpbusd's unsigned
// weights carry +128).
struct Q8Activations {
  int64_t cols = 0;
  std::vector<int8_t> q;
  std::vector<float> sx;      // [chunks][16]
  std::vector<int32_t> negk;  // [chunks][16]
};
void quantize_activations(const float* x, int64_t cols, Q8Activations& out);

enum class Path { scalar, avx512vnni };
Path best_path();  // avx512vnni when the CPU (and GENESIS_MAX_ISA) allows it
const char* path_name(Path p);

// y[r] = sum_k W[r, k] x[k] for rows [r0, r1), with x as quantize_activations() made it.
void gemv_rows(const Q8Matrix& m, const Q8Activations& x, float* y, int64_t r0, int64_t r1, Path path);

// fp64 ground truth of the same semantics: the matrix's weights times the activations' quantized values.
double reference_row(const Q8Matrix& m, const Q8Activations& x, int64_t r);
// Bound on |gemv - W x| for row r with exact fp32 x (the activations' rounding, half a step per element, plus fp32
// accumulation): sum_b scale_b sum_k |q_k| sx_b / 2 + 1e-6 sum |w x|.
double error_bound(const Q8Matrix& m, const float* x, int64_t r);

// The matrix behind the Linear seam (kernels/linear.h).
std::shared_ptr<const Linear> make_linear(std::shared_ptr<const Q8Matrix> m);

}  // namespace genesis::kernels::q8_gemv
