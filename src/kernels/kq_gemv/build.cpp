// build(): the IR of one kq_gemv kernel. Loop structure:
//   row loop { load the fp32 lanes; unit loop { HOT: decode the unit's codes and scales once, then for each
//   activation row the integer dots and the fp32 fold }; store the lanes }
// Decoding (per unit, shared by all activation rows):
//   4-bit codes: vpandd / vpsrlw+vpandd on 64 stored bytes give two vectors of 64 codes;
//   Q5_K / Q6_K high bits: the 32 stored bytes broadcast to both halves, one vpsrlvw (per-half shift) and one
//   vpternlogd (code |= bits & mask) per vector;
//   K-quant sub-block scales: one fp32 scale per dword lane (every code vector's lane l is one sub-block): Q4_K /
//   Q5_K vpbroadcastq of the 8 scale bytes and a vpshufb, Q6_K vpmovsxbd of its 16; converted, times d.
// Products: vpdpbusd (u8 codes x s8 activations) per dword lane, K-quants from zero (Q6_K from the activation
//   record's -32 bsum_l), legacy formats from the offset correction; then one conversion and the fp32 scale products
//   per unit and activation row (README.md "The generated code"). The AVX2 paths are in build_avx2.cpp.
#include "kernels/kq_gemv/build.h"

#include <fmt/format.h>

#include <cstddef>

#include "common/error.h"
#include "kernels/kq_gemv/layout.h"

namespace genesis::kernels::kq_gemv {

using jit::Instr;
using jit::Mem;
using jit::Op;

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
constexpr int kW2Reg = jit::kGprBase + 12;    // r12: row 1 of a pair (two-row kernels)
constexpr int kRowReg = jit::kGprBase + 13;   // r13: w_row (two-row kernels)
constexpr int kPfReg = jit::kGprBase + 14;    // r14: the next pair's row 0 at the record being decoded (two-row)
constexpr int kPf2Reg = jit::kGprBase + 15;   // r15: the next pair's row 1
constexpr int kTailStride = jit::kGprBase + 12;  // r12: x_tail_stride (four-unit kernels with a tail)

using namespace kconst;

struct alignas(64) Constants {
  uint8_t b[kConstBytes] = {};
  Constants() {
    auto put32 = [&](int off, uint32_t v) {
      for (int i = 0; i < 4; ++i) b[off + i] = uint8_t(v >> (8 * i));
    };
    auto put16 = [&](int off, int16_t v) {
      b[off] = uint8_t(uint16_t(v));
      b[off + 1] = uint8_t(uint16_t(v) >> 8);
    };
    put32(kMask0F, 0x0F0F0F0Fu);
    put32(kMask10, 0x10101010u);
    put32(kMask30, 0x30303030u);
    for (int w = 0; w < 32; ++w) {
      put16(kSh02 + 2 * w, int16_t(w < 16 ? 0 : 2));
      put16(kSh13 + 2 * w, int16_t(w < 16 ? 1 : 3));
      put16(kNeg32 + 2 * w, int16_t(-32));
    }
    for (int i = 0; i < 32; ++i) {  // full-width constants for the AVX2 kernels (no embedded broadcast there)
      b[kMask30Y + i] = 0x30;
      b[kMask10Y + i] = 0x10;
    }
    for (int w = 0; w < 16; ++w) {
      put16(kOnes16 + 2 * w, 1);
      put16(kSixteens16 + 2 * w, 16);
    }
    for (int w = 0; w < 16; ++w) {
      b[kIdx6L + 2 * w] = 0x80;
      b[kIdx6L + 2 * w + 1] = uint8_t(w / 2);
    }
    for (int u = 1; u < 4; ++u)
      for (int i = 0; i < 8; ++i) b[kSelQ + 32 * (u - 1) + 8 * u + i] = 0xFF;
    for (int l = 0; l < 16; ++l) {
      b[kIdxD + 4 * l] = uint8_t(l % 8);
      for (int i = 1; i < 4; ++i) b[kIdxD + 4 * l + i] = 0x80;
    }
    for (int k = 0; k < 4; ++k)
      for (int w = 0; w < 32; ++w) {
        b[kIdxKL + 64 * k + 2 * w] = uint8_t((w / 2) % 8);
        b[kIdxKL + 64 * k + 2 * w + 1] = 0x80;
      }
    for (int k = 0; k < 4; ++k)
      for (int w = 0; w < 32; ++w) {
        // Q4_K / Q5_K vector k holds sub-blocks (k/2)*4 + k%2 (bytes 0..31) and that + 2 (bytes 32..63)
        b[kIdxK + 64 * k + 2 * w] = uint8_t((k / 2) * 4 + (k % 2) + (w >= 16 ? 2 : 0));
        b[kIdxK + 64 * k + 2 * w + 1] = 0x80;
        // Q6_K vector k holds sub-blocks 4k .. 4k+3 (8 words each); the scale byte goes to the word's high byte
        b[kIdx6 + 64 * k + 2 * w] = 0x80;
        b[kIdx6 + 64 * k + 2 * w + 1] = uint8_t(4 * (k % 2) + w / 8);
      }
  }
};

Mem mem(int base, int64_t disp, int stream, bool bcast = false) {
  if (disp < INT32_MIN || disp > INT32_MAX) fail("kq_gemv: displacement {} does not fit 32 bits", disp);
  Mem m;
  m.base = base;
  m.disp = int32_t(disp);
  m.stream = stream;
  m.bcast = bcast;
  return m;
}
Mem arg(size_t off) { return mem(kArgsReg, int64_t(off), kArgs); }
Mem cst(int off, bool bcast = false) { return mem(kCReg, off, kConsts, bcast); }

Instr ternlog(int dst, int src1, Mem m, int imm) {
  Instr i = jit::make_alu_mem(Op::vpternlogd, dst, src1, m);
  i.imm = imm;
  return i;
}

Instr loop_marker(Op op, int counter, int align) {
  Instr i;
  i.op = op;
  i.dst = counter;
  i.imm = align;
  return jit::finalize(i);
}

class Builder {
 public:
  explicit Builder(const Conf& c) : c_(c), f_(c.format), T_(c.tokens) {}

