// Def/use and legality on hand-built IR: RAW, WAR, WAW through registers, flags and memory streams; hints free.
#include "jit/ir.h"

#include <gtest/gtest.h>

namespace genesis::jit {
namespace {

Mem m(int base, int disp, int stream, bool bcast = false) {
  Mem x;
  x.base = base;
  x.disp = disp;
  x.stream = stream;
  x.bcast = bcast;
  return x;
}

const int rsi = gpr(6), rdi = gpr(7);

TEST(Ir, RawWarWaw) {
  std::vector<Instr> b = {
      make_load(Op::vload, 1, m(rsi, 0, 1)),            // 0: v1 = load
      make_alu(Op::vpandd, 2, 1, 0),                    // 1: v2 = v1 & v0      RAW on v1
      make_load(Op::vload, 1, m(rsi, 64, 1)),           // 2: v1 = load         WAR (1 reads v1), WAW (0)
      make_alu(Op::vfmadd231ps, 3, 2, 1),               // 3: v3 += v2 * v1     RAW on v1 (2) and v2 (1)
      make_hint(Op::prefetch_t0, m(rsi, 512, 1)),       // 4: hint: reads rsi only
      make_store(3, m(rdi, 0, 4)),                      // 5: store v3
      make_load(Op::vload, 4, m(rdi, 0, 4)),            // 6: load from the stream stored to: RAW via memory
  };
  auto g = def_use(b);
  auto has = [&](int i, int j) {
    for (int p : g.preds[size_t(j)])
      if (p == i) return true;
    return false;
  };
  EXPECT_TRUE(has(0, 1));
  EXPECT_TRUE(has(1, 2));
  EXPECT_TRUE(has(0, 2));
  EXPECT_TRUE(has(2, 3));
  EXPECT_TRUE(has(1, 3));
  EXPECT_TRUE(g.preds[4].empty());
  EXPECT_TRUE(has(3, 5));
  EXPECT_TRUE(has(5, 6));
  EXPECT_FALSE(has(0, 6));  // different streams: no order

  std::vector<uint16_t> ok = {4, 0, 1, 2, 3, 5, 6};
  EXPECT_TRUE(is_legal_order(b, ok));
  std::vector<uint16_t> war = {0, 2, 1, 3, 4, 5, 6};  // load v1 again before its reader
  std::string why;
  EXPECT_FALSE(is_legal_order(b, war, &why));
  EXPECT_NE(why.find("must stay before"), std::string::npos);
  std::vector<uint16_t> mem = {0, 1, 2, 3, 4, 6, 5};  // load before the store it depends on
  EXPECT_FALSE(is_legal_order(b, mem));
  std::vector<uint16_t> dup = {0, 0, 1, 2, 3, 4, 5};
  EXPECT_FALSE(is_legal_order(b, dup));
  std::vector<uint16_t> short_order = {0, 1};
  EXPECT_FALSE(is_legal_order(b, short_order));
}

TEST(Ir, ZeroingIdiomReadsNothing) {
  auto z = make_alu(Op::vpxord, 5, 5, 5);
  EXPECT_EQ(z.reads, 0u);
  EXPECT_EQ(z.writes, uint64_t(1) << 5);
  auto x = make_alu(Op::vpxord, 5, 6, 5);
  EXPECT_NE(x.reads, 0u);
}

TEST(Ir, FlagsOrderScalarAdds) {
  std::vector<Instr> b = {make_gpr(Op::add_imm, gpr(8), -1, 64), make_gpr(Op::add_imm, gpr(9), -1, 64)};
  auto g = def_use(b);
  ASSERT_EQ(g.preds[1].size(), 1u);  // both write flags: WAW keeps them ordered
}

TEST(Ir, AccumulatorChainStaysOrdered) {
  std::vector<Instr> b = {make_alu_mem(Op::vpdpbusd, 7, 1, m(rsi, 0, 2, true)),
                          make_alu_mem(Op::vpdpbusd, 7, 2, m(rsi, 4, 2, true))};
  std::vector<uint16_t> swapped = {1, 0};
  EXPECT_FALSE(is_legal_order(b, swapped));
}

// The integer-dot and bit-merge opcodes the K-quant family uses: accumulators and vpternlogd read their destination,
// conversions and word shifts read only their source, loads read their address register and stream.
TEST(Ir, KQuantOpcodesDefUse) {
  const uint64_t v = 1;
  auto t = make_alu_mem(Op::vpternlogd, 3, 4, m(rsi, 0, 6, true));
  EXPECT_EQ(t.reads, (v << 3) | (v << 4) | (v << rsi));
  EXPECT_EQ(t.writes, v << 3);
  auto d = make_alu(Op::vpdpwssd, 5, 6, 7);
  EXPECT_EQ(d.reads, (v << 5) | (v << 6) | (v << 7));
  auto w = make_alu(Op::vpmaddwd, 5, 6, 7);
  EXPECT_EQ(w.reads, (v << 6) | (v << 7));
  auto c = make_alu(Op::vcvtph2ps, 8, 9, -1);
  EXPECT_EQ(c.reads, v << 9);
  EXPECT_EQ(c.writes, v << 8);
  auto s = make_shift(Op::vpsllw_imm, 8, 9, 4);
  EXPECT_EQ(s.reads, v << 9);
  auto l = make_load(Op::vbcast_64x4, 10, m(rsi, 32, 1));
  EXPECT_TRUE(l.is_load());
  EXPECT_EQ(l.mem_reads, 1u << 1);
  // The chain of two vpternlogd into one register stays ordered; a load after them into their source may not move up.
  std::vector<Instr> b = {make_alu(Op::vpternlogd, 3, 4, 5), make_alu(Op::vpternlogd, 3, 6, 5),
                          make_load(Op::vload, 4, m(rsi, 0, 1))};
  std::vector<uint16_t> swapped = {1, 0, 2}, hoisted = {2, 0, 1};
  EXPECT_FALSE(is_legal_order(b, swapped));
  EXPECT_FALSE(is_legal_order(b, hoisted));
  std::vector<uint16_t> same = {0, 1, 2};
  EXPECT_TRUE(is_legal_order(b, same));
}

}  // namespace
}  // namespace genesis::jit
