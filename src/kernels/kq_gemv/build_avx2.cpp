// The AVX2 kernels (paths avx2 and avx2vnni): the same records, activation records and semantics as the AVX-512
// kernels (build.cpp), in ymm registers with VEX encodings only, 16 vector registers, no masks, no embedded
// broadcasts, no vpternlogd / vpsrlvw. Loop structure as there:
//   row loop { load the fp32 lanes (8 per activation row); unit loop { HOT }; store them }
// HOT, per 32 stored code bytes (one ymm): the low and the high nibbles are two vectors of 32 codes, each one
// sub-block of a K-quant (two of Q6_K's 16-element sub-blocks), so its int16 scale is one vpshufb of the broadcast
// scale bytes; the high bits (Q5_K, Q6_K) come from the stored qh by one shift by an immediate, vpand and vpor.
// Then per activation row: vpmaddubsw (u8 codes x s8 activations -> int16 pairs) and
//   avx2vnni: {vex} vpdpwssd acc, pairs, scales          (legacy: {vex} vpdpbusd acc, codes, x)
//   avx2:     vpmaddwd pairs, pairs, scales; vpaddd acc   (Q4_K / Q5_K: several vectors' pairs summed as int16
//             words first, one scale vector a unit; legacy: a unit's pairs summed as int16 words, vpaddw, then one
//             vpmaddwd by ones; Q8_0 codes split in nibbles, two such sums)
// The decode is shared by the activation rows of a pass; their accumulators (int32 and fp32, 2 registers per row)
// live in registers, so a kernel takes at most max_tokens() rows (the driver runs more in passes).
// The fold per unit and activation row is the AVX-512 kernels': vcvtdq2ps, times d, minus the mins' term (Q4_K, Q5_K),
// vfmadd231ps into the lanes with the activation scale (broadcast by vpbroadcastd: there is no {1to8} in VEX).
#include <fmt/format.h>

#include <algorithm>
#include <cstddef>

#include "common/error.h"
#include "kernels/kq_gemv/build.h"
#include "kernels/kq_gemv/layout.h"

namespace genesis::kernels::kq_gemv {

using jit::Instr;
using jit::Mem;
using jit::Op;
using namespace kconst;

namespace {

enum StreamId { kArgs = 0, kW = 1, kX = 2, kOut = 3, kConsts = 4 };

constexpr int kArgsReg = jit::kGprBase + 7;   // rdi
constexpr int kWReg = jit::kGprBase + 8;      // r8
constexpr int kCReg = jit::kGprBase + 9;      // r9: constants
constexpr int kXReg = jit::kGprBase + 6;      // rsi
constexpr int kOutReg = jit::kGprBase + 1;    // rcx
constexpr int kUnitCnt = jit::kGprBase + 0;   // rax
constexpr int kRowCnt = jit::kGprBase + 2;    // rdx
constexpr int kSkipReg = jit::kGprBase + 10;  // r10: w_skip
constexpr int kXStride = jit::kGprBase + 11;  // r11: x_stride
constexpr int kY = 32;                        // ymm width in bytes

Mem mem(int base, int64_t disp, int stream) {
  if (disp < INT32_MIN || disp > INT32_MAX) fail("kq_gemv: displacement {} does not fit 32 bits", disp);
  Mem m;
  m.base = base;
  m.disp = int32_t(disp);
  m.stream = stream;
  return m;
}
Mem arg(size_t off) { return mem(kArgsReg, int64_t(off), kArgs); }
Mem cst(int off) { return mem(kCReg, off, kConsts); }

Instr loop_marker(Op op, int counter, int align) {
  Instr i;
  i.op = op;
  i.dst = counter;
  i.imm = align;
  return jit::finalize(i);
}

// Registers besides the two per activation row.
int fixed_regs(Format f) {
  if (is_k_quant(f)) return 7 + (f == Format::q4_k ? 0 : 1);  // lo, hi, scl, sch, sb, p, mask (+ qh)
  return 4;                                                     // lo, hi, p, mask
}

class Builder2 {
 public:
  explicit Builder2(const Conf& c) : c_(c), f_(c.format), T_(c.tokens), vnni_(c.path == Path::avx2vnni) {}

