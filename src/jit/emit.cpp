// The only place that knows how an IR opcode becomes x86: one Xbyak call per opcode.
#include "jit/emit.h"

#include <fmt/format.h>
#include <xbyak/xbyak.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common/error.h"
#include "common/util.h"

namespace genesis::jit {
namespace {

class Assembler : public Xbyak::CodeGenerator {
 public:
  explicit Assembler(size_t bytes) : Xbyak::CodeGenerator(bytes, Xbyak::DontSetProtectRWE) {
    setDefaultJmpNEAR(true);
  }

  void emit_program(const Program& p) {
    for (int r : p.saved_gprs) push(Xbyak::Reg64(r - kGprBase));
    std::vector<Xbyak::Label> labels;
    labels.reserve(16);
    std::vector<size_t> open;
    for (const Instr& in : p.code) {
      if (in.op == Op::loop_begin) {
        labels.emplace_back();
        open.push_back(labels.size() - 1);
        if (in.imm > 0) align(int(in.imm));
        L(labels.back());
      } else if (in.op == Op::loop_end) {
        if (open.empty()) fail("jit: loop_end without loop_begin in {}", p.name);
        dec(g(in.dst));
        jnz(labels[open.back()]);
        open.pop_back();
      } else {
        emit(in);
      }
    }
    if (!open.empty()) fail("jit: unclosed loop in {}", p.name);
    for (auto it = p.saved_gprs.rbegin(); it != p.saved_gprs.rend(); ++it) pop(Xbyak::Reg64(*it - kGprBase));
    vzeroupper();
    ret();
  }

 private:
  static Xbyak::Reg64 g(int id) {
    if (id < kGprBase || id >= kGprBase + 16) fail("jit: register id {} is not a general-purpose register", id);
    return Xbyak::Reg64(id - kGprBase);
  }
  static Xbyak::Xmm v(int id, int width) {
    if (id < 0 || id >= 32) fail("jit: register id {} is not a vector register", id);
    if (width == 64) return Xbyak::Zmm(id);
    if (width == 32) return Xbyak::Ymm(id);
    return Xbyak::Xmm(id);
  }
  static Xbyak::Ymm vy(int id, int width) {  // for instructions that exist only at ymm/zmm width
    if (id < 0 || id >= 32) fail("jit: register id {} is not a vector register", id);
    if (width == 64) return Xbyak::Zmm(id);
    return Xbyak::Ymm(id);
  }
  Xbyak::Address m(const Mem& mm, int width) {
    const auto base = g(mm.base);
    if (mm.bcast) return ptr_b[base + mm.disp];
    switch (width) {
      case 64: return zword[base + mm.disp];
      case 32: return yword[base + mm.disp];
      case 16: return xword[base + mm.disp];
      default: return ptr[base + mm.disp];
    }
  }
  // True where the instruction can be VEX-encoded: ymm/xmm width, registers 0..15, no embedded broadcast. The
  // EVEX-only mnemonics (vmovdqu8, vpandd, vpxord, vpord) then become their VEX twins, which compute the same bits,
  // so that the AVX2 kernels run on CPUs without AVX-512.
  static bool vex_ok(const Instr& in) {
    auto low = [](int r) { return r < 16; };
    return in.width <= 32 && low(in.dst) && low(in.src1) && (in.has_mem ? !in.mem.bcast : low(in.src2));
  }
  // The second source: a register or a memory operand.
  template <typename F>
  void with_src2(const Instr& in, int mem_width, F&& f) {
    if (in.has_mem)
      f(m(in.mem, mem_width));
    else
      f(v(in.src2, in.width));
  }