  int tmp(int set, int j) const { return c_.temps[size_t(c_.set_size * (set % c_.sets) + j)]; }
  int creg(int off) const {
    for (auto [o, r] : c_.const_regs)
      if (o == off) return r;
    return -1;
  }
  // An ALU op whose second source is a constant: its register when it has one, else a memory operand.
  Instr with_const(Op op, int dst, int src1, int off, bool bcast = false, int width = 64) const {
    const int r = creg(off);
    return r >= 0 ? jit::make_alu(op, dst, src1, r, width) : jit::make_alu_mem(op, dst, src1, cst(off, bcast), width);
  }
  Instr ternlog_const(int dst, int src1, int off) const {
    const int r = creg(off);
    if (r < 0) return ternlog(dst, src1, cst(off, true), 0xF8);
    Instr i = jit::make_alu(Op::vpternlogd, dst, src1, r);
    i.imm = 0xF8;
    return i;
  }
  Mem wm(int64_t off, bool bcast = false) const { return mem(kWReg, off, kW, bcast); }
  Mem xm(int t, int64_t off, bool bcast = false) const {
    return mem(kXReg, t * (c_.group4 && !tail_x_ ? kGroupRecord : kTokenRecord) + off, kX, bcast);
  }

  void nibbles(std::vector<Instr>& o, int lo, int hi, int64_t off, int base = kWReg) const {
    o.push_back(jit::make_load(Op::vload, hi, mem(base, off, kW)));
    o.push_back(with_const(Op::vpandd, lo, hi, kMask0F, true));
    o.push_back(jit::make_shift(Op::vpsrlw_imm, hi, hi, 4));
    o.push_back(with_const(Op::vpandd, hi, hi, kMask0F, true));
  }

  void half_to_float(std::vector<Instr>& o, Op bcast, int v, int64_t off) const {
    o.push_back(jit::make_load(bcast, v, wm(off), 32));
    o.push_back(jit::make_alu(Op::vcvtph2ps, v, v, -1, 64));
  }

  // Q6_K: D = d sc_l per dword lane l as fp32 (every code vector's lane l is sub-block l): the 16 signed scales
  // sign-extended to dwords (vpmovsxbd: scale l lands in lane l), converted, times d. (Until stop 33: vpmovsxbw to
  // words, a vpermw of each word to both words of its dword and a vpmaddwd by [1, 0], three more instructions a unit.)
  void scales_q6k(std::vector<Instr>& o, int D, int base, int d) const {
    o.push_back(jit::make_load(Op::vsx_b2d, D, mem(base, 192, kW)));
    o.push_back(jit::make_alu(Op::vcvtdq2ps, D, D, -1));
    o.push_back(jit::make_load(Op::vbcast_w, d, mem(base, 208, kW), 32));
    o.push_back(jit::make_alu(Op::vcvtph2ps, d, d, -1, 64));
    o.push_back(jit::make_alu(Op::vmulps, D, D, d));
  }

  // Q6_K: S = -32 bsum_l per dword lane l, as the activation record holds it (kXSeed6): a load, no arithmetic. (Until
  // stop 33 a vpermw of the per-16 sums to the lanes and a vpmaddwd by -32, two instructions per unit and row.)
  void seed_q6k(std::vector<Instr>& o, int t, int S) const {
    o.push_back(jit::make_load(Op::vload, S, xm(t, layout::kXSeed6)));
  }

  void decode_k(std::vector<Instr>& o) const {
    const auto& C = c_.c;
    const auto& SC = c_.sc;
    const int co = layout::codes_offset(f_);
    if (f_ == Format::q6_k) {
      high_bits_q6k(o, kWReg, C, tmp(0, 0), tmp(0, 1));
      scales_q6k(o, SC[0], kWReg, c_.d);
      return;
    }
    nibbles(o, C[0], C[1], co);
    nibbles(o, C[2], C[3], co + 64);
    if (f_ == Format::q5_k) high_bits_q5k(o, kWReg, C, tmp(0, 0), tmp(0, 1), tmp(0, 2));
    // D = d sc_(l % 8) per dword lane l as fp32 (every code vector's lane l is sub-block l % 8); dmin m_j in lanes
    // 0..7 (lanes 8..15 zero)
    const int B = tmp(0, 0);
    o.push_back(jit::make_load(Op::vbcast_q, B, wm(4)));
    o.push_back(with_const(Op::vpshufb, SC[0], B, kIdxD));
    o.push_back(jit::make_alu(Op::vcvtdq2ps, SC[0], SC[0], -1));
    half_to_float(o, Op::vbcast_w, c_.d, 0);
    o.push_back(jit::make_alu(Op::vmulps, SC[0], SC[0], c_.d));
    half_to_float(o, Op::vbcast_w, c_.dmin, 2);
    o.push_back(jit::make_load(Op::vzx_b2d, c_.mv, wm(12), 32));
    o.push_back(jit::make_alu(Op::vcvtdq2ps, c_.mv, c_.mv, -1));
    o.push_back(jit::make_alu(Op::vmulps, c_.mv, c_.mv, c_.dmin));
  }

