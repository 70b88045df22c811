// Every nf4_gemv path against the fp64 reference within its documented bound, on edge shapes (M = 1, M and K not
// multiples of the tile, K = one block), tokens 1..16 and blocksizes 32..256; schedule variants; random legal
// reorders bit-exact to the canonical order; packing round trip; bad requests as clear errors; and the fallback
// paths under GENESIS_MAX_ISA (run by ctest a second time with the variable set).
#include "kernels/nf4_gemv/nf4_gemv.h"

#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "common/util.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "jit/ir.h"
#include "kernels/nf4_gemv/conf.h"

namespace genesis::kernels::nf4_gemv {
namespace {

struct Case {
  quant::Nf4Matrix w;
  std::vector<float> x;
  std::vector<double> ref;
  int tokens;
};

Case make_case(int64_t M, int64_t K, int tokens, int bs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(size_t(M * K));
  for (auto& v : w) v = g(rng);
  Case c;
  c.w = quant::quantize_nf4(w, M, K, bs);
  c.tokens = tokens;
  c.x.resize(size_t(tokens * K));
  for (auto& v : c.x) v = g(rng);
  c.ref.resize(size_t(tokens * M));
  reference(c.w, c.x.data(), tokens, c.ref.data());
  return c;
}

// Runs `genome` on the case and checks every output against the reference within the path's bound.
void check(const Case& c, const Genome& genome, cpu::ThreadPool* pool = nullptr, std::vector<float>* out = nullptr) {
  const Problem pr{c.w.rows, c.w.cols, c.tokens, c.w.blocksize};
  auto k = get_kernel(pr, genome);
  const PackedWeights pw = pack(c.w, genome.path);
  std::vector<float> y(size_t(c.tokens * c.w.rows), std::nanf(""));
  k->run(pw, c.x.data(), y.data(), pool);
  int bad = 0;
  for (int t = 0; t < c.tokens; ++t)
    for (int64_t m = 0; m < c.w.rows; ++m) {
      const double ref = c.ref[size_t(t * c.w.rows + m)], got = y[size_t(t * c.w.rows + m)];
      const double bound = error_bound(genome.path, c.w, c.x.data(), m, t);
      if (!(std::fabs(got - ref) <= bound) && bad++ < 5)
        ADD_FAILURE() << k->id() << " " << pr.shape() << " tokens=" << c.tokens << " bs=" << c.w.blocksize
                      << " m=" << m << " t=" << t << " got " << got << " ref " << ref << " bound " << bound;
    }
  if (out) *out = std::move(y);
}

std::vector<Path> paths() { return available_paths(); }

TEST(Nf4Gemv, EdgeShapesAllPaths) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 64}, {16, 64}, {17, 128}, {33, 256}, {50, 320}, {64, 512}};
  for (Path p : paths())
    for (auto [M, K] : shapes)
      for (int bs : {32, 64}) {
        if (K % bs) continue;
        check(make_case(M, K, 1, bs, uint32_t(M * 7 + K)), Genome::baseline(p));
      }
}

TEST(Nf4Gemv, KEqualsOneBlockAndLargeBlocks) {
  for (Path p : paths())
    for (int bs : {32, 64, 128, 256}) check(make_case(40, bs, 2, bs, uint32_t(bs)), Genome::baseline(p));
  for (Path p : paths()) check(make_case(20, 4096, 1, 4096, 5), Genome::baseline(p));
  for (Path p : paths()) check(make_case(20, 192, 1, 96, 6), Genome::baseline(p));  // blocksize 96: not a power of 2
}

TEST(Nf4Gemv, TokensOneToSixteen) {
  for (Path p : paths())
    for (int T = 1; T <= kMaxTokens; ++T) check(make_case(35, 256, T, 64, uint32_t(T)), Genome::baseline(p));
}

TEST(Nf4Gemv, ScheduleVariants) {
  for (Path p : paths()) {
    if (!path_is_jit(p)) continue;
    for (int rg : {1, 2, 3, 4})
      for (int acc : {1, 2, 3, 4})
        for (int unroll : {0, 1, 2, 4}) {
          Genome g = Genome::baseline(p);
          g.row_groups = rg;
          g.accs = acc;
          g.unroll = unroll;
          g.bcast_reg = (rg + acc) % 2 == 0;
          g.pf_dist = unroll == 2 ? 512 : 0;
          g.loop_align = unroll == 4 ? 64 : 0;
          for (int T : {1, 5}) check(make_case(16 * 7 + 3, 512, T, 64, uint32_t(rg * 100 + acc * 10 + unroll)), g);
        }
  }
}

