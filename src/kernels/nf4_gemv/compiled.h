// The compiled (not generated) nf4_gemv paths: portable scalar C++ and AVX2+FMA intrinsics, for CPUs without
// AVX-512. Both read the fp32 packed layout (2 k per 16-byte step) and fp32 activations [block][token][bs].
#pragma once

#include <cstdint>

namespace genesis::kernels::nf4_gemv {

// One 16-row group: out[t * 16 + r] for t < tokens.
void compiled_group_scalar(const uint8_t* group, int64_t n_blocks, int bs, const float* x, int tokens, float* out);
void compiled_group_avx2(const uint8_t* group, int64_t n_blocks, int bs, const float* x, int tokens, float* out);

}  // namespace genesis::kernels::nf4_gemv