  // Q6_K's four code vectors: the low nibbles of ql[64 h ..] give vectors 2 h (low) and 2 h + 1 (high); vector c's
  // high bits are bits 2c, 2c + 1 of the record's qh (layout.cpp q6_qh_relayout), one 64-byte load for all four:
  // code |= (qh << (4 - 2c)) & 0x30 by a word shift (none for c = 2) and vpternlogd. (Until stop 33 qh kept ggml's
  // packing: two broadcasts of 32 bytes, a vpsllw and two vpsrlvw per 32 bytes, 10 instructions instead of 7.)
  void high_bits_q6k(std::vector<Instr>& o, int base, const std::vector<int>& C, int H, int t) const {
    nibbles(o, C[0], C[1], 0, base);
    nibbles(o, C[2], C[3], 64, base);
    o.push_back(jit::make_load(Op::vload, H, mem(base, 128, kW)));
    for (int c = 0; c < 4; ++c) {
      int src = H;
      if (c != 2) {
        o.push_back(jit::make_shift(c < 2 ? Op::vpsllw_imm : Op::vpsrlw_imm, t, H, c < 2 ? 4 - 2 * c : 2));
        src = t;
      }
      o.push_back(ternlog_const(C[size_t(c)], src, kMask30));
    }
  }

  // Q5_K's fifth bit into the four code vectors: the record's qh (32 bytes) in both halves, a per-half shift, and
  // vpternlogd code |= bits & 0x10 (q5k_position: vector k's high bit of packed position 32 s + p is bit 2 k' + ...,
  // as ggml packs it)
  void high_bits_q5k(std::vector<Instr>& o, int base, const std::vector<int>& C, int H, int Hs, int t) const {
    o.push_back(jit::make_load(Op::vbcast_64x4, H, mem(base, 20, kW)));
    o.push_back(jit::make_shift(Op::vpsllw_imm, Hs, H, 4));
    const int src[4] = {Hs, Hs, H, H};
    const int sh[4] = {kSh02, kSh13, kSh02, kSh13};
    for (int k = 0; k < 4; ++k) {
      o.push_back(with_const(Op::vpsrlvw, t, src[k], sh[k]));
      o.push_back(ternlog_const(C[size_t(k)], t, kMask10));
    }
  }

