// build(): writes the IR of one JIT nf4_gemv kernel from its Conf. Loop structure:
//   tile loop (R groups of 16 rows) { block loop { [step loop] { HOT } } store y }
// The HOT region (the innermost loop's body) is what a genome reorders and decorates with hints.
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

// Memory streams (for def/use): the kernel never writes what it reads, so only y/scratch carry write edges.
enum StreamId { kArgs = 0, kWeights = 1, kX = 2, kXaux = 3, kY = 4, kScratch = 5, kConsts = 6 };

// General-purpose register plan (System V: rdi = &KernelArgs).
constexpr int kArgsReg = jit::kGprBase + 7;                                                        // rdi
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

Mem mem(int base, int64_t disp, int stream, bool bcast = false) {
  if (disp < INT32_MIN || disp > INT32_MAX) fail("nf4_gemv: displacement {} does not fit 32 bits", disp);
  Mem m;
  m.base = base;
  m.disp = int32_t(disp);
  m.stream = stream;
  m.bcast = bcast;
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

}  // namespace

namespace {

class Builder {
 public:
  explicit Builder(const Conf& c) : c_(c), T_(c.tokens) {}

  int acc(int r, int t, int a) const { return c_.acc[size_t((r * T_ + t) * c_.A + a)]; }
  int tmp(int set, int j) const { return c_.temps[size_t(2 * (set % c_.temp_sets) + j)]; }

  // Activation operand of token t for step s (within the current HOT body) and half h.
  Mem x_mem(int t, int s, int h) const {
    const int64_t k = int64_t(s) * c_.k_per_step + h * (c_.k_per_step / 2);
    return mem(kXReg, (int64_t(t) * c_.blocksize + k) * c_.x_elem, kX, true);
  }

  void init_accs(std::vector<Instr>& out) const {
    for (int r = 0; r < c_.R; ++r)
      for (int t = 0; t < T_; ++t)
        for (int a = 0; a < c_.A; ++a) {
          const int v = acc(r, t, a);
          if (c_.path == Path::avx512_vnni && a == 0)  // start from the u8-offset correction, -128 * sum(x)
            out.push_back(jit::make_load(Op::vbcast_d, v, mem(kXauxReg, t * 8, kXaux)));
          else
            out.push_back(jit::make_alu(Op::vpxord, v, v, v));
        }
  }

  void steps(std::vector<Instr>& out, int n_steps) const {
    for (int s = 0; s < n_steps; ++s) {
      const int64_t ds = int64_t(s) * c_.step_bytes;
      if (c_.bcast_reg)
        for (int t = 0; t < T_; ++t)
          for (int h = 0; h < 2; ++h) {
            Mem m = x_mem(t, s, h);
            m.bcast = false;
            out.push_back(jit::make_load(Op::vbcast_d, c_.xb[size_t(t * 2 + h)], m));
          }
      for (int r = 0; r < c_.R; ++r) {
        const int set = s * c_.R + r;
        const int t0 = tmp(set, 0), t1 = tmp(set, 1);
        if (c_.genome.pf_dist > 0 && ds % 64 == 0)
          out.push_back(jit::make_hint(prefetch_op(c_.genome.pf_kind), mem(kW[r], ds + c_.genome.pf_dist, -1)));
        const Mem wm = mem(kW[r], ds, kWeights);
        Op dot = Op::vpdpbusd;
        switch (c_.path) {
          case Path::avx512_vnni:
            if (c_.genome.lut_permb) {  // 64-entry table indexed by 6 bits: the nibble masks disappear
              out.push_back(jit::make_load(Op::vload, t0, wm));
              out.push_back(jit::make_alu(Op::vpermb, t1, t0, c_.ctab));
              out.push_back(jit::make_shift(Op::vpsrlw_imm, t0, t0, 4));
              out.push_back(jit::make_alu(Op::vpermb, t0, t0, c_.ctab));
              dot = Op::vpdpbusd;
              break;
            }
            out.push_back(jit::make_load(Op::vload, t0, wm));
            out.push_back(jit::make_alu(Op::vpandd, t1, t0, c_.cmask));
            out.push_back(jit::make_shift(Op::vpsrlw_imm, t0, t0, 4));
            out.push_back(jit::make_alu(Op::vpandd, t0, t0, c_.cmask));
            out.push_back(jit::make_alu(Op::vpshufb, t1, c_.ctab, t1));
            out.push_back(jit::make_alu(Op::vpshufb, t0, c_.ctab, t0));
            dot = Op::vpdpbusd;
            break;
          case Path::avx512_fp32:
            out.push_back(jit::make_load(Op::vzx_b2d, t0, wm));
            out.push_back(jit::make_alu(Op::vpermps, t1, t0, c_.ctab));
            out.push_back(jit::make_shift(Op::vpsrld_imm, t0, t0, 4));
            out.push_back(jit::make_alu(Op::vpermps, t0, t0, c_.ctab));
            dot = Op::vfmadd231ps;
            break;
          case Path::avx512_bf16:
            out.push_back(jit::make_load(Op::vzx_b2w, t0, wm));
            out.push_back(jit::make_alu(Op::vpermw, t1, t0, c_.ctab));
            out.push_back(jit::make_shift(Op::vpsrlw_imm, t0, t0, 4));
            out.push_back(jit::make_alu(Op::vpermw, t0, t0, c_.ctab));
            dot = Op::vdpbf16ps;
            break;
          default: fail("nf4_gemv: path {} has no JIT builder", path_name(c_.path));
        }
        const int a = s % c_.A;
        for (int t = 0; t < T_; ++t)
          for (int h = 0; h < 2; ++h) {
            const int lane_src = h == 0 ? t1 : t0;
            if (c_.bcast_reg)
              out.push_back(jit::make_alu(dot, acc(r, t, a), lane_src, c_.xb[size_t(t * 2 + h)]));
            else
              out.push_back(jit::make_alu_mem(dot, acc(r, t, a), lane_src, x_mem(t, s, h)));
          }
      }
    }
  }

