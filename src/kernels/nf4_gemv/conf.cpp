// make_conf(): path geometry, register budget and the effective schedule of a genome on this CPU.
#include "kernels/nf4_gemv/conf.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"

namespace genesis::kernels::nf4_gemv {

using cpu::Isa;

bool isa_supports(const cpu::IsaSet& isa, Path p) {
  switch (p) {
    case Path::scalar: return true;
    case Path::avx2: return isa.has(Isa::avx2) && isa.has(Isa::fma);
    case Path::avx512_fp32: return isa.has(Isa::avx512f);
    case Path::avx512_bf16: return isa.has(Isa::avx512f) && isa.has(Isa::avx512bw) && isa.has(Isa::avx512bf16);
    case Path::avx512_vnni: return isa.has(Isa::avx512f) && isa.has(Isa::avx512bw) && isa.has(Isa::avx512vnni);
    case Path::avx2_int8: return isa.has(Isa::avx2) && isa.has(Isa::fma);
    // AVX-VNNI is not in IsaSet (cpu/isa.h): asked of this host, under its GENESIS_MAX_ISA
    case Path::avx2_vnni: return isa.has(Isa::avx2) && isa.has(Isa::fma) && cpu::mayiuse_avx_vnni();
  }
  return false;
}

std::string Conf::describe() const {
  return fmt::format("{} tokens={} bs={} R={} A={} unroll={}{} bcast_reg={} acc_mem={} temps={} vregs={}", id,
                     tokens, blocksize, R, A, unroll, inner_loop ? "(inner loop)" : "(whole block)", bcast_reg,
                     facc_in_mem, temp_sets, vregs_used);
}

Conf make_conf(const Problem& problem, const Genome& genome, const cpu::IsaSet& isa) {
  genome.validate();
  if (!path_is_jit(genome.path))
    fail("nf4_gemv: path {} is compiled, not generated; make_conf is for the JIT paths", path_name(genome.path));
  if (!isa_supports(isa, genome.path))
    fail("nf4_gemv: this CPU (or GENESIS_MAX_ISA) cannot run path {}", path_name(genome.path));
  if (genome.lut_permb && !isa.has(Isa::avx512vbmi))
    fail("nf4_gemv: genome {} uses vpermb, which needs AVX512-VBMI; this CPU (or GENESIS_MAX_ISA) lacks it",
         kernel_id(genome));
  if (problem.tokens < 1 || problem.tokens > kMaxTokens)
    fail("nf4_gemv: {} tokens requested; a kernel handles 1..{}", problem.tokens, kMaxTokens);
  quant::check_nf4_blocksize(problem.blocksize);
  if (is_avx2_jit(genome.path)) return make_conf_avx2(problem, genome);

  Conf c;
  c.problem = problem;
  c.genome = genome;
  c.path = genome.path;
  c.tokens = problem.tokens;
  c.blocksize = problem.blocksize;
  switch (c.path) {
    case Path::avx512_fp32: c.k_per_step = 2, c.step_bytes = 16, c.x_elem = 4; break;
    case Path::avx512_bf16: c.k_per_step = 4, c.step_bytes = 32, c.x_elem = 2; break;
    default: c.k_per_step = 8, c.step_bytes = 64, c.x_elem = 1; break;
  }
  c.steps_per_block = c.blocksize / c.k_per_step;
  // unroll 0 = one whole block per iteration, capped so that bodies stay a few hundred instructions.
  int want = genome.unroll == 0 ? std::min(c.steps_per_block, 16) : std::min(genome.unroll, c.steps_per_block);
  c.unroll = 1;
  for (int u = want; u >= 1; --u)
    if (c.steps_per_block % u == 0) {
      c.unroll = u;
      break;
    }
  c.inner_loop = c.unroll < c.steps_per_block;

  const int T = c.tokens;
  const int consts = (c.path == Path::avx512_vnni && !genome.lut_permb) ? 2 : 1;
  const int budget = 32 - consts;
  bool found = false;
  for (int R = genome.row_groups; R >= 1 && !found; --R)
    for (int A = genome.accs; A >= 1 && !found; --A)
      for (int mem = 0; mem <= 1 && !found; ++mem)
        for (int bc = genome.bcast_reg ? 1 : 0; bc >= 0 && !found; --bc) {
          const int used = R * T * A + (mem ? 0 : R * T) + (bc ? 2 * T : 0);
          if (used + 2 > budget) continue;
          c.R = R, c.A = A, c.facc_in_mem = mem, c.bcast_reg = bc;
          c.temp_sets = std::min(4, (budget - used) / 2);
          found = true;
        }
  if (!found) fail("nf4_gemv: no register assignment for {} tokens on path {}", T, path_name(c.path));

  int next = 0;
  c.ctab = next++;
  if (c.path == Path::avx512_vnni && !genome.lut_permb) c.cmask = next++;
  for (int i = 0; i < c.R * T * c.A; ++i) c.acc.push_back(next++);
  if (!c.facc_in_mem)
    for (int i = 0; i < c.R * T; ++i) c.facc.push_back(next++);
  if (c.bcast_reg)
    for (int i = 0; i < 2 * T; ++i) c.xb.push_back(next++);
  for (int i = 0; i < 2 * c.temp_sets; ++i) c.temps.push_back(next++);
  c.vregs_used = next;
  c.id = fmt::format("{}_t{}_bs{}", kernel_id(genome), T, c.blocksize);
  return c;
}

}  // namespace genesis::kernels::nf4_gemv