  void tokens_k(std::vector<Instr>& o) const {
    const auto& C = c_.c;
    const auto& SC = c_.sc;
    if (f_ == Format::q6_k) {  // as Q4_K below, lane l = sub-block l, S from -32 bsum_l, no mins
      for (int t = 0; t < T_; ++t) {
        const int S = tmp(t, 0);
        seed_q6k(o, t, S);
        for (int k = 0; k < 4; ++k) o.push_back(jit::make_alu_mem(Op::vpdpbusd, S, C[size_t(k)], xm(t, 64 * k)));
        o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1));
        o.push_back(jit::make_alu(Op::vmulps, S, S, SC[0]));
        o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], S, xm(t, layout::kXScale, true)));
      }
      return;
    }
    // Q4_K, Q5_K: per dword lane vpdpbusd sums codes x activations of one sub-block (every vector's lane l is
    // sub-block l % 8), scaled after the conversion by D = d sc_(l % 8)
    for (int t = 0; t < T_; ++t) {
      const int S = tmp(t, 0);
      o.push_back(jit::make_alu(Op::vpxord, S, S, S));  // zeroing idiom
      for (int k = 0; k < 4; ++k) o.push_back(jit::make_alu_mem(Op::vpdpbusd, S, C[size_t(k)], xm(t, 64 * k)));
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1));
      o.push_back(jit::make_alu(Op::vmulps, S, S, SC[0]));
      o.push_back(jit::make_alu_mem(Op::vfnmadd231ps, S, c_.mv, xm(t, layout::kXSums32)));
      o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], S, xm(t, layout::kXScale, true)));
    }
  }

  void decode_legacy(std::vector<Instr>& o) const {
    const auto& C = c_.c;
    const int co = layout::codes_offset(f_);
    if (f_ == Format::q8_0) {
      o.push_back(jit::make_load(Op::vload, C[0], wm(co)));
      o.push_back(jit::make_load(Op::vload, C[1], wm(co + 64)));
    } else {
      nibbles(o, C[0], C[1], co);
    }
    half_to_float(o, Op::vbcast_q, c_.d, 0);
    if (f_ == Format::q4_1) half_to_float(o, Op::vbcast_q, c_.mv, 8);
  }

  void tokens_legacy(std::vector<Instr>& o) const {
    const auto& C = c_.c;
    for (int t = 0; t < T_; ++t) {
      const int S = tmp(t, 0);
      o.push_back(jit::make_load(Op::vload, S, xm(t, layout::kXCorr), 16));  // zero-extends to the whole zmm
      o.push_back(jit::make_alu_mem(Op::vpdpbusd, S, C[0], xm(t, 0)));
      o.push_back(jit::make_alu_mem(Op::vpdpbusd, S, C[1], xm(t, 64)));
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1));
      o.push_back(jit::make_alu(Op::vmulps, S, S, c_.d));
      o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], S, xm(t, layout::kXDx)));
      if (f_ == Format::q4_1)
        o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], c_.mv, xm(t, layout::kXSx)));
    }
  }

  // Four legacy units (Conf::group4): their records' code bytes regrouped by 128-bit quarters (a 4 x 4 transpose by
  // vshufi64x2: quarter q of units 0..3 into one vector), so that dword lane 4 u + b of code vector (z, q) holds four
  // codes of unit u's block b; their scales gathered into lane order; then per activation row one integer sum per
  // block over the 8 vpdpbusd and one fp32 fold per 16 blocks (README.md "Legacy formats, several rows").
  void decode_group(std::vector<Instr>& o) const {
    const auto& C = c_.c;
    const int64_t rec = layout::record_bytes(f_), co = layout::codes_offset(f_);
    auto shuf = [&](int dst, int a, int b, int imm) {
      Instr i = jit::make_alu(Op::vshufi64x2, dst, a, b);
      i.imm = imm;
      o.push_back(i);
    };
    const int T0 = c_.temps[0], T1 = c_.temps[1], T2 = c_.temps[2], T3 = c_.temps[3];
    // out[q] = quarter q of the 64 bytes at `off` of units 0..3; in0/in1 hold loads until the transpose reads them
    auto regroup = [&](int64_t off, const int* out, int in0, int in1) {
      o.push_back(jit::make_load(Op::vload, in0, wm(off)));
      o.push_back(jit::make_load(Op::vload, in1, wm(rec + off)));
      shuf(T0, in0, in1, 0x44);  // [u0.q0, u0.q1, u1.q0, u1.q1]
      shuf(T1, in0, in1, 0xEE);  // [u0.q2, u0.q3, u1.q2, u1.q3]
      o.push_back(jit::make_load(Op::vload, in0, wm(2 * rec + off)));
      o.push_back(jit::make_load(Op::vload, in1, wm(3 * rec + off)));
      shuf(T2, in0, in1, 0x44);
      shuf(T3, in0, in1, 0xEE);
      shuf(out[0], T0, T2, 0x88);  // [u0.q0, u1.q0, u2.q0, u3.q0]
      shuf(out[1], T0, T2, 0xDD);
      shuf(out[2], T1, T3, 0x88);
      shuf(out[3], T1, T3, 0xDD);
    };
    if (f_ == Format::q8_0) {
      for (int z = 0; z < 2; ++z) {
        const int out[4] = {C[size_t(4 * z)], C[size_t(4 * z + 1)], C[size_t(4 * z + 2)], C[size_t(4 * z + 3)]};
        regroup(co + 64 * z, out, out[0], out[1]);
      }
    } else {  // code vector (0, q): the low nibbles of quarter q, (1, q): the high ones
      const int out[4] = {C[4], C[5], C[6], C[7]};
      regroup(co, out, C[0], C[1]);
      for (int q = 0; q < 4; ++q) {
        o.push_back(with_const(Op::vpandd, C[size_t(q)], C[size_t(4 + q)], kMask0F, true));
        o.push_back(jit::make_shift(Op::vpsrlw_imm, C[size_t(4 + q)], C[size_t(4 + q)], 4));
        o.push_back(with_const(Op::vpandd, C[size_t(4 + q)], C[size_t(4 + q)], kMask0F, true));
      }
    }
    // 16 halves (qword u = unit u's four blocks) from four broadcasts and three selects, then widened
    auto gather_halves = [&](int dst, int64_t off) {
      o.push_back(jit::make_load(Op::vbcast_q, dst, wm(off), 32));
      for (int u = 1; u < 4; ++u) {
        o.push_back(jit::make_load(Op::vbcast_q, T0, wm(u * rec + off), 32));
        Instr i = jit::make_alu_mem(Op::vpternlogd, dst, T0, cst(kSelQ + 32 * (u - 1)), 32);
        i.imm = 0xD8;  // mask ? src1 : dst
        o.push_back(i);
      }
      o.push_back(jit::make_alu(Op::vcvtph2ps, dst, dst, -1, 64));
    };
    gather_halves(c_.d, 0);
    if (f_ == Format::q4_1) gather_halves(c_.mv, 8);
  }

  void tokens_group(std::vector<Instr>& o) const {
    const auto& C = c_.c;
    // Up to 4 rows: two chains of 4 vpdpbusd per row, added (a chain of 8 made 2 rows latency-bound); more rows
    // overlap their chains.
    const bool split = T_ <= 4;
    for (int t = 0; t < T_; ++t) {
      const int S = c_.temps[size_t(split ? 2 * t : t) % c_.temps.size()];
      const int S2 = split ? c_.temps[size_t(2 * t + 1) % c_.temps.size()] : S;
      o.push_back(jit::make_load(Op::vload, S, xm(t, layout::kGCorr)));
      if (split) o.push_back(jit::make_alu(Op::vpxord, S2, S2, S2));  // zeroing idiom
      for (int v = 0; v < 8; ++v)
        o.push_back(jit::make_alu_mem(Op::vpdpbusd, v < 4 ? S : S2, C[size_t(v)], xm(t, 64 * v)));
      if (split) o.push_back(jit::make_alu(Op::vpaddd, S, S, S2));
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S, S, -1));
      o.push_back(jit::make_alu(Op::vmulps, S, S, c_.d));
      o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], S, xm(t, layout::kGDx)));
      if (f_ == Format::q4_1)
        o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], c_.mv, xm(t, layout::kGSx)));
    }
  }

  // The unit loop's body in canonical order: prefetches, the shared decode, then each activation row's products.
  std::vector<Instr> hot_body() const {
    std::vector<Instr> o;
    const Genome& g = c_.genome;
    const int64_t rec = layout::record_bytes(f_) * (c_.group4 ? 4 : 1);
    if (g.pf_for(T_) > 0) {
      const Op pf = g.pf_kind == PrefetchKind::t1   ? Op::prefetch_t1
                    : g.pf_kind == PrefetchKind::t2 ? Op::prefetch_t2
                    : g.pf_kind == PrefetchKind::nta ? Op::prefetch_nta
                                                     : Op::prefetch_t0;
      for (int64_t b = 0; b < rec; b += 64) o.push_back(jit::make_hint(pf, wm(g.pf_for(T_) + b)));
    }
    if (c_.group4) {
      decode_group(o);
      tokens_group(o);
    } else if (is_k_quant(f_)) {
      decode_k(o);
      tokens_k(o);
    } else {
      decode_legacy(o);
      tokens_legacy(o);
    }
    return o;
  }

  // Two-row kernels (Conf::pair, Q4_K): one row's decode from `base` into codes C, D and mins mv; the temporaries are
  // the pair's S0, S1 and xr (free until the products).
  void decode_q4k_row(std::vector<Instr>& o, int base, const std::vector<int>& C, int D, int mv) const {
    const int co = layout::codes_offset(f_);
    const int B = c_.temps[0], dmin = c_.temps[1], d = c_.xr;
    nibbles(o, C[0], C[1], co, base);
    nibbles(o, C[2], C[3], co + 64, base);
    if (f_ == Format::q5_k) high_bits_q5k(o, base, C, B, dmin, d);
    o.push_back(jit::make_load(Op::vbcast_q, B, mem(base, 4, kW)));
    o.push_back(with_const(Op::vpshufb, D, B, kIdxD));
    o.push_back(jit::make_alu(Op::vcvtdq2ps, D, D, -1));
    o.push_back(jit::make_load(Op::vbcast_w, d, mem(base, 0, kW), 32));
    o.push_back(jit::make_alu(Op::vcvtph2ps, d, d, -1, 64));
    o.push_back(jit::make_alu(Op::vmulps, D, D, d));
    o.push_back(jit::make_load(Op::vbcast_w, dmin, mem(base, 2, kW), 32));
    o.push_back(jit::make_alu(Op::vcvtph2ps, dmin, dmin, -1, 64));
    o.push_back(jit::make_load(Op::vzx_b2d, mv, mem(base, 12, kW), 32));
    o.push_back(jit::make_alu(Op::vcvtdq2ps, mv, mv, -1));
    o.push_back(jit::make_alu(Op::vmulps, mv, mv, dmin));
  }

  void decode_q6k_row(std::vector<Instr>& o, int base, const std::vector<int>& C, int D) const {
    high_bits_q6k(o, base, C, c_.temps[0], c_.temps[1]);
    scales_q6k(o, D, base, c_.temps[0]);
  }

  std::vector<Instr> hot_body_pair() const {
    std::vector<Instr> o;
    const Genome& g = c_.genome;
    const int64_t rec = layout::record_bytes(f_);
    if (g.pf_for(T_) > 0) {  // pfm 0: no prefetch here either
      const Op pf = g.pf_kind == PrefetchKind::t1   ? Op::prefetch_t1
                    : g.pf_kind == PrefetchKind::t2 ? Op::prefetch_t2
                    : g.pf_kind == PrefetchKind::nta ? Op::prefetch_nta
                                                     : Op::prefetch_t0;
      for (int base : {kPfReg, kPf2Reg})
        for (int64_t b = 0; b < rec; b += 64) o.push_back(jit::make_hint(pf, mem(base, g.pf_pair + b, kW)));
    }
    const bool q6 = f_ == Format::q6_k;
    if (q6) {
      decode_q6k_row(o, kWReg, c_.c, c_.sc[0]);
      decode_q6k_row(o, kW2Reg, c_.c2, c_.sc2);
    } else {
      decode_q4k_row(o, kWReg, c_.c, c_.sc[0], c_.mv);
      decode_q4k_row(o, kW2Reg, c_.c2, c_.sc2, c_.mv2);
    }
    const int S0 = c_.temps[0], S1 = c_.temps[1], X = c_.xr;
    for (int t = 0; t < T_; ++t) {
      if (q6) {  // both rows start from -32 bsum_l (activations only)
        seed_q6k(o, t, S0);
        seed_q6k(o, t, S1);
      } else {
        o.push_back(jit::make_alu(Op::vpxord, S0, S0, S0));  // zeroing idioms
        o.push_back(jit::make_alu(Op::vpxord, S1, S1, S1));
      }
      for (int k = 0; k < 4; ++k) {  // one load of the activations for both rows
        o.push_back(jit::make_load(Op::vload, X, xm(t, 64 * k)));
        o.push_back(jit::make_alu(Op::vpdpbusd, S0, c_.c[size_t(k)], X));
        o.push_back(jit::make_alu(Op::vpdpbusd, S1, c_.c2[size_t(k)], X));
      }
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S0, S0, -1));
      o.push_back(jit::make_alu(Op::vcvtdq2ps, S1, S1, -1));
      o.push_back(jit::make_alu(Op::vmulps, S0, S0, c_.sc[0]));
      o.push_back(jit::make_alu(Op::vmulps, S1, S1, c_.sc2));
      if (!q6) {
        o.push_back(jit::make_alu_mem(Op::vfnmadd231ps, S0, c_.mv, xm(t, layout::kXSums32)));
        o.push_back(jit::make_alu_mem(Op::vfnmadd231ps, S1, c_.mv2, xm(t, layout::kXSums32)));
      }
      o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(t)], S0, xm(t, layout::kXScale, true)));
      o.push_back(jit::make_alu_mem(Op::vfmadd231ps, c_.f[size_t(T_ + t)], S1, xm(t, layout::kXScale, true)));
    }
    return o;
  }

  // From row 0 (r8): row 1 (r12), and the next pair's rows 0 and 1 (r14, r15) that the prefetches read ahead in.
  static void next_pair(std::vector<Instr>& o) {
    int prev = kWReg;
    for (int r : {kW2Reg, kPfReg, kPf2Reg}) {
      o.push_back(jit::make_gpr(Op::mov_reg, r, prev, 0));
      o.push_back(jit::make_gpr(Op::add_reg, r, kRowReg, 0));
      prev = r;
    }
  }

  // rows in pairs: r8 = row 0, r12 = r8 + w_row = row 1; the 2T lanes of the pair at out (row 0's T, then row 1's)
  jit::Program program_pair() const {
    jit::Program p;
    p.name = c_.id;
    p.saved_gprs = {kW2Reg, kRowReg, kPfReg, kPf2Reg};
    auto& o = p.code;
    const int64_t rec = layout::record_bytes(f_);
    const int nf = 2 * T_;
    o.push_back(jit::make_gpr(Op::mov_load, kCReg, -1, 0, arg(offsetof(KernelArgs, consts))));
    o.push_back(jit::make_gpr(Op::mov_load, kWReg, -1, 0, arg(offsetof(KernelArgs, w))));
    for (auto [off, r] : c_.const_regs)
      o.push_back(off < 64 ? jit::make_load(Op::vbcast_d, r, cst(off)) : jit::make_load(Op::vload, r, cst(off)));
    o.push_back(jit::make_gpr(Op::mov_load, kOutReg, -1, 0, arg(offsetof(KernelArgs, out))));
    o.push_back(jit::make_gpr(Op::mov_load, kRowCnt, -1, 0, arg(offsetof(KernelArgs, n_rows))));
    o.push_back(jit::make_gpr(Op::mov_load, kSkipReg, -1, 0, arg(offsetof(KernelArgs, w_skip))));
    o.push_back(jit::make_gpr(Op::mov_load, kXStride, -1, 0, arg(offsetof(KernelArgs, x_stride))));
    o.push_back(jit::make_gpr(Op::mov_load, kRowReg, -1, 0, arg(offsetof(KernelArgs, w_row))));
    next_pair(o);
    o.push_back(loop_marker(Op::loop_begin, kRowCnt, 0));
    o.push_back(jit::make_gpr(Op::mov_load, kXReg, -1, 0, arg(offsetof(KernelArgs, x))));
    o.push_back(jit::make_gpr(Op::mov_load, kUnitCnt, -1, 0, arg(offsetof(KernelArgs, n_units))));
    for (int j = 0; j < nf; ++j)
      o.push_back(c_.zero_init ? jit::make_alu(Op::vpxord, c_.f[size_t(j)], c_.f[size_t(j)], c_.f[size_t(j)])
                               : jit::make_load(Op::vload, c_.f[size_t(j)], mem(kOutReg, 64 * j, kOut)));
    o.push_back(loop_marker(Op::loop_begin, kUnitCnt, c_.genome.loop_align));
    p.hot_begin = o.size();
    std::vector<Instr> hot = hot_body_pair();
    o.insert(o.end(), hot.begin(), hot.end());
    p.hot_end = o.size();
    o.push_back(jit::make_gpr(Op::add_imm, kWReg, -1, rec));
    o.push_back(jit::make_gpr(Op::add_imm, kW2Reg, -1, rec));
    o.push_back(jit::make_gpr(Op::add_imm, kPfReg, -1, rec));
    o.push_back(jit::make_gpr(Op::add_imm, kPf2Reg, -1, rec));
    o.push_back(jit::make_gpr(Op::add_reg, kXReg, kXStride, 0));
    o.push_back(loop_marker(Op::loop_end, kUnitCnt, 0));
    for (int j = 0; j < nf; ++j) o.push_back(jit::make_store(c_.f[size_t(j)], mem(kOutReg, 64 * j, kOut)));
    o.push_back(jit::make_gpr(Op::add_imm, kOutReg, -1, int64_t(nf) * 64));
    o.push_back(jit::make_gpr(Op::add_reg, kWReg, kSkipReg, 0));  // past row 1: w_skip, then a whole row
    o.push_back(jit::make_gpr(Op::add_reg, kWReg, kRowReg, 0));
    next_pair(o);
    o.push_back(loop_marker(Op::loop_end, kRowCnt, 0));
    return p;
  }

  // The genome's permutation of the body, if any: legal iff it keeps every def/use edge (jit::is_legal_order).
  void apply_order(std::vector<Instr>& body) const {
    jit::apply_order(body, c_.genome.order, "kq_gemv: genome of " + c_.id);
  }

  jit::Program program() const {
    jit::Program p;
    p.name = c_.id;
    auto& o = p.code;
    const int64_t rec = layout::record_bytes(f_) * (c_.group4 ? 4 : 1);
    o.push_back(jit::make_gpr(Op::mov_load, kCReg, -1, 0, arg(offsetof(KernelArgs, consts))));
    o.push_back(jit::make_gpr(Op::mov_load, kWReg, -1, 0, arg(offsetof(KernelArgs, w))));
    for (auto [off, r] : c_.const_regs)
      o.push_back(off < 64 ? jit::make_load(Op::vbcast_d, r, cst(off)) : jit::make_load(Op::vload, r, cst(off)));
    o.push_back(jit::make_gpr(Op::mov_load, kOutReg, -1, 0, arg(offsetof(KernelArgs, out))));
    o.push_back(jit::make_gpr(Op::mov_load, kRowCnt, -1, 0, arg(offsetof(KernelArgs, n_rows))));
    o.push_back(jit::make_gpr(Op::mov_load, kSkipReg, -1, 0, arg(offsetof(KernelArgs, w_skip))));
    o.push_back(jit::make_gpr(Op::mov_load, kXStride, -1, 0, arg(offsetof(KernelArgs, x_stride))));
    if (c_.group4 && c_.tail > 0) {
      p.saved_gprs = {kTailStride};
      o.push_back(jit::make_gpr(Op::mov_load, kTailStride, -1, 0, arg(offsetof(KernelArgs, x_tail_stride))));
    }
    o.push_back(loop_marker(Op::loop_begin, kRowCnt, 0));
    o.push_back(jit::make_gpr(Op::mov_load, kXReg, -1, 0, arg(offsetof(KernelArgs, x))));
    o.push_back(jit::make_gpr(Op::mov_load, kUnitCnt, -1, 0, arg(offsetof(KernelArgs, n_units))));
    for (int t = 0; t < T_; ++t)
      o.push_back(c_.zero_init ? jit::make_alu(Op::vpxord, c_.f[size_t(t)], c_.f[size_t(t)], c_.f[size_t(t)])
                               : jit::make_load(Op::vload, c_.f[size_t(t)], mem(kOutReg, 64 * t, kOut)));
    o.push_back(loop_marker(Op::loop_begin, kUnitCnt, c_.genome.loop_align));
    p.hot_begin = o.size();
    std::vector<Instr> hot = hot_body();
    apply_order(hot);
    o.insert(o.end(), hot.begin(), hot.end());
    p.hot_end = o.size();
    o.push_back(jit::make_gpr(Op::add_imm, kWReg, -1, rec));
    o.push_back(jit::make_gpr(Op::add_reg, kXReg, kXStride, 0));
    o.push_back(loop_marker(Op::loop_end, kUnitCnt, 0));
    if (c_.group4 && c_.tail > 0) {  // the row's last units (fewer than 4) by the one-unit body, plain records
      o.push_back(jit::make_gpr(Op::mov_load, kXReg, -1, 0, arg(offsetof(KernelArgs, x_tail))));
      tail_x_ = true;
      for (int k = 0; k < c_.tail; ++k) {
        decode_legacy(o);
        tokens_legacy(o);
        o.push_back(jit::make_gpr(Op::add_imm, kWReg, -1, layout::record_bytes(f_)));
        o.push_back(jit::make_gpr(Op::add_reg, kXReg, kTailStride, 0));
      }
      tail_x_ = false;
    }
    for (int t = 0; t < T_; ++t) o.push_back(jit::make_store(c_.f[size_t(t)], mem(kOutReg, 64 * t, kOut)));
    o.push_back(jit::make_gpr(Op::add_imm, kOutReg, -1, int64_t(T_) * 64));
    o.push_back(jit::make_gpr(Op::add_reg, kWReg, kSkipReg, 0));
    o.push_back(loop_marker(Op::loop_end, kRowCnt, 0));
    return p;
  }

 private:
  const Conf& c_;
  const Format f_;
  const int T_;
  mutable bool tail_x_ = false;  // generating a four-unit kernel's tail: plain activation records
};

}  // namespace