  // Block epilogue: reduce the accumulators, scale by absmax (and the int8 activation scale), accumulate.
  void fold(std::vector<Instr>& out, int64_t scales_disp) const {
    const bool ints = c_.path == Path::avx512_vnni;
    for (int r = 0; r < c_.R; ++r)
      for (int t = 0; t < T_; ++t) {
        const int a0 = acc(r, t, 0);
        for (int a = 1; a < c_.A; ++a) out.push_back(jit::make_alu(ints ? Op::vpaddd : Op::vaddps, a0, a0, acc(r, t, a)));
        if (ints) {
          out.push_back(jit::make_alu(Op::vcvtdq2ps, a0, a0, -1));
          out.push_back(jit::make_alu_mem(Op::vmulps, a0, a0, mem(kXauxReg, t * 8 + 4, kXaux, true)));
        }
        const Mem sm = mem(kW[r], scales_disp, kWeights);
        if (!c_.facc_in_mem) {
          out.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.facc[size_t(r * T_ + t)], a0, sm));
        } else {
          const int x = tmp(r * T_ + t, 0);
          const Mem acc_m = mem(kScratchReg, int64_t(r * T_ + t) * 64, kScratch);
          out.push_back(jit::make_load(Op::vload, x, acc_m));
          out.push_back(jit::make_alu_mem(Op::vfmadd231ps, x, a0, sm));
          out.push_back(jit::make_store(x, acc_m));
        }
      }
  }

  void apply_genome(std::vector<Instr>& body) const { nf4_gemv::apply_genome(c_.genome, body, kW[0], kW[c_.R - 1], kXReg); }

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

  jit::Program program() const {
    jit::Program p;
    p.name = c_.id;
    auto& o = p.code;
    const int R = c_.R;
    const int64_t rec = int64_t(c_.steps_per_block) * c_.step_bytes + 64;
    // prologue: constants, pointers
    o.push_back(jit::make_gpr(Op::mov_load, kTmp, -1, 0, arg(offsetof(KernelArgs, consts))));
    o.push_back(jit::make_load(Op::vload, c_.ctab, mem(kTmp, int64_t(consts_table_offset(c_.path)), kConsts)));
    if (c_.cmask >= 0) o.push_back(jit::make_load(Op::vload, c_.cmask, mem(kTmp, int64_t(consts_mask_offset()), kConsts)));
    o.push_back(jit::make_gpr(Op::mov_load, kW[0], -1, 0, arg(offsetof(KernelArgs, w))));
    if (R > 1) o.push_back(jit::make_gpr(Op::mov_load, kTmp, -1, 0, arg(offsetof(KernelArgs, group_bytes))));
    for (int r = 1; r < R; ++r) {
      o.push_back(jit::make_gpr(Op::mov_reg, kW[r], kW[r - 1], 0));
      o.push_back(jit::make_gpr(Op::add_reg, kW[r], kTmp, 0));
    }
    o.push_back(jit::make_gpr(Op::mov_load, kYReg, -1, 0, arg(offsetof(KernelArgs, y))));
    o.push_back(jit::make_gpr(Op::mov_load, kYStride, -1, 0, arg(offsetof(KernelArgs, y_stride))));
    o.push_back(jit::make_gpr(Op::mov_load, kTileCnt, -1, 0, arg(offsetof(KernelArgs, n_tiles))));
    o.push_back(jit::make_gpr(Op::mov_load, kScratchReg, -1, 0, arg(offsetof(KernelArgs, scratch))));
    plant_fault(o);
    // tile loop
    o.push_back(loop_begin(kTileCnt, 0));
    o.push_back(jit::make_gpr(Op::mov_load, kXReg, -1, 0, arg(offsetof(KernelArgs, x))));
    o.push_back(jit::make_gpr(Op::mov_load, kXauxReg, -1, 0, arg(offsetof(KernelArgs, xaux))));
    o.push_back(jit::make_gpr(Op::mov_load, kBlockCnt, -1, 0, arg(offsetof(KernelArgs, n_blocks))));
    if (!c_.facc_in_mem) {
      for (int v : c_.facc) o.push_back(jit::make_alu(Op::vpxord, v, v, v));
    } else {
      const int z = tmp(0, 0);
      o.push_back(jit::make_alu(Op::vpxord, z, z, z));
      for (int i = 0; i < R * T_; ++i) o.push_back(jit::make_store(z, mem(kScratchReg, int64_t(i) * 64, kScratch)));
    }
    const int align = c_.genome.loop_align;
    o.push_back(loop_begin(kBlockCnt, c_.inner_loop ? 0 : align));
    const int64_t x_block = int64_t(T_) * c_.blocksize * c_.x_elem;
    if (c_.inner_loop) {
      init_accs(o);
      o.push_back(jit::make_gpr(Op::mov_imm, kInnerCnt, -1, c_.steps_per_block / c_.unroll));
      o.push_back(loop_begin(kInnerCnt, align));
      p.hot_begin = o.size();
      auto hot = hot_body();
      apply_genome(hot);
      o.insert(o.end(), hot.begin(), hot.end());
      p.hot_end = o.size();
      for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_imm, kW[r], -1, int64_t(c_.unroll) * c_.step_bytes));
      o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, int64_t(c_.unroll) * c_.k_per_step * c_.x_elem));
      o.push_back(loop_end(kInnerCnt));
      fold(o, 0);
      for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_imm, kW[r], -1, 64));
      if (T_ > 1) o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, x_block - int64_t(c_.blocksize) * c_.x_elem));
    } else {
      p.hot_begin = o.size();
      auto hot = hot_body();
      apply_genome(hot);
      o.insert(o.end(), hot.begin(), hot.end());
      p.hot_end = o.size();
      for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_imm, kW[r], -1, rec));
      o.push_back(jit::make_gpr(Op::add_imm, kXReg, -1, x_block));
    }
    o.push_back(jit::make_gpr(Op::add_imm, kXauxReg, -1, int64_t(T_) * 8));
    o.push_back(loop_end(kBlockCnt));
    // store y for every token, then advance to the next tile
    if (c_.genome.fault == Fault::wrong_result) {
      const int v = c_.facc_in_mem ? tmp(0, 0) : c_.facc[0];
      if (c_.facc_in_mem) o.push_back(jit::make_load(Op::vload, v, mem(kScratchReg, 0, kScratch)));
      o.push_back(jit::make_alu(Op::vaddps, v, v, v));
      if (c_.facc_in_mem) o.push_back(jit::make_store(v, mem(kScratchReg, 0, kScratch)));
    }
    o.push_back(jit::make_gpr(Op::mov_reg, kTmp, kYReg, 0));
    for (int t = 0; t < T_; ++t) {
      for (int r = 0; r < R; ++r) {
        int v;
        if (!c_.facc_in_mem) {
          v = c_.facc[size_t(r * T_ + t)];
        } else {
          v = tmp(r * T_ + t, 1);
          o.push_back(jit::make_load(Op::vload, v, mem(kScratchReg, int64_t(r * T_ + t) * 64, kScratch)));
        }
        o.push_back(jit::make_store(v, mem(kTmp, int64_t(r) * 64, kY)));
      }
      if (t + 1 < T_) o.push_back(jit::make_gpr(Op::add_reg, kTmp, kYStride, 0));
    }
    o.push_back(jit::make_gpr(Op::add_imm, kYReg, -1, int64_t(R) * 64));
    if (R > 1) {
      o.push_back(jit::make_gpr(Op::mov_load, kTmp, -1, 0, arg(offsetof(KernelArgs, tile_advance))));
      for (int r = 0; r < R; ++r) o.push_back(jit::make_gpr(Op::add_reg, kW[r], kTmp, 0));
    }
    o.push_back(loop_end(kTileCnt));
    p.saved_gprs = {jit::kGprBase + 3, jit::kGprBase + 5, jit::kGprBase + 12, jit::kGprBase + 13, jit::kGprBase + 14,
                    jit::kGprBase + 15};
    return p;
  }

 private:
  static Instr loop_begin(int counter, int align) {
    Instr i;
    i.op = Op::loop_begin;
    i.dst = counter;
    i.imm = align;
    return jit::finalize(i);
  }
  static Instr loop_end(int counter) {
    Instr i;
    i.op = Op::loop_end;
    i.dst = counter;
    return jit::finalize(i);
  }

  // Test-only planted faults: the factory's sandbox must survive and classify each of them.
  void plant_fault(std::vector<Instr>& o) const {
    switch (c_.genome.fault) {
      case Fault::crash:  // load from address 0: SIGSEGV
        o.push_back(jit::make_gpr(Op::mov_imm, kFaultReg, -1, 0));
        o.push_back(jit::make_gpr(Op::mov_load, kFaultReg, -1, 0, mem(kFaultReg, 0, -1)));
        break;
      case Fault::hang:  // a counter starting at 0 runs 2^64 iterations
        o.push_back(jit::make_gpr(Op::mov_imm, kFaultReg, -1, 0));
        o.push_back(loop_begin(kFaultReg, 0));
        o.push_back(loop_end(kFaultReg));
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

  const Conf& c_;
  const int T_;
};

}  // namespace

