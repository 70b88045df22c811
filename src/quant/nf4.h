// NF4 (4-bit NormalFloat) exactly as bitsandbytes stores it: the 16 codes, blockwise absmax scaling, two codes per
// byte with the HIGH nibble first, blocks running over the row-major [out, in] matrix flattened, optional double
// quantization of the absmax. Reference (scalar) quantize / dequantize only; kernels keep their own packed layouts.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace genesis::quant {

// bitsandbytes' NF4 code book (float32 values, index = the 4-bit code).
inline constexpr std::array<float, 16> kNf4Codes = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f};

inline constexpr int kNf4DefaultBlocksize = 64;
inline constexpr int kNf4MaxBlocksize = 4096;
inline constexpr int kNf4NestedBlocksize = 256;  // bitsandbytes' blocksize for the double-quantized absmax

// Throws genesis::Error unless blocksize is a multiple of 32 in [32, 4096].
void check_nf4_blocksize(int blocksize);

// Nearest code to v in [-1, 1] (ties go to the lower code, as bitsandbytes' midpoint tree does).
uint8_t nf4_nearest_code(float v);

// The code at element i of a bitsandbytes-packed buffer (high nibble = even element).
inline uint8_t nf4_code_at(const uint8_t* packed, size_t i) {
  uint8_t b = packed[i >> 1];
  return (i & 1) ? (b & 0x0F) : (b >> 4);
}

// A weight matrix [rows, cols] in bitsandbytes NF4 layout with plain (fp32) absmax, one per block of `blocksize`
// consecutive elements of the flattened matrix.
struct Nf4Matrix {
  int64_t rows = 0;  // out features
  int64_t cols = 0;  // in features
  int blocksize = kNf4DefaultBlocksize;
  std::vector<uint8_t> packed;  // ceil(rows*cols/2) bytes, high nibble first
  std::vector<float> absmax;    // ceil(rows*cols/blocksize)

  int64_t numel() const { return rows * cols; }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  float at(int64_t r, int64_t c) const;  // dequantized element
};

// Quantize a row-major [rows, cols] fp32 matrix (bitsandbytes quantize_4bit semantics, quant_type nf4).
Nf4Matrix quantize_nf4(std::span<const float> w, int64_t rows, int64_t cols, int blocksize = kNf4DefaultBlocksize);

// Dequantize to row-major fp32.
std::vector<float> dequantize_nf4(const Nf4Matrix& m);

// Double-quantized absmax as stored by bitsandbytes (compress_statistics=True).
struct Nf4DoubleQuant {
  std::vector<uint8_t> q;               // one byte per NF4 block
  std::vector<float> nested_absmax;     // one per nested block
  std::array<float, 256> nested_quant_map{};
  int nested_blocksize = kNf4NestedBlocksize;
  float offset = 0.0f;
};

// absmax[i] = nested_quant_map[q[i]] * nested_absmax[i / nested_blocksize] + offset
std::vector<float> decode_double_quant(const Nf4DoubleQuant& dq);

// bitsandbytes' create_dynamic_map(signed=True): the 256-entry map used for the nested absmax.
std::array<float, 256> dynamic_map_signed();

// Encode absmax the way bitsandbytes does (offset = mean, blockwise dynamic 8-bit over absmax - offset).
Nf4DoubleQuant encode_double_quant(std::span<const float> absmax, int nested_blocksize = kNf4NestedBlocksize);

}  // namespace genesis::quant