namespace {
// What every AVX-512 kernel's Conf starts from: the format, the rows and the validated genome. `drop_order`: the two-row
// and four-unit kernels take no instruction order (an order permutes the one-row, one-unit body).
Conf conf_of(Format f, int tokens, const Genome& g, bool drop_order) {
  g.validate();
  Conf c;
  c.format = f;
  c.tokens = tokens;
  c.genome = g;
  if (drop_order) c.genome.order.clear();
  return c;
}
}  // namespace

std::string Conf::describe() const {
  const int vregs = int(f.size() + c.size() + c2.size() + sc.size() + temps.size() + const_regs.size()) + (d >= 0) +
                    (dmin >= 0) + (mv >= 0) + (sc2 >= 0) + (mv2 >= 0) + (xr >= 0);
  return fmt::format("{} tokens={} sets={} genome '{}' vregs={}", id, tokens, sets, genome.serialize(), vregs);
}

Conf make_conf(Format fmt_, int tokens, const Genome& g, Path path) {
  if (path == Path::avx2 || path == Path::avx2vnni) return make_conf_avx2(fmt_, tokens, g, path == Path::avx2vnni);
  if (path != Path::avx512vnni) fail("kq_gemv: path {} has no generated kernel", path_name(path));
  if (tokens < 1 || tokens > kMaxTokens) fail("kq_gemv: {} activation rows; a kernel handles 1..{}", tokens, kMaxTokens);
  Conf c = conf_of(fmt_, tokens, g, false);
  int next = 0;
  for (int t = 0; t < tokens; ++t) c.f.push_back(next++);
  const bool k = is_k_quant(fmt_);
  for (int i = 0; i < (k ? 4 : 2); ++i) c.c.push_back(next++);
  if (k) c.sc.push_back(next++);  // the fp32 scale vector D
  c.d = next++;
  if (fmt_ == Format::q4_k || fmt_ == Format::q5_k) c.dmin = next++;
  if (fmt_ == Format::q4_k || fmt_ == Format::q5_k || fmt_ == Format::q4_1) c.mv = next++;
  int left = 32 - next;
  // Per row one S; the decode borrows set 0 for the high bits: three registers for Q5_K, two for Q6_K (since stop 33)
  c.set_size = fmt_ == Format::q5_k ? 3 : fmt_ == Format::q6_k ? 2 : 1;
  c.sets = std::min(2, left / c.set_size);
  if (c.sets < 1) fail("kq_gemv: no register assignment for {} activation rows of {}", tokens, format_name(fmt_));
  left -= c.set_size * c.sets;
  // Constants the hot loop reads, most used first: held in registers while registers remain.
  std::vector<int> wanted = {kMask0F};
  switch (fmt_) {
    case Format::q4_k: wanted.insert(wanted.end(), {kIdxD}); break;
    case Format::q5_k: wanted.insert(wanted.end(), {kIdxD, kMask10, kSh02, kSh13}); break;
    case Format::q6_k: wanted = {kMask30, kMask0F}; break;
    default: break;
  }
  std::vector<int> const_regs;
  for (int off : wanted)
    if (left > 0) {
      const_regs.push_back(off);
      --left;
    }
  c.sets = std::min(4, c.sets + left / c.set_size);
  for (int i = 0; i < c.set_size * c.sets; ++i) c.temps.push_back(next++);
  for (int off : const_regs) c.const_regs.emplace_back(off, next++);
  c.id = fmt::format("kq_gemv_{}_t{}_{}", format_name(fmt_), tokens, g.code_key());
  return c;
}