TEST(Nf4Gemv, PermbLookup) {
  if (!isa_supports(cpu::host_isa(), Path::avx512_vnni) || !cpu::mayiuse(cpu::Isa::avx512vbmi))
    GTEST_SKIP() << "needs AVX512-VNNI and AVX512-VBMI";
  Genome g = Genome::baseline(Path::avx512_vnni);
  std::vector<float> a, b;
  const Case c = make_case(16 * 3 + 1, 512, 4, 64, 5);
  check(c, g, nullptr, &a);
  g.lut_permb = true;
  check(c, g, nullptr, &b);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));  // same table values: same bits
}

TEST(Nf4Gemv, ThreadPoolSplitMatchesSingleThread) {
  cpu::ThreadPool pool(2);
  for (Path p : paths()) {
    Genome g = Genome::baseline(p);
    if (path_is_jit(p)) g.row_groups = 3;
    const Case c = make_case(16 * 11 + 5, 512, 3, 64, 77);
    std::vector<float> a, b;
    check(c, g, nullptr, &a);
    check(c, g, &pool, &b);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << path_name(p);
  }
}

// Random topological orders of the hot body: same bits as the canonical order.
TEST(Nf4Gemv, RandomLegalReordersAreBitExact) {
  std::mt19937 rng(11);
  for (Path p : paths()) {
    if (!path_is_jit(p)) continue;
    for (int T : {1, 3}) {
      const Case c = make_case(16 * 5 + 2, 256, T, 64, 3);
      Genome g = Genome::baseline(p);
      g.pf_dist = 256;
      std::vector<float> base;
      check(c, g, nullptr, &base);
      const Conf conf = make_conf(Problem{c.w.rows, c.w.cols, T, 64}, g, cpu::host_isa());
      const auto body = canonical_body(conf);
      const auto dep = jit::def_use(body);
      for (int trial = 0; trial < 6; ++trial) {
        std::vector<int> indeg(body.size());
        for (size_t j = 0; j < body.size(); ++j) indeg[j] = int(dep.preds[j].size());
        std::vector<int> ready;
        for (size_t j = 0; j < body.size(); ++j)
          if (indeg[j] == 0) ready.push_back(int(j));
        Genome r = g;
        while (!ready.empty()) {
          const size_t pick = rng() % ready.size();
          const int j = ready[pick];
          ready.erase(ready.begin() + long(pick));
          r.order.push_back(uint16_t(j));
          for (int s : dep.succs[size_t(j)])
            if (--indeg[size_t(s)] == 0) ready.push_back(s);
        }
        for (size_t i = 0; i < body.size(); ++i)  // flip about a third of the replaceable instructions
          if (jit::has_alternative(body[i]) && rng() % 3 == 0) r.alt.push_back(uint16_t(i));
        r.hints = {{int(rng() % body.size()), HintKind::prefetch_t1, Stream::weights, 1024},
                   {int(rng() % body.size()), HintKind::nop, Stream::weights, 1 + int(rng() % 15)}};
        ASSERT_EQ(r.order.size(), body.size());
        std::vector<float> y;
        check(c, r, nullptr, &y);
        EXPECT_EQ(0, std::memcmp(base.data(), y.data(), y.size() * 4)) << kernel_id(r);
      }
    }
  }
}

TEST(Nf4Gemv, PackUnpackRoundTrip) {
  const Case c = make_case(37, 384, 1, 128, 9);
  for (Path p : kAllPaths) {
    const auto back = unpack(pack(c.w, p));
    EXPECT_EQ(back.packed, c.w.packed) << path_name(p);
    EXPECT_EQ(back.absmax, c.w.absmax) << path_name(p);
  }
}

TEST(Nf4Gemv, BadRequestsAreClearErrors) {
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Path p = best_path();
  EXPECT_NE(msg([&] { get_kernel(Problem{64, 100, 1, 64}, Genome::baseline(p)); }).find("not a multiple"),
            std::string::npos);
  EXPECT_NE(msg([&] { get_kernel(Problem{64, 96, 1, 48}, Genome::baseline(p)); }).find("blocksize 48"),
            std::string::npos);
  EXPECT_NE(msg([&] { get_kernel(Problem{64, 128, 17, 64}, Genome::baseline(p)); }).find("17 tokens"),
            std::string::npos);
  Genome faulty = Genome::baseline(p);
  faulty.fault = Fault::crash;
  EXPECT_NE(msg([&] { get_kernel(Problem{64, 128, 1, 64}, faulty); }).find("planted"), std::string::npos);
  if (path_is_jit(p)) {
    Genome bad = Genome::baseline(p);
    const Conf conf = make_conf(Problem{64, 128, 1, 64}, bad, cpu::host_isa());
    const auto body = canonical_body(conf);
    for (size_t i = 0; i < body.size(); ++i) bad.order.push_back(uint16_t(body.size() - 1 - i));  // reversed
    EXPECT_NE(msg([&] { get_kernel(Problem{64, 128, 1, 64}, bad); }).find("illegal order"), std::string::npos);
  }
  // Weights packed for another path.
  const Case c = make_case(16, 64, 1, 64, 1);
  auto k = get_kernel(Problem{16, 64, 1, 64}, Genome::baseline(Path::scalar));
  std::vector<float> y(16);
  if (p != Path::scalar) {
    EXPECT_NE(msg([&] { k->run(pack(c.w, p), c.x.data(), y.data(), nullptr); }).find("packed for path"),
              std::string::npos);
  }
}

