// The AVX2 JIT paths (avx2vnni, avx2int8): the int8 layout, activations and semantics of avx512vnni in ymm
// registers, VEX encodings only, 16 vector registers. A 16-row group's step (64 bytes: 8 k per row) is two ymm halves
// of 8 rows; each half: nibble masks, vpshufb through the code table, then per token
//   avx2vnni: {vex} vpdpbusd acc, u8 codes (round(127 code) + 128), broadcast int8 x   (+ the -128 sum(x) correction)
//   avx2int8: vpsignb p, x, q; vpmaddubsw p, |q|, p; vpmaddwd p, p, ones; vpaddd acc, p   (signed codes q: no
//             correction; |q|, |x| <= 127 keep vpmaddubsw's pairs below 2^15)
// Activations are broadcast into registers (no {1to8} in VEX). Each (row group, token, half) needs an int32
// accumulator (and an fp32 one unless they live in the scratch buffer), so a kernel handles `pass_tokens` tokens at
// once and makes tokens / pass_tokens passes over each tile, going back to the tile's first block between passes
// (the tile's weights are then read from cache). Loop structure:
//   tile loop { per pass { block loop { [step loop] { HOT } fold } store y; rewind } }
// Every pass runs the same HOT body (same tokens per pass, activations addressed from the pass's first token), so the
// genome's order and hints apply to each.
#include <fmt/format.h>

#include <algorithm>
#include <cstddef>

#include "common/error.h"
#include "kernels/nf4_gemv/conf.h"
#include "kernels/nf4_gemv/family.h"

namespace genesis::kernels::nf4_gemv {

using jit::Instr;
using jit::Mem;
using jit::Op;

namespace {

enum StreamId { kArgs = 0, kWeights = 1, kX = 2, kXaux = 3, kY = 4, kScratch = 5, kConsts = 6 };

constexpr int kArgsReg = jit::kGprBase + 7;                                                            // rdi
constexpr int kW[4] = {jit::kGprBase + 8, jit::kGprBase + 9, jit::kGprBase + 10, jit::kGprBase + 11};  // r8..r11
constexpr int kXReg = jit::kGprBase + 6;        // rsi
constexpr int kXauxReg = jit::kGprBase + 2;     // rdx
constexpr int kYReg = jit::kGprBase + 1;        // rcx
constexpr int kYStride = jit::kGprBase + 5;     // rbp
constexpr int kBlockCnt = jit::kGprBase + 0;    // rax
constexpr int kInnerCnt = jit::kGprBase + 12;   // r12
constexpr int kTileCnt = jit::kGprBase + 13;    // r13
constexpr int kTmp = jit::kGprBase + 14;        // r14
constexpr int kScratchReg = jit::kGprBase + 3;  // rbx
constexpr int kFaultReg = jit::kGprBase + 15;   // r15
constexpr int kYw = 32;                         // ymm width

Mem mem(int base, int64_t disp, int stream) {
  if (disp < INT32_MIN || disp > INT32_MAX) fail("nf4_gemv: displacement {} does not fit 32 bits", disp);
  Mem m;
  m.base = base;
  m.disp = int32_t(disp);
  m.stream = stream;
  return m;
}
Mem arg(size_t offset) { return mem(kArgsReg, int64_t(offset), kArgs); }

Op prefetch_op(HintKind k) {
  switch (k) {
    case HintKind::prefetch_t1: return Op::prefetch_t1;
    case HintKind::prefetch_t2: return Op::prefetch_t2;
    case HintKind::prefetch_nta: return Op::prefetch_nta;
    default: return Op::prefetch_t0;
  }
}

Instr loop_marker(Op op, int counter, int align) {
  Instr i;
  i.op = op;
  i.dst = counter;
  i.imm = align;
  return jit::finalize(i);
}

// Registers besides the accumulators: code table, nibble mask, two broadcast activations, the decode temps
// (avx2vnni: codes of the low and high nibbles; avx2int8: signed and absolute codes of both; its products are formed
// in the broadcast activations' registers).
int fixed_regs(bool vnni) { return 2 + 2 + (vnni ? 2 : 4); }

class Builder2 {
 public:
  explicit Builder2(const Conf& c) : c_(c), P_(c.pass_tokens), vnni_(c.path == Path::avx2_vnni) {}

