// IR bookkeeping: operand roles -> read/write sets, the def/use graph and the legality check for reorders.
#include "jit/ir.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cassert>

#include "common/error.h"

namespace genesis::jit {
namespace {

constexpr int kResources = 64 + 32;  // 64 register bits + 32 memory streams

uint64_t bit(int reg) { return reg < 0 ? 0 : (uint64_t(1) << reg); }

std::string reg_text(int r, int width) {
  if (r < 0) return "?";
  if (r < 32) return fmt::format("{}mm{}", width == 64 ? 'z' : width == 32 ? 'y' : 'x', r);
  static const char* names[] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  if (r >= kGprBase && r < kGprBase + 16) return names[r - kGprBase];
  if (r == kFlags) return "flags";
  return fmt::format("r{}", r);
}

std::string mem_text(const Mem& m) {
  std::string s = fmt::format("[{}{:+#x}]", reg_text(m.base, 8), m.disp);
  if (m.bcast) s += "{1to16}";
  return s;
}

}  // namespace

const char* op_name(Op op) {
  switch (op) {
    case Op::vload: return "vmovdqu8";
    case Op::vzx_b2d: return "vpmovzxbd";
    case Op::vzx_b2w: return "vpmovzxbw";
    case Op::vbcast_d: return "vpbroadcastd";
    case Op::vbcast_w: return "vpbroadcastw";
    case Op::vbcast_q: return "vpbroadcastq";
    case Op::vbcast_64x4: return "vbroadcasti64x4";
    case Op::vsx_b2w: return "vpmovsxbw";
    case Op::vsx_b2d: return "vpmovsxbd";
    case Op::vpandd: return "vpandd";
    case Op::vpxord: return "vpxord";
    case Op::vpsrld_imm: return "vpsrld";
    case Op::vpsrlw_imm: return "vpsrlw";
    case Op::vpshufb: return "vpshufb";
    case Op::vpermps: return "vpermps";
    case Op::vpermw: return "vpermw";
    case Op::vpermb: return "vpermb";
    case Op::vpaddd: return "vpaddd";
    case Op::vpaddw: return "vpaddw";
    case Op::vaddps: return "vaddps";
    case Op::vmulps: return "vmulps";
    case Op::vcvtdq2ps: return "vcvtdq2ps";
    case Op::vcvtph2ps: return "vcvtph2ps";
    case Op::vpsllw_imm: return "vpsllw";
    case Op::vpsraw_imm: return "vpsraw";
    case Op::vpsrlvw: return "vpsrlvw";
    case Op::vpmullw: return "vpmullw";
    case Op::vpmaddubsw: return "vpmaddubsw";
    case Op::vpmaddwd: return "vpmaddwd";
    case Op::vpdpbusd: return "vpdpbusd";
    case Op::vdpbf16ps: return "vdpbf16ps";
    case Op::vfmadd231ps: return "vfmadd231ps";
    case Op::vfnmadd231ps: return "vfnmadd231ps";
    case Op::vpdpwssd: return "vpdpwssd";
    case Op::vpternlogd: return "vpternlogd";
    case Op::vstore: return "vmovups";
    case Op::add_imm: return "add";
    case Op::add_reg: return "add";
    case Op::mov_load: return "mov";
    case Op::mov_reg: return "mov";
    case Op::mov_imm: return "mov";
    case Op::prefetch_t0: return "prefetcht0";
    case Op::prefetch_t1: return "prefetcht1";
    case Op::prefetch_t2: return "prefetcht2";
    case Op::prefetch_nta: return "prefetchnta";
    case Op::nop: return "nop";
    case Op::ud2: return "ud2";
    case Op::loop_begin: return "loop_begin";
    case Op::loop_end: return "loop_end";
    case Op::vpor: return "vpor";
    case Op::vpabsb: return "vpabsb";
    case Op::vpsignb: return "vpsignb";
    case Op::vshufi64x2: return "vshufi64x2";
  }
  return "?";
}

bool Instr::is_hint() const {
  return op == Op::prefetch_t0 || op == Op::prefetch_t1 || op == Op::prefetch_t2 || op == Op::prefetch_nta ||
         op == Op::nop;
}

bool Instr::is_load() const {
  return op == Op::vload || op == Op::vzx_b2d || op == Op::vzx_b2w || op == Op::vbcast_d || op == Op::vbcast_w ||
         op == Op::vbcast_q || op == Op::vbcast_64x4 || op == Op::vsx_b2w ||
         op == Op::vsx_b2d;
}

int Instr::cls() const {
  switch (op) {
    case Op::prefetch_t0:
    case Op::prefetch_t1:
    case Op::prefetch_t2:
    case Op::prefetch_nta: return 1;  // prefetch locality variants
    case Op::vpsrld_imm:
    case Op::vpsrlw_imm: return 2;  // shifts whose results agree on the bits the consumer uses
    default: return 100 + int(op);
  }
}

std::string Instr::text() const {
  const char* n = op_name(op);
  switch (op) {
    case Op::vload:
    case Op::vzx_b2d:
    case Op::vzx_b2w:
    case Op::vbcast_d:
    case Op::vbcast_w:
    case Op::vbcast_q:
    case Op::vbcast_64x4:
    case Op::vsx_b2w:
    case Op::vsx_b2d: return fmt::format("{} {}, {}", n, reg_text(dst, width), mem_text(mem));
    case Op::vcvtph2ps: return fmt::format("{} {}, {}", n, reg_text(dst, width), reg_text(src1, width / 2));
    case Op::vpternlogd:
    case Op::vshufi64x2:
      return fmt::format("{} {}, {}, {}, {:#x}", n, reg_text(dst, width), reg_text(src1, width),
                         has_mem ? mem_text(mem) : reg_text(src2, width), imm);
    case Op::vpsllw_imm:
    case Op::vpsraw_imm:
    case Op::vpsrld_imm:
    case Op::vpsrlw_imm: return fmt::format("{} {}, {}, {}", n, reg_text(dst, width), reg_text(src1, width), imm);
    case Op::vcvtdq2ps:
    case Op::vpabsb: return fmt::format("{} {}, {}", n, reg_text(dst, width), reg_text(src1, width));
    case Op::vstore: return fmt::format("{} {}, {}", n, mem_text(mem), reg_text(src1, width));
    case Op::add_imm: return fmt::format("add {}, {}", reg_text(dst, 8), imm);
    case Op::add_reg: return fmt::format("add {}, {}", reg_text(dst, 8), reg_text(src1, 8));
    case Op::mov_load: return fmt::format("mov {}, qword {}", reg_text(dst, 8), mem_text(mem));
    case Op::mov_reg: return fmt::format("mov {}, {}", reg_text(dst, 8), reg_text(src1, 8));
    case Op::mov_imm: return fmt::format("mov {}, {}", reg_text(dst, 8), imm);
    case Op::prefetch_t0:
    case Op::prefetch_t1:
    case Op::prefetch_t2:
    case Op::prefetch_nta: return fmt::format("{} {}", n, mem_text(mem));
    case Op::nop: return fmt::format("nop{}", imm);
    case Op::loop_begin: return fmt::format("loop_begin {} align={}", reg_text(dst, 8), imm);
    case Op::loop_end: return fmt::format("loop_end {}", reg_text(dst, 8));
    default:
      return fmt::format("{}{} {}, {}, {}", vex ? "{vex} " : "", n, reg_text(dst, width), reg_text(src1, width),
                         has_mem ? mem_text(mem) : reg_text(src2, width));
  }
}

bool has_alternative(const Instr& in) {
  switch (in.op) {
    case Op::prefetch_t0:
    case Op::prefetch_t1:
    case Op::prefetch_t2:
    case Op::prefetch_nta:
    case Op::vpsrld_imm:
    case Op::vpsrlw_imm: return true;
    default: return false;
  }
}

Instr alternative(const Instr& in) {
  Instr out = in;
  switch (in.op) {
    case Op::prefetch_t0: out.op = Op::prefetch_t1; break;
    case Op::prefetch_t1: out.op = Op::prefetch_t2; break;
    case Op::prefetch_t2: out.op = Op::prefetch_nta; break;
    case Op::prefetch_nta: out.op = Op::prefetch_t0; break;
    case Op::vpsrld_imm: out.op = Op::vpsrlw_imm; break;
    case Op::vpsrlw_imm: out.op = Op::vpsrld_imm; break;
    default: break;
  }
  return finalize(out);
}

Instr finalize(Instr in) {
  Instr& i = in;
  i.reads = i.writes = 0;
  i.mem_reads = i.mem_writes = 0;
  const uint64_t base = i.has_mem ? bit(i.mem.base) : 0;
  const uint32_t stream = (i.has_mem && i.mem.stream >= 0) ? (1u << i.mem.stream) : 0;
  switch (i.op) {
    case Op::vload:
    case Op::vzx_b2d:
    case Op::vzx_b2w:
    case Op::vbcast_d:
    case Op::vbcast_w:
    case Op::vbcast_q:
    case Op::vbcast_64x4:
    case Op::vsx_b2w:
    case Op::vsx_b2d:
    case Op::mov_load:
      i.reads = base;
      i.writes = bit(i.dst);
      i.mem_reads = stream;
      break;
    case Op::vpxord:
      if (!i.has_mem && i.src1 == i.dst && i.src2 == i.dst) {  // zeroing idiom
        i.writes = bit(i.dst);
        break;
      }
      [[fallthrough]];
    case Op::vpandd:
    case Op::vpor:
    case Op::vpsignb:
    case Op::vpshufb:
    case Op::vpermps:
    case Op::vpermw:
    case Op::vpermb:
    case Op::vpaddd:
    case Op::vpaddw:
    case Op::vaddps:
    case Op::vmulps:
    case Op::vpsrlvw:
    case Op::vpmullw:
    case Op::vpmaddubsw:
    case Op::vpmaddwd:
    case Op::vshufi64x2:
      i.reads = bit(i.src1) | (i.has_mem ? base : bit(i.src2));
      i.writes = bit(i.dst);
      i.mem_reads = stream;
      break;
    case Op::vpsrld_imm:
    case Op::vpsrlw_imm:
    case Op::vpabsb:
    case Op::vcvtdq2ps:
    case Op::vcvtph2ps:
    case Op::vpsllw_imm:
    case Op::vpsraw_imm:
    case Op::mov_reg:
      i.reads = bit(i.src1);
      i.writes = bit(i.dst);
      break;
    case Op::vpdpbusd:
    case Op::vdpbf16ps:
    case Op::vfmadd231ps:
    case Op::vfnmadd231ps:
    case Op::vpdpwssd:
    case Op::vpternlogd:
      i.reads = bit(i.dst) | bit(i.src1) | (i.has_mem ? base : bit(i.src2));
      i.writes = bit(i.dst);
      i.mem_reads = stream;
      break;
    case Op::vstore:
      i.reads = bit(i.src1) | base;
      i.mem_writes = stream;
      break;
    case Op::add_imm:
      i.reads = bit(i.dst);
      i.writes = bit(i.dst) | bit(kFlags);
      break;
    case Op::add_reg:
      i.reads = bit(i.dst) | bit(i.src1);
      i.writes = bit(i.dst) | bit(kFlags);
      break;
    case Op::mov_imm:
      i.writes = bit(i.dst);
      break;
    case Op::prefetch_t0:
    case Op::prefetch_t1:
    case Op::prefetch_t2:
    case Op::prefetch_nta:
      i.reads = base;  // touches no architectural state: no stream access recorded
      break;
    case Op::nop:
    case Op::loop_begin:
      break;
    case Op::ud2:
      i.writes = ~uint64_t(0);  // a barrier: nothing moves across it
      i.reads = ~uint64_t(0);
      break;
    case Op::loop_end:
      i.reads = bit(i.dst);
      i.writes = bit(i.dst) | bit(kFlags);
      break;
  }
  return in;
}

Instr make_load(Op op, int dst, Mem m, int width) {
  Instr i;
  i.op = op;
  i.dst = dst;
  i.has_mem = true;
  i.mem = m;
  i.width = width;
  return finalize(i);
}

Instr make_alu(Op op, int dst, int src1, int src2, int width) {
  Instr i;
  i.op = op;
  i.dst = dst;
  i.src1 = src1;
  i.src2 = src2;
  i.width = width;
  return finalize(i);
}

Instr make_alu_mem(Op op, int dst, int src1, Mem m, int width) {
  Instr i;
  i.op = op;
  i.dst = dst;
  i.src1 = src1;
  i.has_mem = true;
  i.mem = m;
  i.width = width;
  return finalize(i);
}

Instr make_shift(Op op, int dst, int src1, int imm, int width) {
  Instr i;
  i.op = op;
  i.dst = dst;
  i.src1 = src1;
  i.imm = imm;
  i.width = width;
  return finalize(i);
}

Instr make_store(int src, Mem m, int width) {
  Instr i;
  i.op = Op::vstore;
  i.src1 = src;
  i.has_mem = true;
  i.mem = m;
  i.width = width;
  return finalize(i);
}

Instr make_hint(Op op, Mem m) {
  Instr i;
  i.op = op;
  i.has_mem = true;
  m.stream = -1;
  m.bcast = false;
  i.mem = m;
  return finalize(i);
}

Instr make_nop(int bytes) {
  Instr i;
  i.op = Op::nop;
  i.imm = bytes;
  return finalize(i);
}

Instr make_gpr(Op op, int dst, int src1, int64_t imm, Mem m) {
  Instr i;
  i.op = op;
  i.dst = dst;
  i.src1 = src1;
  i.imm = imm;
  if (m.base >= 0) {
    i.has_mem = true;
    i.mem = m;
  }
  return finalize(i);
}

DepGraph def_use(std::span<const Instr> body) {
  const int n = int(body.size());
  DepGraph g;
  g.preds.assign(size_t(n), {});
  g.succs.assign(size_t(n), {});
  std::array<int, kResources> last_writer;
  last_writer.fill(-1);
  std::array<std::vector<int>, kResources> readers;
  for (int j = 0; j < n; ++j) {
    const Instr& in = body[size_t(j)];
    auto& p = g.preds[size_t(j)];
    auto for_each = [](uint64_t regs, uint32_t streams, auto&& f) {
      for (int r = 0; r < 64; ++r)
        if (regs & (uint64_t(1) << r)) f(r);
      for (int s = 0; s < 32; ++s)
        if (streams & (1u << s)) f(64 + s);
    };
    // RAW
    for_each(in.reads, in.mem_reads, [&](int r) {
      if (last_writer[size_t(r)] >= 0) p.push_back(last_writer[size_t(r)]);
    });
    // WAR and WAW
    for_each(in.writes, in.mem_writes, [&](int r) {
      for (int rd : readers[size_t(r)])
        if (rd != j) p.push_back(rd);
      if (last_writer[size_t(r)] >= 0) p.push_back(last_writer[size_t(r)]);
    });
    for_each(in.writes, in.mem_writes, [&](int r) {
      last_writer[size_t(r)] = j;
      readers[size_t(r)].clear();
    });
    for_each(in.reads, in.mem_reads, [&](int r) { readers[size_t(r)].push_back(j); });
    std::sort(p.begin(), p.end());
    p.erase(std::unique(p.begin(), p.end()), p.end());
    for (int i : p) g.succs[size_t(i)].push_back(j);
    g.edges += p.size();
  }
  return g;
}

bool is_legal_order(std::span<const Instr> body, std::span<const uint16_t> order, std::string* why) {
  const size_t n = body.size();
  if (order.size() != n) {
    if (why) *why = fmt::format("order has {} entries, the body has {}", order.size(), n);
    return false;
  }
  std::vector<int> pos(n, -1);
  for (size_t p = 0; p < n; ++p) {
    if (order[p] >= n || pos[order[p]] != -1) {
      if (why) *why = "order is not a permutation";
      return false;
    }
    pos[order[p]] = int(p);
  }
  const DepGraph g = def_use(body);
  for (size_t j = 0; j < n; ++j)
    for (int i : g.preds[j])
      if (pos[size_t(i)] > pos[j]) {
        if (why)
          *why = fmt::format("instruction {} ({}) must stay before {} ({})", i, body[size_t(i)].text(), j,
                             body[j].text());
        return false;
      }
  return true;
}

void apply_order(std::vector<Instr>& body, std::span<const uint16_t> order, const std::string& what) {
  if (order.empty()) return;
  std::string why;
  if (!is_legal_order(body, order, &why))
    fail("{}: illegal order for this body ({} instructions): {}", what, body.size(), why);
  std::vector<Instr> re;
  re.reserve(body.size());
  for (auto i : order) re.push_back(body[i]);
  body = std::move(re);
}

}  // namespace genesis::jit
