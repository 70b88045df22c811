// AMX int8 tiles for kq_gemv's legacy formats (Q8_0, Q4_0, Q4_1) with several rows of x: the same semantics as the
// JIT kernels (x quantized to int8 per 32-block, exact integer dot per block, scaled in fp32), but the dot products of
// 16 weight rows with up to 16 rows of x are TDPBUSD (u8 codes x s8 activations) instead of one vpdpbusd per row of
// x. The codes are unpacked into a 16-row scratch once per 16 weight rows (nibbles to bytes, each block's dwords
// gathered); x is packed once per product into B tiles (Packed). Per unit (four blocks) the C tiles are stored and
// folded while the next unit's tiles run: per weight row, (C + offset correction) to fp32 times d_w * d_x (+ m_w *
// d_x sum_x for Q4_1), summed over the unit, then into the row's lanes. See README.md ("AMX int8 tiles").
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kq_gemv/kq_gemv.h"

namespace genesis::kernels::kq_gemv::tiles {

// Tiles usable here: AMX tile + int8 (cpuid, the OS's permission), AVX-512 F/BW/VL/DQ for the unpacking and the fold,
// GENESIS_MAX_ISA=amx, and neither GENESIS_AMX=0 nor GENESIS_AMX_INT8=0 (the switch for A/B runs).
bool available();
// The formats this path serves: Q8_0, Q4_0, Q4_1 (the K-quants' sub-block scales are not one scale per tile block).
bool serves(Format f);
// Rows of x from which a legacy product takes the int8 tiles (GENESIS_AMX_INT8_ROWS, else kDefaultMinRows), up to
// kMaxRows (the family's bf16 tiles above). 16: on a 2-core Xeon (Sapphire Rapids class, one thread) against the
// int8 kernels, Q4_0 / Q4_1 / Q8_0: 8 rows 1.4-2.3x (in L2 and streamed) and 16 rows 1.7-2.8x, 4-6 rows 0.7-1.2x (the
// per-row unpacking and fold cost as much as the kernels' products); in the model (SmolLM2 Q4_1, 8 streams) 8 rows
// were even to slightly slower, their products being small. See README.md.
inline constexpr int64_t kDefaultMinRows = 16;
inline constexpr int64_t kMaxRows = 128;
int64_t min_rows();

// x's quantized activations as B tiles. Rows of x go in groups of T = 4, 8 or 16 (the fewest that hold n). The A
// tiles hold each block's 32 codes together (the record's dword lanes b, b + 4, b + 8, b + 12 of both halves: dword
// k of the block). T = 16: one C tile per block (A: 16 rows x 32 codes, B: 8 dword rows x 16 rows of x). T = 4, 8:
// one product per pair of blocks (A: 64 codes, B: 16 dword rows) whose B tile holds each block's rows of x in its own
// slot of the C tile's 16 columns (T columns each; zeros elsewhere keep the blocks apart), so a C tile holds two
// blocks (T = 8) or all four (T = 4, both pairs summed into one tile). Per group g, unit u and B tile j (a block, or
// a pair) one record: the tile (1 KiB, 512 bytes used for T = 16), then per column of the C tile it feeds (j's, or
// for T = 4 the unit's one tile in j = 0) the block's d_x (fp32[16]), offset correction (int32[16]: -8 or -128
// times the codes' sum, 0 for Q4_1) and d_x * sum (fp32[16], Q4_1). Rows of x past n are zeros.
inline constexpr int kTileRecord = 1216;
inline constexpr int kRecDx = 1024, kRecCorr = 1088, kRecSx = 1152;
struct Packed {
  Format format = Format::q4_0;
  int n = 0, groups = 0;
  int t = 16;  // rows of x per group: 4, 8 or 16
  int64_t units = 0;
  std::vector<uint8_t> data;  // [groups][units][b_tiles()][kTileRecord]
  int b_tiles() const { return t == 16 ? 4 : 2; }
  size_t offset(int g, int64_t u, int j) const {
    return ((size_t(g) * size_t(units) + size_t(u)) * size_t(b_tiles()) + size_t(j)) * kTileRecord;
  }
  const uint8_t* record(int g, int64_t u, int j) const { return data.data() + offset(g, u, j); }
  uint8_t* record(int g, int64_t u, int j) { return data.data() + offset(g, u, j); }
};
void pack(const Activations& a, Packed& out);

// y[t * ldy + r] for t < x.n and r in [r0, r1), as kq_gemv::run_rows (thread-safe on disjoint rows). Requires
// available() unless `emulated`: the same driver over software tiles after the SDM's TILELOADD / TDPBUSD /
// TILESTORED (the tests, on any CPU with AVX-512 F/BW/VL/DQ).
void run_rows(const Matrix& w, const Packed& x, float* y, int64_t ldy, int64_t r0, int64_t r1, bool emulated = false);
// What the emulated driver needs of the CPU (AVX-512 F/BW/VL/DQ).
bool emulation_available();

}  // namespace genesis::kernels::kq_gemv::tiles