  int acc(int r, int t, int h, int a) const { return c_.acc[size_t(((r * P_ + t) * 2 + h) * c_.A + a)]; }
  int facc(int r, int t, int h) const { return c_.facc[size_t((r * P_ + t) * 2 + h)]; }
  int64_t scratch_off(int r, int t, int h) const { return int64_t((r * P_ + t) * 2 + h) * 32; }
  // Decode temps and broadcast activations come in c_.temp_sets sets (registers left over give a second one, used
  // by alternate halves: more freedom for the scheduler and for the genome's reorders).
  int per_set() const { return vnni_ ? 2 : 4; }
  int xb(int set, int j) const { return c_.xb[size_t(2 * (set % c_.temp_sets) + j)]; }
  int tmp(int set, int j) const { return c_.temps[size_t(per_set() * (set % c_.temp_sets) + j)]; }
  int tmp(int j) const { return tmp(0, j); }

  // Token t's (relative to the pass) 4 activation bytes for step s, k half kh.
  Mem x_mem(int t, int s, int kh) const {
    return mem(kXReg, int64_t(t) * c_.blocksize + int64_t(s) * c_.k_per_step + 4 * kh, kX);
  }

  void init_accs(std::vector<Instr>& o) const {
    for (int r = 0; r < c_.R; ++r)
      for (int t = 0; t < P_; ++t)
        for (int h = 0; h < 2; ++h)
          for (int a = 0; a < c_.A; ++a) {
            const int v = acc(r, t, h, a);
            if (vnni_ && a == 0)  // the u8 codes' offset: -128 * sum(x) of the block
              o.push_back(jit::make_load(Op::vbcast_d, v, mem(kXauxReg, t * 8, kXaux), kYw));
            else
              o.push_back(jit::make_alu(Op::vpxord, v, v, v, kYw));
          }
  }

  // acc += codes(k 0..3) . x0 + codes(k 4..7) . x1 per dword lane (row). avx2int8 forms the products in x0 / x1
  // (dead after this), the two chains interleaved.
  void dot2(std::vector<Instr>& o, int accv, const int u8_or_abs[2], const int signed_codes[2], const int x[2]) const {
    if (vnni_) {
      for (int j = 0; j < 2; ++j) {
        Instr i = jit::make_alu(Op::vpdpbusd, accv, u8_or_abs[j], x[j], kYw);
        i.vex = true;
        o.push_back(i);
      }
      return;
    }
    for (int j = 0; j < 2; ++j) o.push_back(jit::make_alu(Op::vpsignb, x[j], x[j], signed_codes[j], kYw));
    for (int j = 0; j < 2; ++j) o.push_back(jit::make_alu(Op::vpmaddubsw, x[j], u8_or_abs[j], x[j], kYw));
    for (int j = 0; j < 2; ++j) o.push_back(jit::make_alu_mem(Op::vpmaddwd, x[j], x[j], mem(kTmp, 0, kConsts), kYw));
    for (int j = 0; j < 2; ++j) o.push_back(jit::make_alu(Op::vpaddd, accv, accv, x[j], kYw));
  }