TEST(Nf4Gemv, UnavailablePathNamesThePossibleOnes) {
  const cpu::IsaSet none;
  EXPECT_FALSE(isa_supports(none, Path::avx512_vnni));
  EXPECT_THROW(make_conf(Problem{16, 64, 1, 64}, Genome::baseline(Path::avx512_vnni), none), Error);
  for (Path p : kAllPaths) {
    if (isa_supports(cpu::host_isa(), p)) continue;
    try {
      require_path(p);
      ADD_FAILURE() << "require_path accepted " << path_name(p);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("possible paths here"), std::string::npos);
    }
  }
}

// The int8 paths' prepared activations are the scalar formula's bits (q = nearbyint(x * 127 / amax), corr = -128 sum q,
// scale = amax / 16129) whichever quantizer this CPU (or GENESIS_MAX_ISA: the capped ctest runs) uses.
TEST(MaxIsa, Int8ActivationsAreTheScalarFormula) {
  for (Path p : available_paths()) {
    if (!int8_layout(p)) continue;
    const int T = 3, bs = 64;
    const int64_t K = 4 * bs;
    std::mt19937 gen(5);
    std::normal_distribution<float> nd;
    std::vector<float> x(size_t(T * K));
    for (auto& v : x) v = nd(gen);
    for (int i = 0; i < bs; ++i) x[size_t(K + i)] = i == 0 ? 127.0f : float(i % 40) - 19.5f;  // .5 ties
    for (int i = 0; i < bs; ++i) x[size_t(2 * K + bs + i)] = 0.0f;                            // an all-zero block
    PreparedActivations xa;
    get_kernel(Problem{16, K, T, bs}, Genome::baseline(p))->prepare(x.data(), K, xa);
    for (int64_t b = 0; b < K / bs; ++b)
      for (int t = 0; t < T; ++t) {
        const float* src = x.data() + size_t(t * K + b * bs);
        float a = 0;
        for (int i = 0; i < bs; ++i) a = std::max(a, std::fabs(src[i]));
        int32_t sum = 0;
        const auto* q = reinterpret_cast<const int8_t*>(xa.data.data()) + size_t((b * T + t) * bs);
        for (int i = 0; i < bs; ++i) {
          const int v = a == 0 ? 0 : int(std::nearbyint(src[i] * (127.0f / a)));
          ASSERT_EQ(int(q[i]), v) << path_name(p) << " block " << b << " token " << t << " i " << i;
          sum += v;
        }
        int32_t corr;
        float scale;
        std::memcpy(&corr, xa.aux.data() + size_t((b * T + t) * 8), 4);
        std::memcpy(&scale, xa.aux.data() + size_t((b * T + t) * 8 + 4), 4);
        EXPECT_EQ(corr, -128 * sum);
        EXPECT_EQ(scale, a / 16129.0f);
      }
  }
}

// Run by ctest with GENESIS_MAX_ISA=avx2 and =scalar: the capped paths are what remains, and they work.
TEST(MaxIsa, FallbackPathsUnderCap) {
  const auto cap = env("GENESIS_MAX_ISA");
  if (!cap) GTEST_SKIP() << "GENESIS_MAX_ISA not set (ctest runs this with it)";
  const auto av = available_paths();
  for (Path p : av)  // only the AVX2 JIT paths (VEX, ymm) survive the cap among the generated ones
    EXPECT_FALSE(path_is_jit(p) && !is_avx2_jit(p)) << "path " << path_name(p) << " survived GENESIS_MAX_ISA=" << *cap;
  if (*cap == "scalar") {
    ASSERT_EQ(av.size(), 1u);
    EXPECT_EQ(av[0], Path::scalar);
  }
  if (*cap == "avx2" && cpu::detect_isa().has(cpu::Isa::avx2)) {
    const bool fma = cpu::detect_isa().has(cpu::Isa::fma);
    if (fma) {
      EXPECT_EQ(best_path(), cpu::mayiuse_avx_vnni() ? Path::avx2_vnni : Path::avx2_int8);
    }
    EXPECT_NE(std::find(av.begin(), av.end(), Path::avx2), av.end());
  }
  for (Path p : av) {
    check(make_case(33, 256, 1, 64, 1), Genome::baseline(p));
    check(make_case(33, 256, 16, 64, 2), Genome::baseline(p));
  }
  EXPECT_THROW(get_kernel(Problem{16, 64, 1, 64}, Genome::baseline(Path::avx512_vnni)), Error);
}

}  // namespace
}  // namespace genesis::kernels::nf4_gemv