Conf zero_init(Conf c) {
  if (!c.zero_init) {
    c.zero_init = true;
    c.id += "_z";
  }
  return c;
}

jit::Program build(const Conf& c) {
  if (c.pair) return Builder(c).program_pair();
  return c.path == Path::avx512vnni ? Builder(c).program() : build_avx2(c);
}

bool has_group_kernel(Path path, Format f, int tokens) {
  return path == Path::avx512vnni && !is_k_quant(f) && tokens >= 2 && tokens <= 8;
}

Conf make_conf_group(Format fmt_, int tokens, const Genome& g, int tail) {
  if (!has_group_kernel(Path::avx512vnni, fmt_, tokens))
    fail("kq_gemv: no four-unit kernel for {} activation rows of {}", tokens, format_name(fmt_));
  if (tail < 0 || tail > 3) fail("kq_gemv: a four-unit kernel's tail is 0..3 units, not {}", tail);
  Conf c = conf_of(fmt_, tokens, g, true);
  c.group4 = true;
  c.tail = tail;
  int next = 0;
  for (int t = 0; t < tokens; ++t) c.f.push_back(next++);
  for (int i = 0; i < 8; ++i) c.c.push_back(next++);
  c.d = next++;
  if (fmt_ == Format::q4_1) c.mv = next++;
  if (fmt_ != Format::q8_0) c.const_regs.emplace_back(kMask0F, next++);
  // the transpose's four temporaries, then each row's S (distinct registers where they fit)
  c.set_size = 1;
  c.sets = std::max(4, std::min(tokens <= 4 ? 2 * tokens : tokens, 32 - next));
  for (int i = 0; i < c.sets; ++i) c.temps.push_back(next++);
  if (next > 32) fail("kq_gemv: {} vector registers for a four-unit kernel of {} activation rows", next, tokens);
  c.id = fmt::format("kq_gemv_{}_t{}_g4{}_{}", format_name(fmt_), tokens, tail > 0 ? fmt::format("t{}", tail) : "",
                     c.genome.code_key());
  return c;
}