  void steps(std::vector<Instr>& o, int n_steps) const {
    for (int s = 0; s < n_steps; ++s) {
      const int64_t ds = int64_t(s) * c_.step_bytes;
      for (int r = 0; r < c_.R; ++r) {
        if (c_.genome.pf_dist > 0)
          o.push_back(jit::make_hint(prefetch_op(c_.genome.pf_kind), mem(kW[r], ds + c_.genome.pf_dist, -1)));
        const int a = s % c_.A;
        for (int h = 0; h < 2; ++h) {
          const Mem wm = mem(kW[r], ds + 32 * h, kWeights);
          // lo: k 0..3 of each row (low nibbles), hi: k 4..7
          const int set = (s * c_.R + r) * 2 + h;
          const int lo = tmp(set, 0), hi = tmp(set, 1);
          o.push_back(jit::make_load(Op::vload, hi, wm, kYw));
          o.push_back(jit::make_alu(Op::vpandd, lo, hi, c_.cmask, kYw));
          o.push_back(jit::make_shift(Op::vpsrlw_imm, hi, hi, 4, kYw));
          o.push_back(jit::make_alu(Op::vpandd, hi, hi, c_.cmask, kYw));
          o.push_back(jit::make_alu(Op::vpshufb, lo, c_.ctab, lo, kYw));
          o.push_back(jit::make_alu(Op::vpshufb, hi, c_.ctab, hi, kYw));
          int alo = lo, ahi = hi;
          if (!vnni_) {
            alo = tmp(set, 2), ahi = tmp(set, 3);
            o.push_back(jit::make_alu(Op::vpabsb, alo, lo, -1, kYw));
            o.push_back(jit::make_alu(Op::vpabsb, ahi, hi, -1, kYw));
          }
          for (int t = 0; t < P_; ++t) {
            const int xs = set + t;
            o.push_back(jit::make_load(Op::vbcast_d, xb(xs, 0), x_mem(t, s, 0), kYw));
            o.push_back(jit::make_load(Op::vbcast_d, xb(xs, 1), x_mem(t, s, 1), kYw));
            const int u[2] = {alo, ahi}, q[2] = {lo, hi}, xv[2] = {xb(xs, 0), xb(xs, 1)};
            dot2(o, acc(r, t, h, a), u, q, xv);
          }
        }
      }
    }
  }

  // Block epilogue: sum the accumulators, times the activation scale, fp32 fold with the 16 rows' absmax.
  void fold(std::vector<Instr>& o, int64_t scales_disp) const {
    const int xs = tmp(0), f = tmp(1);
    for (int r = 0; r < c_.R; ++r)
      for (int t = 0; t < P_; ++t) {
        o.push_back(jit::make_load(Op::vbcast_d, xs, mem(kXauxReg, t * 8 + 4, kXaux), kYw));
        for (int h = 0; h < 2; ++h) {
          const int a0 = acc(r, t, h, 0);
          for (int a = 1; a < c_.A; ++a) o.push_back(jit::make_alu(Op::vpaddd, a0, a0, acc(r, t, h, a), kYw));
          o.push_back(jit::make_alu(Op::vcvtdq2ps, a0, a0, -1, kYw));
          o.push_back(jit::make_alu(Op::vmulps, a0, a0, xs, kYw));
          const Mem sm = mem(kW[r], scales_disp + 32 * h, kWeights);
          if (!c_.facc_in_mem) {
            o.push_back(jit::make_alu_mem(Op::vfmadd231ps, facc(r, t, h), a0, sm, kYw));
          } else {
            const Mem am = mem(kScratchReg, scratch_off(r, t, h), kScratch);
            o.push_back(jit::make_load(Op::vload, f, am, kYw));
            o.push_back(jit::make_alu_mem(Op::vfmadd231ps, f, a0, sm, kYw));
            o.push_back(jit::make_store(f, am, kYw));
          }
        }
      }
  }

  std::vector<Instr> hot_body() const {
    std::vector<Instr> b;
    if (c_.inner_loop) {
      steps(b, c_.unroll);
    } else {
      init_accs(b);
      steps(b, c_.steps_per_block);
      fold(b, int64_t(c_.steps_per_block) * c_.step_bytes);
    }
    return b;
  }

