// Strategies and operators on a synthetic, deterministic fitness with a planted optimum; the sandbox on planted
// crashing, hanging and wrong workers. No kernel runs here (see nf4_evolve_test.cpp for the real family).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <thread>

#include "common/error.h"
#include "evolve/search.h"

namespace genesis::evolve {
namespace {

using kernels::nf4_gemv::Hint;
using kernels::nf4_gemv::HintKind;
using kernels::nf4_gemv::Path;
using kernels::nf4_gemv::Stream;

// 4 loads -> 4 converts -> a chain of 4 accumulates, then a pointer bump that must follow every load (WAR).
BodyModel synthetic_body() {
  BodyModel b;
  auto add = [&](std::string t, std::vector<uint16_t> preds, int cls, bool load) {
    b.text.push_back(std::move(t));
    b.preds.push_back(std::move(preds));
    b.cls.push_back(cls);
    b.is_load.push_back(load);
  };
  for (uint16_t i = 0; i < 4; ++i) add("load" + std::to_string(i), {}, 0, true);
  for (uint16_t i = 0; i < 4; ++i) add("cvt" + std::to_string(i), {i}, 1, false);
  for (uint16_t i = 0; i < 4; ++i) {
    std::vector<uint16_t> p{uint16_t(4 + i)};
    if (i > 0) p.push_back(uint16_t(8 + i - 1));
    add("acc" + std::to_string(i), p, 2, false);
  }
  add("bump", {0, 1, 2, 3}, 3, false);
  return b;
}

ParamSpace synthetic_space() {
  ParamSpace s = param_space(Path::avx512_vnni);
  s.unroll = {0};
  s.max_hints = 4;
  return s;
}

Genome planted_optimum() {
  Genome g = Genome::baseline(Path::avx512_vnni);
  g.accs = 4;
  g.row_groups = 2;
  g.pf_dist = 512;
  g.loop_align = 32;
  g.order = {0, 1, 4, 2, 8, 5, 3, 9, 6, 12, 10, 7, 11};  // interleaved, legal
  g.hints = {Hint{3, HintKind::prefetch_t1, Stream::weights, 256}};
  return g;
}

// Deterministic fitness, maximal exactly at planted_optimum(); smooth enough to climb.
double synthetic_fitness(const Genome& g) {
  const Genome t = planted_optimum();
  double f = 1.0;
  f += 0.05 * ((g.accs == t.accs) + (g.row_groups == t.row_groups) + (g.pf_dist == t.pf_dist) +
               (g.loop_align == t.loop_align) + (g.bcast_reg == t.bcast_reg) + (g.pf_kind == t.pf_kind));
  auto o = order_of(g, 13);
  std::vector<int> pos(13), tpos(13);
  for (int p = 0; p < 13; ++p) pos[o[p]] = p, tpos[t.order[p]] = p;
  double dist = 0;
  for (int i = 0; i < 13; ++i) dist += std::abs(pos[i] - tpos[i]);
  f += 0.3 * (1.0 - dist / 84.0);
  double best_hint = 0;
  for (const auto& h : g.hints) {
    if (h.kind == HintKind::nop || h.stream != Stream::weights) continue;
    double v = 0.1 * (1.0 - std::abs(h.pos - 3) / 13.0) * (h.kind == HintKind::prefetch_t1 ? 1.0 : 0.6) *
               (1.0 - std::abs(h.offset - 256) / 4096.0);
    best_hint = std::max(best_hint, v);
  }
  f += best_hint - 0.01 * double(g.hints.size());
  return f;
}

class SyntheticEvaluator : public Evaluator {
 public:
  Outcome evaluate(const Genome& cand, int64_t, const Genome&, double incumbent_fitness) override {
    ++calls;
    Outcome o;
    o.fitness = synthetic_fitness(cand);
    o.promoted = o.fitness > incumbent_fitness + 1e-12;
    sequence.push_back(cand.hash());
    return o;
  }
  int64_t calls = 0;
  std::vector<uint64_t> sequence;
};

Mutator synthetic_mutator() {
  return Mutator([](const Genome&) { return synthetic_body(); }, synthetic_space());
}

TEST(Body, LegalityFollowsDependencies) {
  auto b = synthetic_body();
  EXPECT_TRUE(b.legal(planted_optimum().order));
  std::vector<uint16_t> bad = {4, 0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12};  // cvt0 before load0
  std::string why;
  EXPECT_FALSE(b.legal(bad, &why));
  EXPECT_NE(why.find("cvt0"), std::string::npos) << why;
  std::vector<uint16_t> not_perm = {0, 0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12};
  EXPECT_FALSE(b.legal(not_perm));
  EXPECT_GT(b.load_to_use(planted_optimum().order), b.load_to_use({}) - 10);
}

TEST(Mutator, HundredsOfMutantsAreLegalAndValid) {
  auto m = synthetic_mutator();
  Rng rng(11);
  Genome g = Genome::baseline(Path::avx512_vnni);
  int made = 0;
  for (int i = 0; i < 600; ++i) {
    Op op = Op(i % kOpCount);
    auto c = m.mutate(g, op, rng);
    if (!c) continue;
    ++made;
    EXPECT_NO_THROW(c->validate());
    std::string why;
    EXPECT_TRUE(synthetic_body().legal(c->order, &why)) << why;
    EXPECT_EQ(c->fault, kernels::nf4_gemv::Fault::none);
    EXPECT_NO_THROW(Genome::parse(c->serialize()));
    if (rng.chance(0.7)) g = *c;  // walk, so later mutants start from reordered, hinted parents
  }
  EXPECT_GT(made, 400);
}

TEST(Mutator, CrossoverKeepsDependencies) {
  auto m = synthetic_mutator();
  Rng rng(5);
  Genome a = Genome::baseline(Path::avx512_vnni), b = a;
  for (int i = 0; i < 40; ++i) {
    if (auto c = m.mutate(a, Op::swap_far, rng)) a = *c;
    if (auto c = m.mutate(b, Op::move_block, rng)) b = *c;
  }
  for (int i = 0; i < 200; ++i) {
    auto c = m.crossover(a, b, rng);
    ASSERT_TRUE(c.has_value());
    EXPECT_TRUE(synthetic_body().legal(c->order));
  }
  Genome other = a;
  other.accs = 4;
  EXPECT_FALSE(m.crossover(a, other, rng).has_value());
}

void expect_finds_optimum(Strategy s) {
  auto m = synthetic_mutator();
  SyntheticEvaluator ev;
  SearchOptions opt;
  opt.strategy = s;
  opt.seed = 42;
  opt.max_evals = 6000;
  auto r = search(Genome::baseline(Path::avx512_vnni), m, ev, opt);
  const double target = synthetic_fitness(planted_optimum());
  EXPECT_NEAR(r.best_fitness, target, 1e-9) << strategy_name(s) << " best " << r.best.serialize();
  EXPECT_EQ(r.best, planted_optimum()) << r.best.serialize();
  EXPECT_LE(r.evaluations, opt.max_evals);
  int64_t proposed = 0;
  for (auto& st : r.ops) {
    EXPECT_LE(st.legal, st.proposed);
    EXPECT_LE(st.correct, st.legal);
    EXPECT_LE(st.improved, st.correct);
    proposed += st.proposed;
  }
  EXPECT_GT(proposed, 0);
}

TEST(Search, OnePlusOneFindsPlantedOptimum) { expect_finds_optimum(Strategy::one_plus_one); }
TEST(Search, MapElitesFindsPlantedOptimum) { expect_finds_optimum(Strategy::map_elites); }

TEST(Search, SameSeedSameSequence) {
  for (auto s : {Strategy::one_plus_one, Strategy::map_elites}) {
    auto m = synthetic_mutator();
    SyntheticEvaluator a, b, c;
    SearchOptions opt;
    opt.strategy = s;
    opt.seed = 9;
    opt.max_evals = 300;
    search(Genome::baseline(Path::avx512_vnni), m, a, opt);
    search(Genome::baseline(Path::avx512_vnni), m, b, opt);
    opt.seed = 10;
    search(Genome::baseline(Path::avx512_vnni), m, c, opt);
    EXPECT_EQ(a.sequence, b.sequence);
    EXPECT_NE(a.sequence, c.sequence);
  }
}

TEST(Search, MapElitesUsesArchiveCrossoverAndRestarts) {
  auto m = synthetic_mutator();
  SyntheticEvaluator ev;
  SearchOptions opt;
  opt.strategy = Strategy::map_elites;
  opt.seed = 3;
  opt.max_evals = 3000;
  opt.stagnation = 40;
  auto r = search(Genome::baseline(Path::avx512_vnni), m, ev, opt);
  EXPECT_GT(r.archive_cells, 5);
  EXPECT_GT(r.crossovers, 0);
  EXPECT_GT(r.restarts, 0);
}

TEST(Search, ZeroBudgetIsAnError) {
  auto m = synthetic_mutator();
  SyntheticEvaluator ev;
  SearchOptions opt;
  opt.max_evals = 0;
  opt.max_seconds = 0;
  EXPECT_THROW(search(Genome::baseline(Path::avx512_vnni), m, ev, opt), Error);
}

TEST(Sandbox, ClassifiesEveryOutcome) {
  auto ok = run_sandboxed([] { return std::string("fine"); }, 5);
  EXPECT_EQ(ok.verdict, Verdict::ok);
  EXPECT_EQ(ok.payload, "fine");

  auto segv = run_sandboxed(
      [] {
        volatile int* p = nullptr;
        *p = 1;
        return std::string();
      },
      5);
  EXPECT_EQ(segv.verdict, Verdict::crash);
  EXPECT_NE(segv.diagnostics.find("SIGSEGV"), std::string::npos) << segv.diagnostics;

  auto ill = run_sandboxed(
      [] {
        __builtin_trap();
        return std::string();
      },
      5);
  EXPECT_EQ(ill.verdict, Verdict::crash);
  EXPECT_NE(ill.diagnostics.find("SIGILL"), std::string::npos) << ill.diagnostics;

  auto bus = run_sandboxed(
      [] {
        ::raise(SIGBUS);
        return std::string();
      },
      5);
  EXPECT_EQ(bus.verdict, Verdict::crash);
  EXPECT_NE(bus.diagnostics.find("SIGBUS"), std::string::npos) << bus.diagnostics;

  auto hang = run_sandboxed(
      [] {
        for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return std::string();
      },
      0.3);
  EXPECT_EQ(hang.verdict, Verdict::timeout);
  EXPECT_LT(hang.wall_s, 3.0);

  auto wrong = run_sandboxed(
      []() -> std::string { throw WrongResult{"y[3] = 1.5, expected 2.0"}; }, 5);
  EXPECT_EQ(wrong.verdict, Verdict::wrong_result);
  EXPECT_EQ(wrong.diagnostics, "y[3] = 1.5, expected 2.0");

  auto invalid = run_sandboxed([]() -> std::string { fail("unroll 3 not possible"); }, 5);
  EXPECT_EQ(invalid.verdict, Verdict::invalid);

  // A large answer crosses the pipe whole.
  auto big = run_sandboxed([] { return std::string(300000, 'x'); }, 5);
  EXPECT_EQ(big.payload.size(), 300000u);
}

// A search whose evaluator runs every candidate in the sandbox, with planted crashing, hanging and wrong genomes:
// each is recorded with its verdict and the search goes on to the optimum.
class SandboxedSyntheticEvaluator : public Evaluator {
 public:
  Outcome evaluate(const Genome& cand, int64_t, const Genome&, double incumbent_fitness) override {
    auto r = run_sandboxed(
        [&]() -> std::string {
          for (const auto& h : cand.hints) {
            if (h.kind == HintKind::nop && h.offset == 13) {
              volatile int* p = nullptr;
              *p = 0;
            }
            if (h.kind == HintKind::nop && h.offset == 14)
              for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(5));
            if (h.kind == HintKind::nop && h.offset == 15) throw WrongResult{"planted wrong result"};
          }
          return std::to_string(synthetic_fitness(cand));
        },
        0.2);
    Outcome o;
    o.verdict = r.verdict;
    o.diagnostics = r.diagnostics;
    if (r.verdict == Verdict::ok) {
      o.fitness = std::stod(r.payload);
      o.promoted = o.fitness > incumbent_fitness + 1e-12;
    }
    return o;
  }
};

TEST(Search, PlantedFaultsAreCaughtAndSearchGoesOn) {
  auto m = synthetic_mutator();
  SandboxedSyntheticEvaluator ev;
  SearchOptions opt;
  opt.strategy = Strategy::one_plus_one;
  opt.seed = 42;
  opt.max_evals = 250;
  Genome start = Genome::baseline(Path::avx512_vnni);
  // Seeds carrying each planted fault are evaluated first, through the same path as any candidate.
  for (int len : {13, 14, 15}) {
    Genome s = start;
    s.hints = {Hint{0, HintKind::nop, Stream::weights, len}};
    opt.seeds.push_back(s);
  }
  auto r = search(start, m, ev, opt);
  EXPECT_GE(r.verdicts[int(Verdict::crash)], 1);
  EXPECT_GE(r.verdicts[int(Verdict::timeout)], 1);
  EXPECT_GE(r.verdicts[int(Verdict::wrong_result)], 1);
  EXPECT_EQ(r.evaluations, 250);
  EXPECT_GT(r.best_fitness, synthetic_fitness(start));
}

}  // namespace
}  // namespace genesis::evolve
