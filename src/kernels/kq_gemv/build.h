// Internal to kq_gemv: the JIT kernel's argument block, its configuration, and the IR builder.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jit/ir.h"
#include "kernels/kq_gemv/genome.h"
#include "kernels/kq_gemv/kq_gemv.h"

namespace genesis::kernels::kq_gemv {

// The kernel's one argument (rdi). For each of n_rows rows it adds n_units records (from w, then w + row_stride
// per row) times the activations' units (from x, x_stride apart) into its activation rows' 16 fp32 lanes at
// out[row][t][16]; the lanes' sum is y (the driver zeroes them, calls the kernel per column chunk and pass, and adds
// them).
struct KernelArgs {
  const uint8_t* w = nullptr;
  const uint8_t* x = nullptr;  // Activations::data of the chunk's first unit
  float* out = nullptr;
  int64_t n_rows = 0;
  int64_t n_units = 0;
  const void* consts = nullptr;
  int64_t w_skip = 0;    // row stride minus n_units records: added to w after each row
  int64_t x_stride = 0;  // bytes from one unit's activation records to the next (all activation rows' records)
  int64_t w_row = 0;     // row stride of the matrix (the two-row kernels read rows r and r + 1; n_rows counts pairs)
  // Four-unit kernels with a tail (Conf::tail): the tail units' plain activation records and their unit stride
  const uint8_t* x_tail = nullptr;
  int64_t x_tail_stride = 0;
};

// Constant block offsets (kernel_constants()).
namespace kconst {
inline constexpr int kMask0F = 0, kMask10 = 4, kMask30 = 8;
inline constexpr int kSh02 = 64, kSh13 = 128, kIdxK = 192, kIdx6 = 448, kNeg32 = 704;
inline constexpr int kMask30Y = 768, kMask10Y = 800, kOnes16 = 832, kSixteens16 = 864;  // 32 bytes each
// Q4_K (its record layout): dword lane l -> scale byte l % 8 (AVX-512); per word of each 64-byte code vector the
// scale byte of its sub-block (AVX2's vpshufb of the broadcast scales, 32 bytes at a time)
inline constexpr int kIdxD = 896, kIdxKL = 960;
// Q6_K (its record layout: dword lane l of every code vector is sub-block l): AVX2's word -> scale byte (high byte,
// then vpsraw 8) for 32 bytes of a code vector
inline constexpr int kIdx6L = 1216;
// The four-unit legacy kernels: 32-byte masks of qword u (u = 1, 2, 3) for gathering the units' scales
inline constexpr int kSelQ = 1280;
inline constexpr int kConstBytes = 1408;
}  // namespace kconst

struct Conf {
  Format format = Format::q4_k;
  Path path = Path::avx512vnni;  // avx512vnni, avx2 or avx2vnni (AVX-VNNI's {vex} vpdpbusd / vpdpwssd)
  int tokens = 1;
  Genome genome;    // the code genes: prefetch distance and kind, loop alignment
  // vector registers
  std::vector<int> f;      // fp32 lane accumulators, one per activation row
  std::vector<int> c;      // decoded code vectors (4 K-quants, 2 legacy)
  std::vector<int> sc;     // K-quants: int16 sub-block scale vectors
  int d = -1, dmin = -1, mv = -1;  // d (K) or the 4 blocks' d (legacy); Q4_K/Q5_K dmin and mins; Q6_K -32 sc; Q4_1 m
  std::vector<int> temps;  // sets of set_size: K-quants S, P0, P1; legacy S
  std::vector<std::pair<int, int>> const_regs;  // (constant block offset, register) held in registers when they fit
  int sets = 1, set_size = 3;
  // avx2 / avx2vnni (ymm, 16 registers): an int32 accumulator per activation row, the broadcast scale bytes, the
  // stored high bits, one product temp
  std::vector<int> s;
  std::vector<int> s_hi;  // avx2 Q8_0: the high nibbles' int16 sums per activation row
  int sb = -1, qh = -1, p = -1;
  // The row loop starts each row's lanes at zero instead of loading them (the driver's first column chunk: the lanes
  // buffer then needs no clearing). Set by zero_init(); part of the id.
  bool zero_init = false;
  // Two weight rows per iteration (Q4_K, Q6_K on avx512vnni): each activation vector is loaded once into `xr` and feeds
  // both rows' vpdpbusd. Row 1 has its own codes (c2), scales (sc2: D) and mins (mv2); its lanes follow row 0's.
  bool pair = false;
  // Four units per iteration (legacy formats on avx512vnni, 2..8 activation rows): the units' code vectors regrouped
  // so that dword lane 4 u + b is block b of unit u (8 code vectors c), their scales in d (and Q4_1's mins in mv);
  // the activations in the grouped records (Activations::grouped). KernelArgs::n_units counts groups.
  bool group4 = false;
  int tail = 0;  // group4: units after the groups in each row (0..3), run by the one-unit body before the lanes' store
  std::vector<int> c2;
  int sc2 = -1, mv2 = -1, xr = -1;
  std::string id;
  std::string describe() const;
};

Conf make_conf(Format f, int tokens, const Genome& g = Genome::baseline(), Path path = Path::avx512vnni);
jit::Program build(const Conf& c);
// The same kernel with its lanes started at zero (Conf::zero_init; id + "_z").
Conf zero_init(Conf c);
// Q4_K and Q6_K on avx512vnni: the kernel for 1..8 activation rows that takes two weight rows per iteration
// (Conf::pair; id "..._r2_..."); KernelArgs::n_rows counts row pairs and w_row is the row stride. Other formats and
// paths have none.
bool has_pair_kernel(Path path, Format f, int tokens);
Conf make_conf_pair(Format f, int tokens, const Genome& g = Genome::baseline());
// Q8_0, Q4_0 and Q4_1 on avx512vnni, 2..8 activation rows: the kernel that takes four units per iteration
// (Conf::group4; id "..._g4_...") on Activations::grouped.
bool has_group_kernel(Path path, Format f, int tokens);
Conf make_conf_group(Format f, int tokens, const Genome& g = Genome::baseline(), int tail = 0);
// Activation rows one kernel of `path` takes at most (the AVX2 kernels hold fewer in their 16 registers).
int max_tokens(Path path, Format f);
// The activation rows of each kernel pass run_rows makes for n rows: balanced passes of at most
// min(genome.rows_per_pass, max_tokens(path, f)).
std::vector<int> pass_rows(Path path, Format f, const Genome& g, int n);
// The unit loop's body in canonical order (what Genome::order permutes). Depends on format, rows and code genes.
std::vector<jit::Instr> canonical_body(const Conf& c);
// build_avx2.cpp: the AVX2 kernels (make_conf / build / canonical_body dispatch there for avx2 and avx2vnni).
Conf make_conf_avx2(Format f, int tokens, const Genome& g, bool vnni);
jit::Program build_avx2(const Conf& c);
std::vector<jit::Instr> hot_body_avx2(const Conf& c);

// The family's constant block (masks, shift counts, shuffle indices), 64-byte aligned.
const void* kernel_constants();

}  // namespace genesis::kernels::kq_gemv