  Mem wm(int64_t off) const { return mem(kWReg, off, kW); }
  Mem xm(int t, int64_t off) const { return mem(kXReg, t * kTokenRecord + off, kX); }
  int lo() const { return c_.c[0]; }
  int hi() const { return c_.c[1]; }
  int mask() const { return c_.const_regs[0].second; }

  // raw = 32 stored bytes at off; lo = their low nibbles, hi = their high nibbles.
  void nibbles(std::vector<Instr>& o, int64_t off) const {
    o.push_back(jit::make_load(Op::vload, hi(), wm(off), kY));
    o.push_back(jit::make_alu(Op::vpandd, lo(), hi(), mask(), kY));
    o.push_back(jit::make_shift(Op::vpsrlw_imm, hi(), hi(), 4, kY));
    o.push_back(jit::make_alu(Op::vpandd, hi(), hi(), mask(), kY));
  }

  // code |= ((qh shifted left by `shift`, right if negative) & mask constant): the stored high bits at bit 4 (5).
  // Word shifts are exact here: the bits a shift carries across a byte boundary land outside the mask.
  void high_bits(std::vector<Instr>& o, int code, int shift, int mask_off) const {
    const int p = c_.p;
    int src = c_.qh;
    if (shift > 0) {
      o.push_back(jit::make_shift(Op::vpsllw_imm, p, c_.qh, shift, kY));
      src = p;
    } else if (shift < 0) {
      o.push_back(jit::make_shift(Op::vpsrlw_imm, p, c_.qh, -shift, kY));
      src = p;
    }
    o.push_back(jit::make_alu_mem(Op::vpandd, p, src, cst(mask_off), kY));
    o.push_back(jit::make_alu(Op::vpor, code, code, p, kY));
  }

  // acc (+)= pairs * scale words, int32. `first` writes acc instead of adding.
  void scaled(std::vector<Instr>& o, int acc, int pairs, int scale, bool first) const {
    if (first) {
      o.push_back(jit::make_alu(Op::vpmaddwd, acc, pairs, scale, kY));
    } else if (vnni_) {
      Instr i = jit::make_alu(Op::vpdpwssd, acc, pairs, scale, kY);
      i.vex = true;
      o.push_back(i);
    } else {
      o.push_back(jit::make_alu(Op::vpmaddwd, pairs, pairs, scale, kY));
      o.push_back(jit::make_alu(Op::vpaddd, acc, acc, pairs, kY));
    }
  }

  // For each activation row: the codes in `code` (one sub-block, scale words in `scale`) against x at x_off.
  void k_products(std::vector<Instr>& o, int code, int scale, int64_t x_off, bool first) const {
    for (int t = 0; t < T_; ++t) {
      o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, code, xm(t, x_off), kY));
      scaled(o, c_.s[size_t(t)], c_.p, scale, first);
    }
  }

  // lanes += acc * (activation scale at x_scale_off, broadcast)
  void fold(std::vector<Instr>& o, int t, int x_scale_off) const {
    o.push_back(jit::make_load(Op::vbcast_d, c_.p, xm(t, x_scale_off), kY));
    o.push_back(jit::make_alu(Op::vfmadd231ps, c_.f[size_t(t)], c_.s[size_t(t)], c_.p, kY));
  }

  void half_to_float(std::vector<Instr>& o, Op bcast, int v, int64_t off) const {
    o.push_back(jit::make_load(bcast, v, wm(off), kY));
    o.push_back(jit::make_alu(Op::vcvtph2ps, v, v, -1, kY));
  }

