// Internal to kq_gemv: the kernel record layouts (see README.md), shared by the repacking, the activation
// quantizer, the JIT builder and the scalar path.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/kq_gemv/kq_gemv.h"

namespace genesis::kernels::kq_gemv::layout {

inline constexpr int kKUnit = 256;      // columns per unit, K-quants (one super-block)
inline constexpr int kLegacyUnit = 128; // columns per unit, legacy formats (four 32-blocks)
inline constexpr int kBlock32 = 32;

int unit_cols(Format f);
int record_bytes(Format f);   // kernel record bytes per unit
int stored_block_cols(Format f);   // 256 or 32
int stored_block_bytes(Format f);

// Record offsets.
// Q4_K: d, dmin (fp16) @0, sc[8] @4, m[8] @12, codes[128] @20 rearranged so that dword lane l of each of the four
// code vectors (low / high nibbles of codes 0..63, then of 64..127) holds sub-block l % 8 (element_of).
// Q5_K: d, dmin, sc[8], m[8] as Q4_K, qh[32] @20, qs[128] @52 packed as ggml packs them, position q5k_position(j)
// holding element element_of(q5_k, j) (Q4_K's lane order).
// Q6_K: as stored: ql[128] @0, qh[64] @128, sc[16] @192, d @208.
// Legacy: d[4] (fp16) @0, Q4_1's m[4] @8, codes after (64 bytes for 4-bit, 128 for Q8_0 stored as q ^ 0x80).
int codes_offset(Format f);

// Activation token record (kTokenRecord bytes per unit and activation row).
inline constexpr int kXBs16 = 256;  // Q6_K: int16[16] per-16 sums (natural order)
inline constexpr int kXSums32 = 256;  // Q4_K / Q5_K: float[8] per-32 sums, then zeros up to kXScale
inline constexpr int kXScale = 304; // K: float scale
inline constexpr int kXSeed6 = 320;  // Q6_K: int32[16], lane l = -32 * (per-16 sum l): the AVX-512 kernels' S seed
inline constexpr int kXCorr = 128;  // legacy: int32[4] offset corrections -off * sum(q_b)
inline constexpr int kXDx = 192;    // legacy: float[16], lane l = scale of block l % 4
inline constexpr int kXSx = 256;    // legacy: float[16], lanes 0..3 = scale_b * sum(q_b) (Q4_1), others 0
// Grouped legacy record (kGroupRecord bytes per group of 4 units and activation row): lane 4 u + b is block b of the
// group's unit u. int8 at 64 (4 z + g) + 16 u + 4 b + i = unit u's record byte 64 z + 16 g + 4 b + i (z: the code
// vector, g: its 128-bit quarter), then per lane the offset correction (int32), the block scale and Q4_1's
// scale * sum(q) (float).
inline constexpr int kGCorr = 512, kGDx = 576, kGSx = 640;

// The activation quantizer's block function: scale = amax / 127, q = round-to-nearest-even(x * 127 / amax) in
// -127..127, sums of 16; the variants this CPU runs (scalar, avx2, avx512), which compute the same bits.
using QuantizeBlockFn = float (*)(const float* x, int len, int8_t* q, int32_t* sums16);
std::vector<std::pair<const char*, QuantizeBlockFn>> quantize_block_variants();
// Whole-unit activation quantizers (a unit's unit_cols values -> its activation record): the generic one (blocks, then
// the lane order copied dword by dword) and, where the CPU has AVX-512 F/BW/DQ, the one quantize_activations() runs
// there (the lane order by permutes; a legacy unit all in registers). Tests hold them to the same bytes.
using QuantizeUnitFn = void (*)(Format f, const float* x, uint8_t* rec);
std::vector<std::pair<const char*, QuantizeUnitFn>> quantize_unit_variants();

// Element (within the unit) whose code sits at kernel byte j (0..255 K, 0..127 legacy) of a unit.
int element_of(Format f, int j);
// Q5_K: the packed position (ggml's qh / qs packing in the record) the kernels decode at kernel byte j.
int q5k_position(int j);

// The inverse of the load-time rearrangement: the unit's first `nblocks` stored blocks, byte for byte as the file
// held them.
void restore_unit(Format f, const uint8_t* rec, int nblocks, uint8_t* stored);

}  // namespace genesis::kernels::kq_gemv::layout