  void emit(const Instr& in) {
    const int w = in.width;
    switch (in.op) {
      case Op::vload:
        if (vex_ok(in))
          vmovdqu(v(in.dst, w), m(in.mem, w));
        else
          vmovdqu8(v(in.dst, w), m(in.mem, w));
        break;
      case Op::vzx_b2d: vpmovzxbd(v(in.dst, w), m(in.mem, w / 4)); break;
      case Op::vzx_b2w: vpmovzxbw(v(in.dst, w), m(in.mem, w / 2)); break;
      case Op::vbcast_d: vpbroadcastd(v(in.dst, w), ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::vbcast_w: vpbroadcastw(v(in.dst, w), ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::vbcast_q: vpbroadcastq(v(in.dst, w), ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::vbcast_64x4:
        if (w != 64) fail("jit: vbroadcasti64x4 needs a zmm destination");
        vbroadcasti64x4(Xbyak::Zmm(in.dst), yword[g(in.mem.base) + in.mem.disp]);
        break;
      case Op::vsx_b2w: vpmovsxbw(v(in.dst, w), m(in.mem, w / 2)); break;
      case Op::vsx_b2d: vpmovsxbd(v(in.dst, w), m(in.mem, w / 4)); break;
      case Op::vpandd:
        if (vex_ok(in))
          with_src2(in, w, [&](const Xbyak::Operand& s) { vpand(v(in.dst, w), v(in.src1, w), s); });
        else
          with_src2(in, w, [&](const Xbyak::Operand& s) { vpandd(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vpxord:
        if (vex_ok(in))
          with_src2(in, w, [&](const Xbyak::Operand& s) { vpxor(v(in.dst, w), v(in.src1, w), s); });
        else
          with_src2(in, w, [&](const Xbyak::Operand& s) { vpxord(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vpsrld_imm: vpsrld(v(in.dst, w), v(in.src1, w), uint8_t(in.imm)); break;
      case Op::vpsrlw_imm: vpsrlw(v(in.dst, w), v(in.src1, w), uint8_t(in.imm)); break;
      case Op::vpor:
        if (vex_ok(in))
          with_src2(in, w, [&](const Xbyak::Operand& s) { vpor(v(in.dst, w), v(in.src1, w), s); });
        else
          with_src2(in, w, [&](const Xbyak::Operand& s) { vpord(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vpabsb: vpabsb(v(in.dst, w), v(in.src1, w)); break;
      case Op::vshufi64x2:
        if (w != 64) fail("jit: vshufi64x2 is generated at zmm width only");
        with_src2(in, w, [&](const Xbyak::Operand& s) {
          vshufi64x2(Xbyak::Zmm(in.dst), Xbyak::Zmm(in.src1), s, uint8_t(in.imm));
        });
        break;
      case Op::vpsignb:
        if (!vex_ok(in)) fail("jit: vpsignb exists only at ymm/xmm width on registers 0..15");
        with_src2(in, w, [&](const Xbyak::Operand& s) { vpsignb(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vpshufb: with_src2(in, w, [&](const Xbyak::Operand& s) { vpshufb(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpermps: with_src2(in, w, [&](const Xbyak::Operand& s) { vpermps(vy(in.dst, w), vy(in.src1, w), s); }); break;
      case Op::vpermw: with_src2(in, w, [&](const Xbyak::Operand& s) { vpermw(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpermb: with_src2(in, w, [&](const Xbyak::Operand& s) { vpermb(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpaddd: with_src2(in, w, [&](const Xbyak::Operand& s) { vpaddd(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpaddw: with_src2(in, w, [&](const Xbyak::Operand& s) { vpaddw(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vaddps: with_src2(in, w, [&](const Xbyak::Operand& s) { vaddps(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vmulps: with_src2(in, w, [&](const Xbyak::Operand& s) { vmulps(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vcvtdq2ps: vcvtdq2ps(v(in.dst, w), v(in.src1, w)); break;
      case Op::vcvtph2ps:
        if (w < 32) fail("jit: vcvtph2ps is emitted at ymm or zmm width");
        vcvtph2ps(v(in.dst, w), v(in.src1, w / 2));
        break;
      case Op::vpsllw_imm: vpsllw(v(in.dst, w), v(in.src1, w), uint8_t(in.imm)); break;
      case Op::vpsraw_imm: vpsraw(v(in.dst, w), v(in.src1, w), uint8_t(in.imm)); break;
      case Op::vpsrlvw: with_src2(in, w, [&](const Xbyak::Operand& s) { vpsrlvw(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpmullw: with_src2(in, w, [&](const Xbyak::Operand& s) { vpmullw(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpmaddubsw:
        with_src2(in, w, [&](const Xbyak::Operand& s) { vpmaddubsw(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vpmaddwd: with_src2(in, w, [&](const Xbyak::Operand& s) { vpmaddwd(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vpdpbusd:
        if (in.vex && !vex_ok(in)) fail("jit: {{vex}} vpdpbusd needs ymm/xmm registers 0..15 and no broadcast");
        with_src2(in, w, [&](const Xbyak::Operand& s) {
          vpdpbusd(v(in.dst, w), v(in.src1, w), s, in.vex ? Xbyak::VexEncoding : Xbyak::EvexEncoding);
        });
        break;
      case Op::vdpbf16ps: with_src2(in, w, [&](const Xbyak::Operand& s) { vdpbf16ps(v(in.dst, w), v(in.src1, w), s); }); break;
      case Op::vfmadd231ps:
        with_src2(in, w, [&](const Xbyak::Operand& s) { vfmadd231ps(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vfnmadd231ps:
        with_src2(in, w, [&](const Xbyak::Operand& s) { vfnmadd231ps(v(in.dst, w), v(in.src1, w), s); });
        break;
      case Op::vpdpwssd:
        if (in.vex && !vex_ok(in)) fail("jit: {{vex}} vpdpwssd needs ymm/xmm registers 0..15 and no broadcast");
        with_src2(in, w, [&](const Xbyak::Operand& s) {
          vpdpwssd(v(in.dst, w), v(in.src1, w), s, in.vex ? Xbyak::VexEncoding : Xbyak::EvexEncoding);
        });
        break;
      case Op::vpternlogd:
        with_src2(in, w, [&](const Xbyak::Operand& s) { vpternlogd(v(in.dst, w), v(in.src1, w), s, uint8_t(in.imm)); });
        break;
      case Op::vstore: vmovups(m(in.mem, w), v(in.src1, w)); break;
      case Op::add_imm: add(g(in.dst), int32_t(in.imm)); break;
      case Op::add_reg: add(g(in.dst), g(in.src1)); break;
      case Op::mov_load: mov(g(in.dst), qword[g(in.mem.base) + in.mem.disp]); break;
      case Op::mov_reg: mov(g(in.dst), g(in.src1)); break;
      case Op::mov_imm: mov(g(in.dst), in.imm); break;
      case Op::prefetch_t0: prefetcht0(ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::prefetch_t1: prefetcht1(ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::prefetch_t2: prefetcht2(ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::prefetch_nta: prefetchnta(ptr[g(in.mem.base) + in.mem.disp]); break;
      case Op::nop: nop(size_t(in.imm), true); break;
      case Op::ud2: ud2(); break;
      case Op::loop_begin:
      case Op::loop_end: break;  // handled by emit_program
    }
  }
};

class XbyakCode : public ExecutableCode {
 public:
  explicit XbyakCode(std::unique_ptr<Assembler> a) : a_(std::move(a)) {}
  const void* entry() const override { return a_->getCode(); }
  size_t size() const override { return a_->getSize(); }

 private:
  std::unique_ptr<Assembler> a_;
};

}  // namespace

std::unique_ptr<ExecutableCode> assemble(const Program& program) {
  // Generous upper bound: the longest EVEX instruction with a 32-bit displacement is under 16 bytes; alignment and
  // nops add at most 64 per loop. Rounded to pages so that protection never touches a neighbour.
  size_t bytes = 16 * program.code.size() + 1024;
  bytes = (bytes + 4095) / 4096 * 4096;
  try {
    auto a = std::make_unique<Assembler>(bytes);
    a->emit_program(program);
    a->ready();              // resolves labels
    a->setProtectModeRE();  // RW -> RX; never RWX (Xbyak applies protection itself only in AutoGrow mode)
    return std::make_unique<XbyakCode>(std::move(a));
  } catch (const Xbyak::Error& e) {
    fail("jit: Xbyak could not assemble {}: {}", program.name, e.what());
  }
}

void maybe_dump(const Program& program, const ExecutableCode& code) {
  auto dir = env("GENESIS_JIT_DUMP");
  if (!dir) return;
  std::error_code ec;
  std::filesystem::create_directories(*dir, ec);
  const std::string base = (std::filesystem::path(*dir) / program.name).string();
  std::ofstream bin(base + ".bin", std::ios::binary);
  bin.write(static_cast<const char*>(code.entry()), std::streamsize(code.size()));
  std::ofstream ir(base + ".ir");
  for (size_t i = 0; i < program.code.size(); ++i) {
    const char* mark = (i >= program.hot_begin && i < program.hot_end) ? "*" : " ";
    ir << mark << " " << program.code[i].text() << "\n";
  }
}

CodeCache& CodeCache::instance() {
  static CodeCache cache;
  return cache;
}

std::shared_ptr<const ExecutableCode> CodeCache::get_or_build(const std::string& key,
                                                              const std::function<Program()>& make) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = map_.find(key); it != map_.end()) return it->second;
  }
  Program p = make();
  std::shared_ptr<const ExecutableCode> code = assemble(p);
  maybe_dump(p, *code);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = map_.emplace(key, code);
  return it->second;
}

size_t CodeCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return map_.size();
}

}  // namespace genesis::jit
