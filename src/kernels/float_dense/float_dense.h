// float_dense: fp32 and bf16 weight matrices behind the Linear seam (kernels/linear.h). fp32 runs through OpenBLAS
// (sgemv / sgemm on the rows); bf16 (as a checkpoint stores it: half fp32's bytes, nothing lost) is widened to fp32 in
// registers, as 4x4 tiles of (rows x activation rows) on AVX-512, an AVX2 or portable dot product elsewhere, and
// through widened blocks + sgemm from kGemmRows rows of x. Compiled per function for its ISA and chosen at run time
// with cpu::mayiuse(), so one binary runs everywhere. Results are fp32 with fp32 accumulation.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/linear.h"

namespace genesis::kernels::float_dense {

// w: row-major [rows, cols]. Throws genesis::Error when w.size() != rows * cols.
std::shared_ptr<const Linear> make_f32(int64_t rows, int64_t cols, std::vector<float> w);
std::shared_ptr<const Linear> make_bf16(int64_t rows, int64_t cols, std::vector<uint16_t> w);

}  // namespace genesis::kernels::float_dense