bool has_pair_kernel(Path path, Format f, int tokens) {
  return path == Path::avx512vnni && is_k_quant(f) && tokens >= 1 && tokens <= 8;
}

Conf make_conf_pair(Format fmt_, int tokens, const Genome& g) {
  if (!has_pair_kernel(Path::avx512vnni, fmt_, tokens))
    fail("kq_gemv: no two-row kernel for {} activation rows of {}", tokens, format_name(fmt_));
  Conf c = conf_of(fmt_, tokens, g, true);
  c.pair = true;
  int next = 0;
  for (int j = 0; j < 2 * tokens; ++j) c.f.push_back(next++);
  for (int i = 0; i < 4; ++i) c.c.push_back(next++);
  for (int i = 0; i < 4; ++i) c.c2.push_back(next++);
  c.sc.push_back(next++);
  c.sc2 = next++;
  const bool q6 = fmt_ == Format::q6_k;
  if (!q6) {  // Q4_K's mins (Q6_K has none)
    c.mv = next++;
    c.mv2 = next++;
  }
  c.xr = next++;
  c.set_size = 2;  // S0, S1
  c.sets = 1;
  for (int i = 0; i < c.set_size; ++i) c.temps.push_back(next++);
  for (int off : q6 ? std::vector<int>{kMask30, kMask0F} : std::vector<int>{kMask0F, kIdxD})
    if (next < 32) c.const_regs.emplace_back(off, next++);
  if (next > 32) fail("kq_gemv: {} vector registers for a two-row kernel of {} activation rows", next, tokens);
  c.id = fmt::format("kq_gemv_{}_t{}_r2_{}", format_name(fmt_), tokens, c.genome.code_key());
  return c;
}

std::vector<jit::Instr> canonical_body(const Conf& c) {
  Conf plain = c;
  plain.genome.order.clear();
  if (c.path != Path::avx512vnni) return hot_body_avx2(plain);
  return Builder(plain).hot_body();
}

const void* kernel_constants() {
  static const Constants k;
  return k.b;
}

}  // namespace genesis::kernels::kq_gemv
