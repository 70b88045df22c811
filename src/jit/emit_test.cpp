// The emitter: a hand-built program runs and computes what it should; its pages are never writable and
// executable at once; the code cache returns one copy per key; malformed programs are errors.
#include "jit/emit.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "common/error.h"

namespace genesis::jit {
namespace {

// Permissions of the mapping holding `p`, from /proc/self/maps ("r-xp", ...).
std::string perms_of(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto a = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    std::istringstream is(line);
    std::string range, perms;
    is >> range >> perms;
    const auto dash = range.find('-');
    const uintptr_t lo = std::stoull(range.substr(0, dash), nullptr, 16);
    const uintptr_t hi = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (a >= lo && a < hi) return perms;
  }
  return "";
}

// rax = 0; loop 5 times { rax += 3 } ; returns rax (System V: return value in rax).
Program counting_program() {
  Program p;
  p.name = "test_count";
  const int rax = gpr(0), rcx = gpr(1);
  p.code.push_back(make_gpr(Op::mov_imm, rax, -1, 0));
  p.code.push_back(make_gpr(Op::mov_imm, rcx, -1, 5));
  Instr lb;
  lb.op = Op::loop_begin;
  lb.dst = rcx;
  lb.imm = 32;
  p.code.push_back(finalize(lb));
  p.code.push_back(make_gpr(Op::add_imm, rax, -1, 3));
  p.code.push_back(make_nop(7));
  Instr le;
  le.op = Op::loop_end;
  le.dst = rcx;
  p.code.push_back(finalize(le));
  return p;
}

TEST(Emit, RunsAndIsNeverWritableAndExecutable) {
  auto code = assemble(counting_program());
  auto fn = code->as<int64_t (*)(void*)>();
  EXPECT_EQ(fn(nullptr), 15);
  const std::string perms = perms_of(code->entry());
  ASSERT_FALSE(perms.empty());
  EXPECT_EQ(perms.substr(0, 3), "r-x");
  // No mapping of this process is writable and executable at once.
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream is(line);
    std::string range, pr;
    is >> range >> pr;
    EXPECT_FALSE(pr[1] == 'w' && pr[2] == 'x') << line;
  }
}

TEST(Emit, MalformedProgramIsAnError) {
  Program p = counting_program();
  p.code.pop_back();  // drop loop_end
  EXPECT_THROW(assemble(p), Error);
  Program q;
  q.name = "bad_reg";
  q.code.push_back(make_gpr(Op::add_imm, 3 /* a vector register */, -1, 1));
  EXPECT_THROW(assemble(q), Error);
}

TEST(Emit, DumpWritesBytesAndIr) {
  const std::string dir = ::testing::TempDir() + "genesis_jit_dump_test";
  setenv("GENESIS_JIT_DUMP", dir.c_str(), 1);
  auto code = CodeCache::instance().get_or_build("emit_test_dump", [] { return counting_program(); });
  unsetenv("GENESIS_JIT_DUMP");
  std::ifstream bin(dir + "/test_count.bin", std::ios::binary | std::ios::ate);
  ASSERT_TRUE(bin.good());
  EXPECT_EQ(size_t(bin.tellg()), code->size());
  std::ifstream ir(dir + "/test_count.ir");
  std::stringstream ss;
  ss << ir.rdbuf();
  EXPECT_NE(ss.str().find("loop_begin"), std::string::npos);
}

// One instruction's encoding: the first byte of its program (no saved registers, so the instruction comes first).
uint8_t first_byte(const Instr& in) {
  Program p;
  p.name = "test_one";
  p.code.push_back(in);
  auto code = assemble(p);
  return *static_cast<const uint8_t*>(code->entry());
}

bool is_vex(uint8_t b) { return b == 0xC4 || b == 0xC5; }

// The AVX2 kernels run on CPUs without AVX-512: at ymm width with registers 0..15 the EVEX-only mnemonics become
// their VEX twins, and {vex} vpdpbusd / vpdpwssd are VEX (AVX-VNNI); zmm or registers 16..31 stay EVEX (0x62).
TEST(Emit, VexFormsAtYmmWidth) {
  Mem m;
  m.base = gpr(7);
  m.stream = 0;
  EXPECT_TRUE(is_vex(first_byte(make_load(Op::vload, 1, m, 32))));
  EXPECT_TRUE(is_vex(first_byte(make_load(Op::vload, 1, m, 16))));
  EXPECT_EQ(first_byte(make_load(Op::vload, 1, m, 64)), 0x62);
  EXPECT_EQ(first_byte(make_load(Op::vload, 17, m, 32)), 0x62);
  for (Op op : {Op::vpandd, Op::vpxord, Op::vpor}) {
    EXPECT_TRUE(is_vex(first_byte(make_alu(op, 1, 2, 3, 32)))) << op_name(op);
    EXPECT_TRUE(is_vex(first_byte(make_alu_mem(op, 1, 2, m, 32)))) << op_name(op);
    EXPECT_EQ(first_byte(make_alu(op, 1, 2, 3, 64)), 0x62) << op_name(op);
    EXPECT_EQ(first_byte(make_alu(op, 1, 2, 19, 32)), 0x62) << op_name(op);
  }
  for (Op op : {Op::vpdpbusd, Op::vpdpwssd}) {
    Instr v = make_alu(op, 1, 2, 3, 32);
    EXPECT_EQ(first_byte(v), 0x62) << op_name(op);  // EVEX unless asked
    v.vex = true;
    EXPECT_TRUE(is_vex(first_byte(v))) << op_name(op);
    EXPECT_NE(v.text().find("{vex}"), std::string::npos);
    Instr bad = make_alu(op, 1, 2, 20, 32);
    bad.vex = true;
    EXPECT_THROW(first_byte(bad), Error) << op_name(op);
    Instr wide = make_alu(op, 1, 2, 3, 64);
    wide.vex = true;
    EXPECT_THROW(first_byte(wide), Error) << op_name(op);
  }
}

TEST(Emit, CacheBuildsOnce) {
  int builds = 0;
  auto& cc = CodeCache::instance();
  auto a = cc.get_or_build("emit_test_key", [&] {
    ++builds;
    return counting_program();
  });
  auto b = cc.get_or_build("emit_test_key", [&] {
    ++builds;
    return counting_program();
  });
  EXPECT_EQ(builds, 1);
  EXPECT_EQ(a.get(), b.get());
}

}  // namespace
}  // namespace genesis::jit