  // avx2 (no VNNI), Q4_K / Q5_K: every code vector's word w belongs to sub-block w / 2 (the records' lane order), so
  // one scale vector serves the unit, and the vpmaddubsw pairs of several vectors are summed as int16 words (vpaddw)
  // before one vpmaddwd by the scales: all 8 vectors of a Q4_K unit (codes <= 15, |x| <= 128: a pair at most 3840,
  // eight 30720, no wrap), Q5_K's two of each 32 code bytes (codes <= 31: two pairs 15872). Exact integer sums, so the
  // bits of a vpmaddwd per vector; per unit and activation row Q4_K takes 16 multiply and add instructions instead of
  // 23, and the unit 1 vpshufb instead of 8.
  void products_q4k_q5k_sum16(std::vector<Instr>& o) const {
    const int co = layout::codes_offset(f_);
    const int scl = c_.sc[0], t2 = c_.sc[1];
    const bool q4 = f_ == Format::q4_k;
    o.push_back(jit::make_load(Op::vbcast_q, c_.sb, wm(4), kY));  // the 8 scale bytes in every qword
    if (!q4) o.push_back(jit::make_load(Op::vload, c_.qh, wm(20), kY));
    o.push_back(jit::make_alu_mem(Op::vpshufb, scl, c_.sb, cst(kIdxKL), kY));  // word w: sub-block w / 2
    for (int g = 0; g < 4; ++g) {
      const int64_t xl = 128 * (g / 2) + 32 * (g % 2), xh = xl + 64;
      nibbles(o, co + 32 * g);
      if (!q4) {
        high_bits(o, lo(), 4 - 2 * g, kMask10Y);
        high_bits(o, hi(), 3 - 2 * g, kMask10Y);
      }
      for (int t = 0; t < T_; ++t) {
        const int S = c_.s[size_t(t)];
        if (q4) {  // S: the unit's int16 sums, scaled after the last vector
          if (g == 0) {
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, S, lo(), xm(t, xl), kY));
          } else {
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, lo(), xm(t, xl), kY));
            o.push_back(jit::make_alu(Op::vpaddw, S, S, c_.p, kY));
          }
          o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, hi(), xm(t, xh), kY));
          o.push_back(jit::make_alu(Op::vpaddw, S, S, c_.p, kY));
          if (g == 3) o.push_back(jit::make_alu(Op::vpmaddwd, S, S, scl, kY));
        } else {  // the two vectors' int16 sums scaled into S
          o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, lo(), xm(t, xl), kY));
          o.push_back(jit::make_alu_mem(Op::vpmaddubsw, t2, hi(), xm(t, xh), kY));
          o.push_back(jit::make_alu(Op::vpaddw, c_.p, c_.p, t2, kY));
          scaled(o, S, c_.p, scl, g == 0);
        }
      }
    }
  }

  // avx2vnni, Q4_K / Q5_K: per code vector vpmaddubsw and {vex} vpdpwssd by its scale words (S = sum_j sc_j s_j).
  void products_q4k_q5k_vnni(std::vector<Instr>& o) const {
    const int co = layout::codes_offset(f_);
    const int scl = c_.sc[0], sch = c_.sc[1];
    o.push_back(jit::make_load(Op::vbcast_q, c_.sb, wm(4), kY));  // the 8 scale bytes in every qword
    if (f_ == Format::q5_k) o.push_back(jit::make_load(Op::vload, c_.qh, wm(20), kY));
    for (int g = 0; g < 4; ++g) {
      // record code bytes 32g..32g+31: low nibbles = code vector 2 (g / 2) bytes 32 (g % 2).., high = vector
      // 2 (g / 2) + 1; their activations sit at the same offsets; word w's sub-block is lane (w / 2) % 8 (kIdxKL)
      const int64_t xl = 128 * (g / 2) + 32 * (g % 2), xh = xl + 64;
      nibbles(o, co + 32 * g);
      if (f_ == Format::q5_k) {  // packed position e's high bit is bit e/32 of qh[e % 32]: bits 2g, 2g+1 -> bit 4
        high_bits(o, lo(), 4 - 2 * g, kMask10Y);
        high_bits(o, hi(), 3 - 2 * g, kMask10Y);
      }
      const int idx = kIdxKL;  // word w's sub-block is (w / 2) % 8 (the records' lane order)
      o.push_back(jit::make_alu_mem(Op::vpshufb, scl, c_.sb, cst(int(idx + xl)), kY));
      o.push_back(jit::make_alu_mem(Op::vpshufb, sch, c_.sb, cst(int(idx + xh)), kY));
      k_products(o, lo(), scl, xl, g == 0);
      k_products(o, hi(), sch, xh, false);
    }
  }

  void unit_q4k_q5k(std::vector<Instr>& o) const {
    const int scl = c_.sc[0];
    if (vnni_) products_q4k_q5k_vnni(o);
    else products_q4k_q5k_sum16(o);
    // d, dmin * m_j (lanes j = 0..7), then per activation row d S - sum_j (dmin m_j) sums_j, times the row's scale
    half_to_float(o, Op::vbcast_w, lo(), 0);
    half_to_float(o, Op::vbcast_w, hi(), 2);
    o.push_back(jit::make_load(Op::vzx_b2d, scl, wm(12), kY));
    o.push_back(jit::make_alu(Op::vcvtdq2ps, scl, scl, -1, kY));
    o.push_back(jit::make_alu(Op::vmulps, scl, scl, hi(), kY));
    for (int t = 0; t < T_; ++t) {
      const int S = c_.s[size_t(t)];
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1, kY));
      o.push_back(jit::make_alu(Op::vmulps, S, S, lo(), kY));
      o.push_back(jit::make_alu_mem(Op::vfnmadd231ps, S, scl, xm(t, layout::kXSums32), kY));
      fold(o, t, layout::kXScale);
    }
  }

  void unit_q6k(std::vector<Instr>& o) const {
    const int scl = c_.sc[0];
    // S starts from -32 sum_j sc_j bsum_j (the 16 scales sign-extended to words, times -32)
    o.push_back(jit::make_load(Op::vsx_b2w, lo(), wm(192), kY));
    o.push_back(jit::make_alu_mem(Op::vpmullw, lo(), lo(), cst(kNeg32), kY));
    for (int t = 0; t < T_; ++t)
      o.push_back(jit::make_alu_mem(Op::vpmaddwd, c_.s[size_t(t)], lo(), xm(t, layout::kXBs16), kY));
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 2; ++s) {
        // qh bytes 32 s ..: bits 2c of byte i are the high bits of vector c's byte 32 s + i (layout.cpp
        // q6_qh_relayout); here vectors 2 h (low nibbles) and 2 h + 1 (high)
        o.push_back(jit::make_load(Op::vload, c_.qh, wm(128 + 32 * s), kY));
        // code bytes 32 s .. 32 s + 31 of each vector: dword lanes 8 s .. 8 s + 7, i.e. sub-blocks 8 s + w / 2 for
        // word w (the record's layout), in both the low and the high nibbles' vector
        o.push_back(jit::make_load(Op::vbcast_q, c_.sb, wm(192 + 8 * s), kY));
        // ql bytes 64h + 32s..: low nibbles = positions 128h + 32s + l (quarter s), high = quarter 2 + s;
        // vector c's high bits are bits 2c, 2c+1 of qh -> bits 4, 5
        const int64_t xl = 128 * h + 32 * s, xh = xl + 64;
        nibbles(o, 64 * h + 32 * s);
        high_bits(o, lo(), 4 - 2 * (2 * h), kMask30Y);
        high_bits(o, hi(), 4 - 2 * (2 * h + 1), kMask30Y);
        o.push_back(jit::make_alu_mem(Op::vpshufb, scl, c_.sb, cst(kIdx6L), kY));
        o.push_back(jit::make_shift(Op::vpsraw_imm, scl, scl, 8, kY));
        k_products(o, lo(), scl, xl, false);
        k_products(o, hi(), scl, xh, false);
      }
    }
    half_to_float(o, Op::vbcast_w, lo(), 208);
    for (int t = 0; t < T_; ++t) {
      const int S = c_.s[size_t(t)];
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1, kY));
      o.push_back(jit::make_alu(Op::vmulps, S, S, lo(), kY));
      fold(o, t, layout::kXScale);
    }
  }

  // avx2vnni: acc += dot4(u8 code, s8 x at x_off) per dword lane ({vex} vpdpbusd; the avx2 path sums int16 words
  // in unit_legacy instead).
  void legacy_products(std::vector<Instr>& o, int code, int64_t x_off) const {
    for (int t = 0; t < T_; ++t) {
      Instr i = jit::make_alu_mem(Op::vpdpbusd, c_.s[size_t(t)], code, xm(t, x_off), kY);
      i.vex = true;
      o.push_back(i);
    }
  }

  void unit_legacy(std::vector<Instr>& o) const {
    const int co = layout::codes_offset(f_);
    if (!vnni_ && f_ == Format::q8_0) {
      // Q8_0 on vpmaddubsw: codes split in nibbles (unsigned codes up to 255 would saturate its pairs); per
      // activation row the four chunks' low-nibble products summed as int16 words in S, the high nibbles' in s_hi
      // (each sum at most 4 x 3810), then one vpmaddwd by ones and one by sixteens instead of eight.
      for (int i = 0; i < 4; ++i) {
        nibbles(o, co + 32 * i);
        for (int t = 0; t < T_; ++t) {
          const int S = c_.s[size_t(t)], Hs = c_.s_hi[size_t(t)];
          if (i == 0) {
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, S, lo(), xm(t, 32 * i), kY));
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, Hs, hi(), xm(t, 32 * i), kY));
          } else {
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, lo(), xm(t, 32 * i), kY));
            o.push_back(jit::make_alu(Op::vpaddw, S, S, c_.p, kY));
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, hi(), xm(t, 32 * i), kY));
            o.push_back(jit::make_alu(Op::vpaddw, Hs, Hs, c_.p, kY));
          }
        }
      }
      for (int t = 0; t < T_; ++t) {
        const int S = c_.s[size_t(t)], Hs = c_.s_hi[size_t(t)];
        o.push_back(jit::make_alu_mem(Op::vpmaddwd, S, S, cst(kOnes16), kY));
        o.push_back(jit::make_alu_mem(Op::vpmaddwd, Hs, Hs, cst(kSixteens16), kY));
        o.push_back(jit::make_alu(Op::vpaddd, S, S, Hs, kY));
        o.push_back(jit::make_load(Op::vload, c_.p, xm(t, layout::kXCorr), 16));
        o.push_back(jit::make_alu(Op::vpaddd, S, S, c_.p, kY));
      }
    } else if (!vnni_) {
      // Q4_0 / Q4_1 on vpmaddubsw: the unit's four products per activation row summed as int16 words first (codes <=
      // 15, |x| <= 127: each pair at most 3810, four of them 15240, no wrap), then one vpmaddwd by ones instead of
      // four. vpmaddubsw and vpmaddwd share one port on many AVX2 cores (Zen 2: one per cycle together), so the
      // unit takes 5 of those per row instead of 8; the sums are the same integers.
      for (int s = 0; s < 2; ++s) {
        nibbles(o, co + 32 * s);
        for (int t = 0; t < T_; ++t) {
          const int S = c_.s[size_t(t)];
          if (s == 0) {
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, S, lo(), xm(t, 0), kY));
          } else {
            o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, lo(), xm(t, 32), kY));
            o.push_back(jit::make_alu(Op::vpaddw, S, S, c_.p, kY));
          }
          o.push_back(jit::make_alu_mem(Op::vpmaddubsw, c_.p, hi(), xm(t, 64 + 32 * s), kY));
          o.push_back(jit::make_alu(Op::vpaddw, S, S, c_.p, kY));
        }
      }
      for (int t = 0; t < T_; ++t) {  // to dwords, plus the offset corrections (lanes 0..3, block = lane % 4)
        const int S = c_.s[size_t(t)];
        o.push_back(jit::make_alu_mem(Op::vpmaddwd, S, S, cst(kOnes16), kY));
        o.push_back(jit::make_load(Op::vload, c_.p, xm(t, layout::kXCorr), 16));
        o.push_back(jit::make_alu(Op::vpaddd, S, S, c_.p, kY));
      }
    } else {
      for (int t = 0; t < T_; ++t)  // the offset corrections in lanes 0..3 (block = lane % 4), zeros above
        o.push_back(jit::make_load(Op::vload, c_.s[size_t(t)], xm(t, layout::kXCorr), 16));
    }
    if (f_ == Format::q8_0 && vnni_) {
      for (int i = 0; i < 4; ++i) {
        o.push_back(jit::make_load(Op::vload, lo(), wm(co + 32 * i), kY));
        legacy_products(o, lo(), 32 * i);
      }
    } else if (vnni_) {
      for (int s = 0; s < 2; ++s) {
        nibbles(o, co + 32 * s);
        legacy_products(o, lo(), 32 * s);
        legacy_products(o, hi(), 64 + 32 * s);
      }
    }
    // the 4 blocks' d in lanes l % 4 (and Q4_1's m)
    half_to_float(o, Op::vbcast_q, lo(), 0);
    if (f_ == Format::q4_1) half_to_float(o, Op::vbcast_q, hi(), 8);
    for (int t = 0; t < T_; ++t) {
      const int S = c_.s[size_t(t)];
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1, kY));
      o.push_back(jit::make_alu(Op::vmulps, S, S, lo(), kY));
      o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], S, xm(t, layout::kXDx), kY));
      if (f_ == Format::q4_1)
        o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], hi(), xm(t, layout::kXSx), kY));
    }
  }

  std::vector<Instr> hot_body() const {
    std::vector<Instr> o;
    const Genome& g = c_.genome;
    const int64_t rec = layout::record_bytes(f_);
    if (g.pf_for(T_) > 0) {
      const Op pf = g.pf_kind == PrefetchKind::t1    ? Op::prefetch_t1
                    : g.pf_kind == PrefetchKind::t2  ? Op::prefetch_t2
                    : g.pf_kind == PrefetchKind::nta ? Op::prefetch_nta
                                                     : Op::prefetch_t0;
      for (int64_t b = 0; b < rec; b += 64) o.push_back(jit::make_hint(pf, wm(g.pf_for(T_) + b)));
    }
    if (f_ == Format::q4_k || f_ == Format::q5_k)
      unit_q4k_q5k(o);
    else if (f_ == Format::q6_k)
      unit_q6k(o);
    else
      unit_legacy(o);
    return o;
  }

  void apply_order(std::vector<Instr>& body) const {
    jit::apply_order(body, c_.genome.order, "kq_gemv: genome of " + c_.id);
  }

  jit::Program program() const {
    jit::Program p;
    p.name = c_.id;
    auto& o = p.code;
    const int64_t rec = layout::record_bytes(f_);
    o.push_back(jit::make_gpr(Op::mov_load, kCReg, -1, 0, arg(offsetof(KernelArgs, consts))));
    o.push_back(jit::make_gpr(Op::mov_load, kWReg, -1, 0, arg(offsetof(KernelArgs, w))));
    o.push_back(jit::make_load(Op::vbcast_d, mask(), cst(kMask0F), kY));
    o.push_back(jit::make_gpr(Op::mov_load, kOutReg, -1, 0, arg(offsetof(KernelArgs, out))));
    o.push_back(jit::make_gpr(Op::mov_load, kRowCnt, -1, 0, arg(offsetof(KernelArgs, n_rows))));
    o.push_back(jit::make_gpr(Op::mov_load, kSkipReg, -1, 0, arg(offsetof(KernelArgs, w_skip))));
    o.push_back(jit::make_gpr(Op::mov_load, kXStride, -1, 0, arg(offsetof(KernelArgs, x_stride))));
    o.push_back(loop_marker(Op::loop_begin, kRowCnt, 0));
    o.push_back(jit::make_gpr(Op::mov_load, kXReg, -1, 0, arg(offsetof(KernelArgs, x))));
    o.push_back(jit::make_gpr(Op::mov_load, kUnitCnt, -1, 0, arg(offsetof(KernelArgs, n_units))));
    // 8 lanes per activation row in the low half of its 16 (the driver zeroes all 16 and sums them)
    for (int t = 0; t < T_; ++t)  // lanes 8..15 of each 16 are never written nor read (sum_lanes8)
      o.push_back(c_.zero_init ? jit::make_alu(Op::vpxord, c_.f[size_t(t)], c_.f[size_t(t)], c_.f[size_t(t)], kY)
                               : jit::make_load(Op::vload, c_.f[size_t(t)], mem(kOutReg, 64 * t, kOut), kY));
    o.push_back(loop_marker(Op::loop_begin, kUnitCnt, c_.genome.loop_align));
    p.hot_begin = o.size();
    std::vector<Instr> hot = hot_body();
    apply_order(hot);
    o.insert(o.end(), hot.begin(), hot.end());
    p.hot_end = o.size();
    o.push_back(jit::make_gpr(Op::add_imm, kWReg, -1, rec));
    o.push_back(jit::make_gpr(Op::add_reg, kXReg, kXStride, 0));
    o.push_back(loop_marker(Op::loop_end, kUnitCnt, 0));
    for (int t = 0; t < T_; ++t) o.push_back(jit::make_store(c_.f[size_t(t)], mem(kOutReg, 64 * t, kOut), kY));
    o.push_back(jit::make_gpr(Op::add_imm, kOutReg, -1, int64_t(T_) * 64));
    o.push_back(jit::make_gpr(Op::add_reg, kWReg, kSkipReg, 0));
    o.push_back(loop_marker(Op::loop_end, kRowCnt, 0));
    return p;
  }

 private:
  const Conf& c_;
  const Format f_;
  const int T_;
  const bool vnni_;
};

}  // namespace

