// ggml's storage formats (as GGUF files hold them) as data: block layouts with their sizes, and the scalar reference
// dequantization of each, bit-exact with ggml's dequantize_row_* and the `gguf` Python package (tested against a
// golden file it made). Quantization to these formats and their dot products are not here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace genesis::quant {

// ggml_type ids as stored in GGUF tensor infos (append-only upstream).
enum class GgmlType : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9,
  q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, q8_k = 15, bf16 = 30,
};

struct GgmlTypeInfo {
  const char* name;
  int block;        // elements per block
  int block_bytes;  // bytes per block
  bool dequantize;  // Genesis has a reference dequantizer for it
};

// Layout of a ggml type id (any id, known or not): nullopt for an id Genesis does not know.
std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type);
std::string ggml_type_name(uint32_t type);

// Bytes of `n` elements of `type` (n a multiple of the block); nullopt on overflow or an unknown type.
std::optional<uint64_t> ggml_row_bytes(uint32_t type, uint64_t n);

// Dequantizes n elements (a multiple of the block) from `src` into fp32. Throws genesis::Error for a type without a
// reference dequantizer.
void ggml_dequantize(uint32_t type, const void* src, float* dst, int64_t n);

// IEEE half -> float (exact).
float half_to_float(uint16_t h);

}  // namespace genesis::quant
