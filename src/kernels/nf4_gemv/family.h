// Family-internal helpers shared by the builder, the driver and the tests (not part of the public interface).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/nf4_gemv/genome.h"

namespace genesis::kernels::nf4_gemv {

int int8_code(int code);          // round(127 * code), in -127..127
double max_int8_code_error();     // max |code - int8_code/127|
int k_per_step(Path p);           // k values per step of the packed layout: 2, 4 or 8

// The constant tables generated code reads (code tables, nibble mask) and their offsets.
const void* kernel_constants();
size_t consts_table_offset(Path p);
size_t consts_mask_offset();
size_t consts_ones16_offset();  // 16 int16 ones

}  // namespace genesis::kernels::nf4_gemv