int max_tokens(Path path, Format f) {
  if (path == Path::avx2 && f == Format::q8_0) return (16 - fixed_regs(f)) / 3;  // + s_hi per activation row
  if (path == Path::avx2 || path == Path::avx2vnni) return std::min(kMaxTokens, (16 - fixed_regs(f)) / 2);
  return kMaxTokens;
}

Conf make_conf_avx2(Format fmt_, int tokens, const Genome& g, bool vnni) {
  const Path path = vnni ? Path::avx2vnni : Path::avx2;
  const int most = max_tokens(path, fmt_);
  if (tokens < 1 || tokens > most)
    fail("kq_gemv: {} activation rows; a {} kernel of {} handles 1..{}", tokens, path_name(path), format_name(fmt_),
         most);
  g.validate();
  Conf c;
  c.format = fmt_;
  c.path = path;
  c.tokens = tokens;
  c.genome = g;
  int next = 0;
  for (int t = 0; t < tokens; ++t) c.f.push_back(next++);
  for (int t = 0; t < tokens; ++t) c.s.push_back(next++);
  if (path == Path::avx2 && fmt_ == Format::q8_0)
    for (int t = 0; t < tokens; ++t) c.s_hi.push_back(next++);
  c.c = {next, next + 1};
  next += 2;
  c.p = next++;
  c.const_regs.emplace_back(kMask0F, next++);
  if (is_k_quant(fmt_)) {
    c.sc = {next, next + 1};
    next += 2;
    c.sb = next++;
    if (fmt_ != Format::q4_k) c.qh = next++;
  }
  if (next > 16) fail("kq_gemv: {} registers for {} activation rows of {} on {}", next, tokens, format_name(fmt_),
                      path_name(path));
  c.sets = 1;
  c.set_size = 0;
  c.id = fmt::format("kq_gemv_{}_{}_t{}_{}", path_name(path), format_name(fmt_), tokens, g.code_key());
  return c;
}

jit::Program build_avx2(const Conf& c) { return Builder2(c).program(); }

std::vector<jit::Instr> hot_body_avx2(const Conf& c) { return Builder2(c).hot_body(); }

}  // namespace genesis::kernels::kq_gemv