  void plant_fault(std::vector<Instr>& o) const {
    switch (c_.genome.fault) {
      case Fault::crash:
        o.push_back(jit::make_gpr(Op::mov_imm, kFaultReg, -1, 0));
        o.push_back(jit::make_gpr(Op::mov_load, kFaultReg, -1, 0, mem(kFaultReg, 0, -1)));
        break;
      case Fault::hang:
        o.push_back(jit::make_gpr(Op::mov_imm, kFaultReg, -1, 0));
        o.push_back(loop_marker(Op::loop_begin, kFaultReg, 0));
        o.push_back(loop_marker(Op::loop_end, kFaultReg, 0));
        break;
      case Fault::illegal_instruction: {
        Instr i;
        i.op = Op::ud2;
        o.push_back(jit::finalize(i));
        break;
      }
      default: break;
    }
  }

  jit::Program program() const {
    jit::Program p;
    p.name = c_.id;
    auto& o = p.code;
    const int R = c_.R, T = c_.tokens;
    const int64_t rec = int64_t(c_.steps_per_block) * c_.step_bytes + 64;
    const int64_t x_block = int64_t(T) * c_.blocksize;  // prepared activations: [block][token][blocksize]
    // kTmp holds the constants' address for the whole kernel (avx2int8 reads its word ones from there)
    o.push_back(jit::make_gpr(Op::mov_load, kTmp, -1, 0, arg(offsetof(KernelArgs, consts))));
    o.push_back(jit::make_load(Op::vload, c_.ctab, mem(kTmp, int64_t(consts_table_offset(c_.path)), kConsts), kYw));
    o.push_back(jit::make_load(Op::vload, c_.cmask, mem(kTmp, int64_t(consts_mask_offset()), kConsts), kYw));
    if (!vnni_) o.push_back(jit::make_gpr(Op::add_imm, kTmp, -1, int64_t(consts_ones16_offset())));
    o.push_back(jit::make_gpr(Op::mov_load, kW[0], -1, 0, arg(offsetof(KernelArgs, w))));
    if (R > 1) o.push_back(jit::make_gpr(Op::mov_load, kInnerCnt, -1, 0, arg(offsetof(KernelArgs, group_bytes))));
    for (int r = 1; r < R; ++r) {
      o.push_back(jit::make_gpr(Op::mov_reg, kW[r], kW[r - 1], 0));
      o.push_back(jit::make_gpr(Op::add_reg, kW[r], kInnerCnt, 0));
    }
    o.push_back(jit::make_gpr(Op::mov_load, kYReg, -1, 0, arg(offsetof(KernelArgs, y))));
    o.push_back(jit::make_gpr(Op::mov_load, kYStride, -1, 0, arg(offsetof(KernelArgs, y_stride))));
    o.push_back(jit::make_gpr(Op::mov_load, kTileCnt, -1, 0, arg(offsetof(KernelArgs, n_tiles))));
    o.push_back(jit::make_gpr(Op::mov_load, kScratchReg, -1, 0, arg(offsetof(KernelArgs, scratch))));
    plant_fault(o);
    o.push_back(loop_marker(Op::loop_begin, kTileCnt, 0));
    const int passes = T / P_;
    const int align = c_.genome.loop_align;
    for (int pass = 0; pass < passes; ++pass) {
      const int t0 = pass * P_;
      o.push_back(jit::make_gpr(Op::mov_load, kXReg, -1, 0, arg(offsetof(KernelArgs, x))));
      if (t0 > 0) o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, int64_t(t0) * c_.blocksize));
      o.push_back(jit::make_gpr(Op::mov_load, kXauxReg, -1, 0, arg(offsetof(KernelArgs, xaux))));
      if (t0 > 0) o.push_back(jit::make_gpr(Op::add_imm, kXauxReg, -1, int64_t(t0) * 8));
      o.push_back(jit::make_gpr(Op::mov_load, kBlockCnt, -1, 0, arg(offsetof(KernelArgs, n_blocks))));
      if (!c_.facc_in_mem) {
        for (int v : c_.facc) o.push_back(jit::make_alu(Op::vpxord, v, v, v, kYw));
      } else {
        const int z = tmp(0);
        o.push_back(jit::make_alu(Op::vpxord, z, z, z, kYw));
        for (int i = 0; i < R * P_ * 2; ++i) o.push_back(jit::make_store(z, mem(kScratchReg, int64_t(i) * 32, kScratch), kYw));
      }
      o.push_back(loop_marker(Op::loop_begin, kBlockCnt, c_.inner_loop ? 0 : align));
      auto hot = hot_body();
      apply_genome(c_.genome, hot, kW[0], kW[R - 1], kXReg);
      if (c_.inner_loop) {
        init_accs(o);
        o.push_back(jit::make_gpr(Op::mov_imm, kInnerCnt, -1, c_.steps_per_block / c_.unroll));
        o.push_back(loop_marker(Op::loop_begin, kInnerCnt, align));
        if (pass == 0) p.hot_begin = o.size();
        o.insert(o.end(), hot.begin(), hot.end());
        if (pass == 0) p.hot_end = o.size();
        for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_imm, kW[r], -1, int64_t(c_.unroll) * c_.step_bytes));
        o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, int64_t(c_.unroll) * c_.k_per_step));
        o.push_back(loop_marker(Op::loop_end, kInnerCnt, 0));
        fold(o, 0);
        for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_imm, kW[r], -1, 64));
        if (x_block != c_.blocksize) o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, x_block - c_.blocksize));
      } else {
        if (pass == 0) p.hot_begin = o.size();
        o.insert(o.end(), hot.begin(), hot.end());
        if (pass == 0) p.hot_end = o.size();
        for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_imm, kW[r], -1, rec));
        o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, x_block));
      }
      o.push_back(jit::make_gpr(Op::add_imm, kXauxReg, -1, int64_t(T) * 8));
      o.push_back(loop_marker(Op::loop_end, kBlockCnt, 0));
      if (c_.genome.fault == Fault::wrong_result && pass == 0) {
        const int v = c_.facc_in_mem ? tmp(1) : facc(0, 0, 0);
        if (c_.facc_in_mem) o.push_back(jit::make_load(Op::vload, v, mem(kScratchReg, 0, kScratch), kYw));
        o.push_back(jit::make_alu(Op::vaddps, v, v, v, kYw));
        if (c_.facc_in_mem) o.push_back(jit::make_store(v, mem(kScratchReg, 0, kScratch), kYw));
      }
      // y rows of tokens t0 .. t0 + P - 1 (kInnerCnt is free here)
      o.push_back(jit::make_gpr(Op::mov_reg, kInnerCnt, kYReg, 0));
      for (int t = 0; t < t0; ++t) o.push_back(jit::make_gpr(Op::add_reg, kInnerCnt, kYStride, 0));
      for (int t = 0; t < P_; ++t) {
        for (int r = 0; r < R; ++r)
          for (int h = 0; h < 2; ++h) {
            int v;
            if (!c_.facc_in_mem) {
              v = facc(r, t, h);
            } else {
              v = tmp(1);
              o.push_back(jit::make_load(Op::vload, v, mem(kScratchReg, scratch_off(r, t, h), kScratch), kYw));
            }
            o.push_back(jit::make_store(v, mem(kInnerCnt, int64_t(r) * 64 + 32 * h, kY), kYw));
          }
        if (t + 1 < P_) o.push_back(jit::make_gpr(Op::add_reg, kInnerCnt, kYStride, 0));
      }
      if (pass + 1 < passes) {  // back to the tile's first block for the next tokens
        o.push_back(jit::make_gpr(Op::mov_load, kInnerCnt, -1, 0, arg(offsetof(KernelArgs, rewind))));
        for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_reg, kW[r], kInnerCnt, 0));
      }
    }
    o.push_back(jit::make_gpr(Op::add_imm, kYReg, -1, int64_t(R) * 64));
    if (R > 1) {
      o.push_back(jit::make_gpr(Op::mov_load, kInnerCnt, -1, 0, arg(offsetof(KernelArgs, tile_advance))));
      for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_reg, kW[r], kInnerCnt, 0));
    }
    o.push_back(loop_marker(Op::loop_end, kTileCnt, 0));
    p.saved_gprs = {jit::kGprBase + 3, jit::kGprBase + 5, jit::kGprBase + 12, jit::kGprBase + 13, jit::kGprBase + 14,
                    jit::kGprBase + 15};
    return p;
  }

 private:
  const Conf& c_;
  const int P_;
  const bool vnni_;
};

}  // namespace

