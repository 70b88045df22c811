// make_conf(): every decision about one JIT nf4_gemv kernel — blocking, loop structure, register assignment, what
// the genome's genes become on this CPU — taken before any code is written. build() only reads a Conf.
// Genes are requests: row_groups, accs and bcast_reg are honoured as far as 32 vector registers allow (the
// effective values are in the Conf and in the kernel id's description); an order or hint that does not fit the
// body, or an ISA the CPU lacks, is an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "jit/ir.h"
#include "kernels/nf4_gemv/genome.h"
#include "kernels/nf4_gemv/nf4_gemv.h"

namespace genesis::kernels::nf4_gemv {

// The kernel's one argument (rdi points to it). Offsets are read by the generated prologue.
struct KernelArgs {
  const uint8_t* w = nullptr;    // first record of the first group of the first tile
  int64_t group_bytes = 0;       // distance between consecutive groups' streams
  int64_t tile_advance = 0;      // added to each group pointer after a tile: (R - 1) * group_bytes
  const void* x = nullptr;       // prepared activations [block][token][blocksize]
  const void* xaux = nullptr;    // int8 path: [block][token] {int32 correction, float scale}
  float* y = nullptr;            // output of the first row of the first tile, token 0
  int64_t y_stride = 0;          // bytes between tokens' output rows
  int64_t n_tiles = 0;
  int64_t n_blocks = 0;
  float* scratch = nullptr;      // R * tokens * 16 floats when accumulators live in memory
  const void* consts = nullptr;  // lookup tables and masks (family-owned, 64-byte aligned)
  int64_t rewind = 0;            // -group_bytes: the AVX2 kernels' token passes go back to the tile's first block
};

struct Conf {
  Problem problem;  // M and K are ignored by the code (they are run-time arguments)
  Genome genome;
  Path path = Path::avx512_vnni;
  int tokens = 1, blocksize = 64;
  // blocking
  int R = 1;              // 16-row groups per tile (effective)
  int A = 1;              // accumulators per (group, token) (effective)
  int k_per_step = 8;     // k values one step covers: 2 (fp32), 4 (bf16), 8 (int8)
  int step_bytes = 64;    // code bytes one step reads per group
  int steps_per_block = 8;
  int unroll = 8;         // steps per hot-loop iteration (effective; divides steps_per_block)
  bool inner_loop = false;  // unroll < steps_per_block: a step loop nested in the block loop
  int x_elem = 1;         // bytes per prepared activation element
  bool bcast_reg = false; // effective
  bool facc_in_mem = false;
  int temp_sets = 1;
  // vector registers
  int ctab = -1, cmask = -1;
  std::vector<int> acc;   // [(r * tokens + t) * A + a]
  std::vector<int> facc;  // [r * tokens + t]; empty when facc_in_mem
  std::vector<int> xb;    // [t * 2 + half] when bcast_reg
  std::vector<int> temps; // [set * 2 + j]
  int vregs_used = 0;
  // AVX2 paths (ymm: a 16-row group is two halves of 8 rows; 16 registers): tokens per pass over a tile (the
  // kernel makes tokens / pass_tokens passes, re-reading the tile's weights from cache)
  int pass_tokens = 0;
  std::string id;         // kernel_id(genome) + tokens + blocksize: the code-cache key and dump name
  std::string describe() const;
};

// Throws genesis::Error: a path this ISA set lacks, a problem the path cannot do, a genome that does not fit.
Conf make_conf(const Problem& problem, const Genome& genome, const cpu::IsaSet& isa);

// The hot loop body in canonical order (before the genome's order and hints). Depends on the parameter genes,
// tokens and blocksize, not on M or K.
std::vector<jit::Instr> canonical_body(const Conf& conf);

// The whole kernel with the genome's order and hints applied. Throws genesis::Error for an illegal order.
jit::Program build(const Conf& conf);

// build_avx2.cpp: the same three for avx2int8 / avx2vnni (make_conf, canonical_body and build dispatch there).
Conf make_conf_avx2(const Problem& problem, const Genome& genome);
std::vector<jit::Instr> canonical_body_avx2(const Conf& conf);
jit::Program build_avx2(const Conf& conf);

// The genome's same-class replacements, order (checked by jit::is_legal_order) and hints applied to a canonical
// body; hints point into the weights (w_first), the scales (w_last) or the activations (x_reg).
void apply_genome(const Genome& g, std::vector<jit::Instr>& body, int w_first, int w_last, int x_reg);

// The ISA bits a path needs, and whether this set has them.
bool isa_supports(const cpu::IsaSet& isa, Path p);

}  // namespace genesis::kernels::nf4_gemv
