// What Genesis' kernels are measured against, in the same run: the naive approach (dequantize the whole matrix to
// fp32, then OpenBLAS sgemv/sgemm) and a straightforward compiled C++ fused loop over the bitsandbytes layout.
#pragma once

#include <cstdint>
#include <vector>

#include "quant/nf4.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::kernels::nf4_gemv {

// y[t][m] for tokens t; `scratch` receives the dequantized matrix (resized to M*K).
void naive_dequant_sgemv(const quant::Nf4Matrix& w, const float* x, int tokens, float* y, std::vector<float>& scratch,
                         cpu::ThreadPool* pool);

// The straightforward fused loop: per row, per block, per byte: two code lookups, two multiply-adds.
void compiled_fused_loop(const quant::Nf4Matrix& w, const float* x, int tokens, float* y, cpu::ThreadPool* pool);

}  // namespace genesis::kernels::nf4_gemv