Conf make_conf_avx2(const Problem& problem, const Genome& genome) {
  const bool vnni = genome.path == Path::avx2_vnni;
  Conf c;
  c.problem = problem;
  c.genome = genome;
  c.path = genome.path;
  c.tokens = problem.tokens;
  c.blocksize = problem.blocksize;
  c.k_per_step = 8, c.step_bytes = 64, c.x_elem = 1;
  c.steps_per_block = c.blocksize / c.k_per_step;
  const int want = genome.unroll == 0 ? std::min(c.steps_per_block, 16) : std::min(genome.unroll, c.steps_per_block);
  c.unroll = 1;
  for (int u = want; u >= 1; --u)
    if (c.steps_per_block % u == 0) {
      c.unroll = u;
      break;
    }
  c.inner_loop = c.unroll < c.steps_per_block;
  c.bcast_reg = true;
  // Most tokens per pass (a divisor of the tokens, so that every pass runs the same body), then the genome's row
  // groups and accumulators as far as 16 registers allow, fp32 accumulators in registers where they fit.
  const int T = c.tokens, budget = 16 - fixed_regs(vnni);
  bool found = false;
  for (int P = std::min(T, 8); P >= 1 && !found; --P) {
    if (T % P != 0) continue;
    for (int R = genome.row_groups; R >= 1 && !found; --R)
      for (int A = genome.accs; A >= 1 && !found; --A)
        for (int m = 0; m <= 1 && !found; ++m) {
          const int used = 2 * R * P * A + (m ? 0 : 2 * R * P);
          if (used > budget) continue;
          c.pass_tokens = P, c.R = R, c.A = A, c.facc_in_mem = m;
          found = true;
        }
  }
  if (!found) fail("nf4_gemv: no register assignment for {} tokens on path {}", T, path_name(c.path));
  const int used = 2 * c.R * c.pass_tokens * c.A + (c.facc_in_mem ? 0 : 2 * c.R * c.pass_tokens);
  const int per_set = vnni ? 2 : 4;
  c.temp_sets = budget - used >= per_set + 2 ? 2 : 1;
  int next = 0;
  c.ctab = next++;
  c.cmask = next++;
  for (int i = 0; i < 2 * c.temp_sets; ++i) c.xb.push_back(next++);
  for (int i = 0; i < per_set * c.temp_sets; ++i) c.temps.push_back(next++);
  for (int i = 0; i < 2 * c.R * c.pass_tokens * c.A; ++i) c.acc.push_back(next++);
  if (!c.facc_in_mem)
    for (int i = 0; i < 2 * c.R * c.pass_tokens; ++i) c.facc.push_back(next++);
  c.vregs_used = next;
  if (next > 16) fail("nf4_gemv: {} vector registers planned for {} ({} tokens)", next, kernel_id(genome), T);
  c.id = fmt::format("{}_t{}_bs{}", kernel_id(genome), T, c.blocksize);
  return c;
}

std::vector<jit::Instr> canonical_body_avx2(const Conf& conf) {
  Conf plain = conf;
  plain.genome.order.clear();
  plain.genome.hints.clear();
  plain.genome.alt.clear();
  return Builder2(plain).hot_body();
}

jit::Program build_avx2(const Conf& conf) { return Builder2(conf).program(); }

}  // namespace genesis::kernels::nf4_gemv