void apply_genome(const Genome& g, std::vector<Instr>& body, int w_first, int w_last, int x_reg) {
  for (auto i : g.alt) {
    if (i >= body.size() || !jit::has_alternative(body[i]))
      fail("nf4_gemv: genome {} replaces body instruction {}, which {}", kernel_id(g), i,
           i >= body.size() ? fmt::format("does not exist (the body has {})", body.size())
                            : fmt::format("({}) has no same-class equivalent", body[i].text()));
    body[i] = jit::alternative(body[i]);
  }
  jit::apply_order(body, g.order, fmt::format("nf4_gemv: genome {}", kernel_id(g)));
  if (g.hints.empty()) return;
  std::vector<Hint> hints = g.hints;
  std::stable_sort(hints.begin(), hints.end(), [](const Hint& a, const Hint& b) { return a.pos < b.pos; });
  std::vector<Instr> out;
  size_t h = 0;
  for (size_t p = 0; p <= body.size(); ++p) {
    for (; h < hints.size() && size_t(hints[h].pos) == p; ++h) {
      const Hint& x = hints[h];
      if (x.kind == HintKind::nop) {
        out.push_back(jit::make_nop(x.offset));
      } else {
        const int base = x.stream == Stream::activations ? x_reg : x.stream == Stream::scales ? w_last : w_first;
        out.push_back(jit::make_hint(prefetch_op(x.kind), mem(base, x.offset, -1)));
      }
    }
    if (p < body.size()) out.push_back(body[p]);
  }
  if (h < hints.size())
    fail("nf4_gemv: genome {} has a hint at position {} past the body's end ({})", kernel_id(g), hints[h].pos,
         body.size());
  body = std::move(out);
}

std::vector<jit::Instr> canonical_body(const Conf& conf) {
  if (is_avx2_jit(conf.path)) return canonical_body_avx2(conf);
  Conf plain = conf;
  plain.genome.order.clear();
  plain.genome.hints.clear();
  plain.genome.alt.clear();
  return Builder(plain).hot_body();
}

jit::Program build(const Conf& conf) { return is_avx2_jit(conf.path) ? build_avx2(conf) : Builder(conf).program(); }

}  // namespace genesis::kernels::nf4_gemv
