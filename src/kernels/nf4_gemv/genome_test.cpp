// Genome text form, validation and hashing.
#include "kernels/nf4_gemv/genome.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace genesis::kernels::nf4_gemv {
namespace {

TEST(Genome, RoundTrip) {
  for (Path p : kAllPaths) {
    Genome g = Genome::baseline(p);
    EXPECT_EQ(Genome::parse(g.serialize()), g) << g.serialize();
  }
  Genome g = Genome::baseline(Path::avx512_vnni);
  g.row_groups = 2;
  g.accs = 4;
  g.pf_dist = 512;
  g.pf_kind = HintKind::prefetch_nta;
  g.bcast_reg = true;
  g.loop_align = 32;
  g.order = {2, 0, 1};
  g.alt = {0, 2};
  g.hints = {{1, HintKind::prefetch_t1, Stream::activations, 256}, {3, HintKind::nop, Stream::weights, 5}};
  g.fault = Fault::hang;
  const Genome back = Genome::parse(g.serialize());
  EXPECT_EQ(back, g);
  EXPECT_EQ(back.hash(), g.hash());
  EXPECT_NE(g.hash(), Genome::baseline(Path::avx512_vnni).hash());
  EXPECT_EQ(kernel_id(g).rfind("nf4_gemv__avx512vnni__", 0), 0u);
  EXPECT_EQ(g.short_hash().size(), 6u);
}

TEST(Genome, BadTextNamesTheField) {
  auto msg = [](const char* text) {
    try {
      Genome::parse(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string base = "path=avx512vnni rg=1 acc=2 unroll=0 pf=0:t0 bc=0 align=0 order=- hints=-";
  EXPECT_EQ(msg(base.c_str()), "no error");
  EXPECT_NE(msg("path=avx9 rg=1 acc=2 unroll=0 pf=0:t0 bc=0 align=0 order=- hints=-").find("avx9"), std::string::npos);
  EXPECT_NE(msg("path=avx512vnni rg=9 acc=2 unroll=0 pf=0:t0 bc=0 align=0 order=- hints=-").find("row_groups"),
            std::string::npos);
  EXPECT_NE(msg("path=avx512vnni rg=1 acc=2 unroll=0 pf=0:t0 bc=0 align=0 order=0,0 hints=-").find("permutation"),
            std::string::npos);
  EXPECT_NE(msg("path=avx512vnni rg=1 acc=2 pf=0:t0 bc=0 align=0 order=- hints=-").find("unroll"), std::string::npos);
  EXPECT_NE(msg("path=avx512vnni rg=1 acc=x unroll=0 pf=0:t0 bc=0 align=0 order=- hints=-").find("acc"),
            std::string::npos);
  EXPECT_NE(msg("path=scalar rg=1 acc=1 unroll=0 pf=0:t0 bc=0 align=0 order=1,0 hints=-").find("compiled"),
            std::string::npos);
}

}  // namespace
}  // namespace genesis::kernels::nf4_gemv
