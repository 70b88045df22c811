// bf16 GEMM on AMX tiles for the many-row products (prefill chunks) of the block-quantized families. The weights'
// rows are widened through Linear::row_f32() in blocks of 32 and rounded to bf16 (the A operand, row-major as it is);
// x is packed once per product into the B operand's pair layout; TDPBF16PS accumulates in fp32. Where the CPU (or the
// OS, or GENESIS_MAX_ISA) has no AMX, the families keep their fp32 sgemm path (linear.h, widened_gemm_rows).
//
// Tiles (all 16 rows x 64 bytes): C0..C3 = tmm0..3 (16 weight rows x 16 rows of x, fp32), A0, A1 = tmm4, 5 (16 weight
// rows x 32 columns, bf16), B0, B1 = tmm6, 7 (16 column pairs x 16 rows of x). One step: 2 A + 2 B loads, 4 products.
#pragma once

#include <cstdint>
#include <vector>

namespace genesis::kernels {
class Linear;
}

namespace genesis::kernels::amx {

inline constexpr int kTileRows = 16;    // rows of every tile; rows of x per B tile
inline constexpr int kTileK = 32;       // bf16 columns per tile row (64 bytes)
inline constexpr int kBlockRows = 32;   // weight rows per block (two A tiles)
inline constexpr int kWidenRows = 128;  // weight rows widened at once by widened_rows()

// AMX tiles with bf16 products usable in this process: cpuid, the OS's permission (requested at detection) and
// GENESIS_MAX_ISA=amx (the default where AMX exists); GENESIS_AMX=0 turns the path off for A/B runs.
bool available();

// Rows of x from which a family's product takes the tiles (GENESIS_AMX_ROWS, default kDefaultMinRows): below, the
// weights' widening to bf16 is paid by too few rows against the family's own int8 kernels. 64: on a 2-core Xeon with
// AMX (stop 27, `bench gemm --format Q4_K --threads 2`, us with tiles / int8 kernels) 32 rows lost on every shape
// (1536x2048 752 / 619, 2048x768 416 / 297, 5120x2048 2343 / 1872: the widening, about 0.75 cycles a weight, is most
// of a tile product of 32 rows), 48 were even (937 / 913, 502 / 447, 2830 / 2726) and 64 won (983 / 1176, 497 / 603,
// 2841 / 3571); the 30B file's pp64 went 222 / 219 -> 238 / 236 tokens/s, pp512 363 -> 365 (was 32).
inline constexpr int64_t kDefaultMinRows = 64;
// Where the family widens the rows straight to bf16 (Linear::row_bf16: Q4_K), 48: the same machine and command after
// that path (about 1.3x faster tile products), with tiles / int8 kernels, us: 32 rows 463 / 579, 482 / 367,
// 1608 / 1519 (even); 48 rows 696 / 913, 362 / 544, 2152 / 2752; 64 rows 725 / 1304, 376 / 692, 2194 / 4261.
// Q6_K's straight rows halved its tile products (2048x768, 64 rows: 1163 -> 585 us) but 48 rows still lost (618
// against 546; 5120x2048 3994 against 3510), so it keeps 64.
inline constexpr int64_t kStraightMinRows = 48;
// GENESIS_AMX_ROWS when set, else kStraightMinRows where the caller says its rows pay from there, else
// kDefaultMinRows.
int64_t min_rows(bool straight_bf16_rows = false);

// x [n][cols] as B tiles: for a group g of 16 rows and a block kb of 32 columns one 1 KiB tile at tile(g, kb) whose
// row kk holds, for each of the group's rows t, the bf16 pair (x[t][32 kb + 2 kk], x[t][32 kb + 2 kk + 1]). Groups
// are padded to an even count and the columns to whole blocks, with zeros.
struct PackedRows {
  int64_t n = 0, cols = 0, groups = 0, kblocks = 0;
  std::vector<uint16_t> data;
  const uint16_t* tile(int64_t g, int64_t kb) const { return data.data() + (g * kblocks + kb) * 512; }
};
void pack_rows(const float* x, int64_t n, int64_t cols, PackedRows& p);

// The loop order: per pair of x's 16-row groups, every 32-row block of w over all columns (x read once per call). A
// column-panel order (x's panel kept in L2, the C tiles stored between panels) measured slower on the 16-core host
// (5120x2048 x 512 rows, 16 threads: 4669 against 4068 us for w's 32-row blocks outside) and was removed.
// y[t * ldy + r] = sum_k w[r * ldw + k] x[t][k] for r < rows, t < x.n. w: bf16, [round_up(rows, 32)][ldw] with
// ldw >= 32 * x.kblocks, the columns from x.cols on and the rows from `rows` on readable (they are computed, not
// stored; zeros keep them finite).
void gemm_bf16(const uint16_t* w, int64_t ldw, int64_t rows, const PackedRows& x, float* y, int64_t ldy);

// The same drivers over software tiles that follow the instructions' definitions (TILELOADD, TDPBF16PS, TILESTORED),
// on any CPU: the tests check the layouts and edges with it everywhere, and the hardware against it where AMX exists.
void gemm_bf16_emulated(const uint16_t* w, int64_t ldw, int64_t rows, const PackedRows& x, float* y, int64_t ldy);

// Rows [r0, r1) of w x over AMX: w's rows widened through row_f32() kWidenRows at a time, rounded to bf16, then
// gemm_bf16.
// y[t * w.rows() + r]. Requires available().
void widened_rows(const Linear& w, const PackedRows& x, float* y, int64_t r0, int64_t r1);
// The same over the software tiles (tests, on any CPU).
void widened_rows_emulated(const Linear& w, const PackedRows& x, float* y, int64_t r0, int64_t r1);

}  // namespace genesis::kernels::amx
