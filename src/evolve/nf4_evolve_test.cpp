// The factory on the real nf4_gemv family, with tiny shapes and short timings: random legal mutants bit-exact to
// their parent on every JIT path; planted wrong / crashing / hanging / illegal kernels caught while the search goes
// on; knowledge-base resume after kill -9, dedupe, and bad input as clear errors.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "common/error.h"
#include "common/util.h"
#include "evolve/pipeline.h"
#include "evolve/run.h"
#include "kernels/nf4_gemv/nf4_gemv.h"

namespace genesis::evolve {
namespace {

namespace fs = std::filesystem;
namespace nf = kernels::nf4_gemv;

std::vector<nf::Path> jit_paths() {
  std::vector<nf::Path> out;
  for (auto p : nf::available_paths())
    if (nf::path_is_jit(p)) out.push_back(p);
  return out;
}

std::vector<float> run_kernel(const nf::Problem& pr, const Genome& g, const nf::PackedWeights& pw,
                              const std::vector<float>& x) {
  std::vector<float> y(size_t(pr.tokens * pr.M), std::nanf(""));
  nf::get_kernel(pr, g)->run(pw, x.data(), y.data(), nullptr);
  return y;
}

// Hundreds of random reorder, hint and same-class mutants (walking away from the baseline) compute the same bits as
// their parent.
TEST(Nf4Mutants, ReorderAndHintMutantsAreBitExactToTheirParent) {
  const auto paths = jit_paths();
  if (paths.empty()) GTEST_SKIP() << "no JIT path on this CPU (needs AVX-512)";
  for (auto path : paths)
    for (int tokens : {1, 3}) {
      const nf::Problem pr{16 * 3 + 5, 256, tokens, 64};
      std::mt19937 gen(7);
      std::normal_distribution<float> nd;
      std::vector<float> w(size_t(pr.M * pr.K)), x(size_t(tokens * pr.K));
      for (auto& v : w) v = nd(gen);
      for (auto& v : x) v = nd(gen);
      const auto m = quant::quantize_nf4(w, pr.M, pr.K, 64);
      const auto pw = nf::pack(m, path);
      Mutator mut(nf4_body_fn(pr), nf4_param_space(path));
      Rng rng(uint64_t(int(path) * 10 + tokens));
      Genome parent = Genome::baseline(path);
      parent.pf_dist = 256;  // a body with automatic prefetches too
      auto parent_y = run_kernel(pr, parent, pw, x);
      int checked = 0;
      const Op ops[] = {Op::swap_near, Op::swap_far, Op::move_block, Op::hint_insert, Op::hint_delete,
                        Op::hint_replace, Op::replace};
      // 160 attempts, more where a body's dependency chains refuse many reorders (avx2int8's products are chains of
      // four), until more than 100 mutants were checked
      for (int i = 0; i < 160 || (checked <= 100 && i < 480); ++i) {
        auto child = mut.mutate(parent, ops[i % std::size(ops)], rng);
        if (!child) continue;
        auto y = run_kernel(pr, *child, pw, x);
        ASSERT_EQ(0, std::memcmp(y.data(), parent_y.data(), y.size() * 4))
            << nf::path_name(path) << " tokens=" << tokens << "\nparent " << parent.serialize() << "\nchild  "
            << child->serialize();
        ++checked;
        parent = *child;
        parent_y = std::move(y);
      }
      EXPECT_GT(checked, 100) << nf::path_name(path);
    }
}

class Nf4Factory : public ::testing::Test {
 protected:
  void SetUp() override {
    if (jit_paths().empty()) GTEST_SKIP() << "no JIT path on this CPU (needs AVX-512)";
    dir_ = fs::temp_directory_path() / ("genesis_factory_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  EvolveOptions small(const std::string& budget) const {
    EvolveOptions o;
    o.path = std::string(nf::path_name(jit_paths().front()));
    o.train = {"48x256", "32x512"};
    o.heldout = {"80x192"};
    o.budget = budget;
    o.seed = 5;
    o.kb_path = (dir_ / "kb.sqlite").string();
    o.progress = false;
    o.min_sample_s = 0.0002;
    o.screen_rounds = 3;
    o.full_rounds = 3;
    o.confirm_rounds = 5;
    o.gate_rounds = 5;
    o.timeout_s = 5;
    return o;
  }
  fs::path dir_;
};

Nf4EvalConfig tiny_config(nf::Path path) {
  Nf4EvalConfig c;
  c.path = path;
  c.train = {{48, 256}, {32, 512}};
  c.min_sample_s = 0.0002;
  c.screen_rounds = 3;
  c.full_rounds = 3;
  c.confirm_rounds = 5;
  c.timeout_s = 1.5;
  c.allow_faults = true;
  return c;
}

TEST_F(Nf4Factory, PlantedFaultsAreCaughtAndTheSearchGoesOn) {
  const auto path = jit_paths().front();
  kb::Kb kb((dir_ / "kb.sqlite").string());
  const int64_t run = kb.begin_run("nf4_gemv", "one-plus-one", 1, nlohmann::json::object());
  Nf4Evaluator ev(tiny_config(path), &kb, run);
  Mutator mut(nf4_body_fn(nf::Problem{48, 256, 1, 64}), nf4_param_space(path));
  SearchOptions opt;
  opt.strategy = Strategy::one_plus_one;
  opt.seed = 3;
  opt.max_evals = 12;
  opt.start_fitness = 1.0;
  for (auto f : {nf::Fault::wrong_result, nf::Fault::crash, nf::Fault::hang, nf::Fault::illegal_instruction}) {
    Genome g = Genome::baseline(path);
    g.fault = f;
    opt.seeds.push_back(g);
  }
  auto r = search(Genome::baseline(path), mut, ev, opt);
  EXPECT_EQ(r.evaluations, 12);
  EXPECT_EQ(r.verdicts[int(Verdict::wrong_result)], 1);
  EXPECT_EQ(r.verdicts[int(Verdict::crash)], 2);  // SIGSEGV and SIGILL
  EXPECT_EQ(r.verdicts[int(Verdict::timeout)], 1);
  EXPECT_GE(r.verdicts[int(Verdict::ok)], 8);
  // Each is in the knowledge base with its reason.
  std::map<std::string, std::string> diag;
  for (const auto& c : kb.candidates_of_run(run)) diag[c.verdict] += c.diagnostics + ";";
  EXPECT_NE(diag["crash"].find("SIGSEGV"), std::string::npos) << diag["crash"];
  EXPECT_NE(diag["crash"].find("SIGILL"), std::string::npos) << diag["crash"];
  EXPECT_NE(diag["wrong_result"].find("reference"), std::string::npos) << diag["wrong_result"];
  EXPECT_NE(diag["timeout"].find("killed"), std::string::npos) << diag["timeout"];
  EXPECT_EQ(r.best.fault, nf::Fault::none);
}

// A compiled path (no code genes: only the parameter genes change) runs through the same pipeline; its starting
// genome once failed the static checks, which asked it for a JIT configuration.
TEST_F(Nf4Factory, CompiledPathEvolvesToo) {
  for (const char* path : {"scalar", "avx2"}) {
    const auto av = nf::available_paths();
    if (std::find(av.begin(), av.end(), *nf::parse_path(path)) == av.end()) continue;
    auto opt = small("4");
    opt.path = path;
    opt.seed_from_kb = false;
    opt.heldout.clear();
    nlohmann::json rep;
    ASSERT_NO_THROW(rep = run_evolve(opt)) << path;
    EXPECT_GE(rep["evaluations"], 1) << path;
    EXPECT_EQ(rep["verdicts"].value("invalid", 0), 0) << path << " " << rep["verdicts"].dump();
  }
}

TEST_F(Nf4Factory, RunReportAndDedupe) {
  auto opt = small("10");
  // Not seeded from the knowledge base: a promoted winner of the first run would seed the second differently.
  opt.seed_from_kb = false;
  auto rep = run_evolve(opt);
  EXPECT_EQ(rep["evaluations"], 10);
  EXPECT_EQ(rep["strategy"], "map-elites");
  EXPECT_EQ(rep["seed"], 5);
  EXPECT_EQ(rep["regime"], "both");  // the search's fitness covers hot and cold unless told otherwise
  for (const char* v : {"ok", "wrong_result", "crash", "timeout"}) EXPECT_TRUE(rep["verdicts"].contains(v)) << v;
  EXPECT_TRUE(rep["operators"].contains("swap_near"));
  EXPECT_TRUE(rep["baseline"].contains("genome"));
  EXPECT_TRUE(rep["best"].contains("genome"));
  int heldout = 0, cold = 0;
  for (const auto& s : rep["shapes"]) {
    for (const char* f : {"shape", "set", "regime", "baseline_us", "best_us", "speedup", "ab_wins", "ab_rounds",
                          "promoted"})
      EXPECT_TRUE(s.contains(f)) << f;
    heldout += s["set"] == "heldout";
    cold += s["regime"] == "cold";
  }
  EXPECT_EQ(heldout, 2);  // hot and cold
  EXPECT_EQ(cold, 3);
  // The same run again: every genome is known, nothing is re-run.
  auto again = run_evolve(opt);
  int reused = 0;
  for (const auto& t : again["trace"]) reused += t["reused"].get<bool>();
  EXPECT_EQ(reused, again["evaluations"].get<int>());
  EXPECT_EQ(again["time_split"]["evaluations_run"], 0);
}

TEST_F(Nf4Factory, ResumeAfterKill9LosesNothingFinished) {
  auto opt = small("40");
  opt.strategy = "one-plus-one";
  const std::string kb_path = opt.kb_path;
  const pid_t pid = ::fork();
  if (pid == 0) {
    try {
      run_evolve(opt);
    } catch (...) {
    }
    ::_exit(0);
  }
  // Let it finish some evaluations, then kill -9.
  int64_t before = 0;
  for (int i = 0; i < 400 && before < 8; ++i) {
    ::usleep(20000);
    try {
      kb::Kb kb(kb_path, false);
      before = kb.count_candidates();
    } catch (const Error&) {
    }
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ASSERT_GE(before, 8);
  std::vector<kb::Candidate> kept;
  int64_t run_id = 0;
  {
    kb::Kb kb(kb_path, false);
    ASSERT_EQ(kb.runs().size(), 1u);
    EXPECT_EQ(kb.runs()[0].status, "running");
    run_id = kb.runs()[0].id;
    kept = kb.candidates_of_run(run_id);
  }
  ASSERT_LT(kept.size(), 40u) << "the run finished before it was killed; nothing to resume";
  EvolveOptions resume;
  resume.kb_path = kb_path;
  resume.resume = run_id;
  resume.progress = false;
  auto rep = run_evolve(resume);
  EXPECT_EQ(rep["run_id"], run_id);
  EXPECT_EQ(rep["evaluations"], 40);
  int reused = 0;
  for (const auto& t : rep["trace"]) reused += t["reused"].get<bool>();
  EXPECT_GE(reused, int(kept.size()));  // every finished evaluation came back from the knowledge base
  kb::Kb kb(kb_path, false);
  auto all = kb.candidates_of_run(run_id);
  EXPECT_EQ(all.size(), 40u);
  for (size_t i = 0; i < kept.size(); ++i) {  // untouched, same order
    EXPECT_EQ(all[i].genome_hash, kept[i].genome_hash);
    EXPECT_EQ(all[i].eval_index, kept[i].eval_index);
  }
  EXPECT_EQ(kb.run(run_id)->status, "finished");
  EXPECT_THROW(run_evolve(resume), Error);  // finished runs do not resume
}

TEST_F(Nf4Factory, BadInputIsAClearError) {
  auto expect_error = [&](EvolveOptions o, const std::string& needle) {
    try {
      run_evolve(o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto o = small("5");
  o.family = "fp8-gemm";
  expect_error(o, "unknown kernel family");
  o = small("5");
  o.path = "avx1024";
  expect_error(o, "unknown path");
  o = small("5");
  o.train = {"48by256"};
  expect_error(o, "48by256");
  o = small("5");
  o.train = {"48x100"};
  expect_error(o, "multiple of the blocksize");
  o = small("0");
  expect_error(o, "zero");
  o = small("0m");
  expect_error(o, "zero");
  o = small("5");
  o.strategy = "simulated-annealing";
  expect_error(o, "unknown strategy");
  o = small("5");
  o.regime = "warm";
  expect_error(o, "unknown regime");
  o = small("5");
  o.resume = 99;
  expect_error(o, "no run 99");
  // A knowledge base that is not one.
  const auto junk = (dir_ / "junk.sqlite").string();
  { std::ofstream(junk) << std::string(200, 'j'); }
  o = small("5");
  o.kb_path = junk;
  expect_error(o, "junk.sqlite");
  EXPECT_EQ(fs::file_size(junk), 200u);  // left as it was
}

}  // namespace
}  // namespace genesis::evolve

namespace genesis::evolve {
namespace {

TEST(Gate, LossRule) {
  auto rec = [](double speedup, int wins, int rounds) {
    GateRecord r;
    r.speedup = speedup, r.ab_wins = wins, r.ab_rounds = rounds;
    return r;
  };
  EXPECT_FALSE(gate_loses(rec(1.05, 18, 20)));
  EXPECT_FALSE(gate_loses(rec(0.985, 9, 20)));   // within the noise: neither 2% nor significant
  EXPECT_TRUE(gate_loses(rec(0.97, 9, 20)));     // more than 2% slower, fewer than half the pairs won
  EXPECT_TRUE(gate_loses(rec(0.985, 4, 20)));    // small but consistent: sign test p = 0.006
  EXPECT_FALSE(gate_loses(rec(0.985, 7, 20)));   // p = 0.13
  EXPECT_FALSE(gate_loses(rec(0.995, 0, 20)));   // consistent but under 1%
  GateRecord bad = rec(2.0, 20, 20);
  bad.correct = false;
  EXPECT_TRUE(gate_loses(bad));
}

// --gate search: a cold winner that loses hot is promoted when only the cold regime gates, never when it is wrong
// anywhere, and not under the default (both regimes).
TEST(Gate, SearchRegimeOnly) {
  auto rec = [](const char* regime, double speedup, int wins) {
    GateRecord r;
    r.shape = "64x64", r.set = "heldout", r.regime = regime;
    r.speedup = speedup, r.ab_wins = wins, r.ab_rounds = 20;
    return r;
  };
  GateResult g;
  g.records = {rec("cold", 1.2, 20), rec("hot", 0.7, 0)};
  pipeline::judge_gate(g, false);
  EXPECT_FALSE(g.promoted) << g.reason;
  pipeline::judge_gate(g, false, "cold");
  EXPECT_TRUE(g.promoted) << g.reason;
  pipeline::judge_gate(g, false, "hot");
  EXPECT_FALSE(g.promoted) << g.reason;
  g.records[1].correct = false;  // wrong in the other regime: never promoted
  pipeline::judge_gate(g, false, "cold");
  EXPECT_FALSE(g.promoted) << g.reason;
  g.records[1].correct = true;
  pipeline::judge_gate(g, true, "cold");  // nothing better than the baseline
  EXPECT_FALSE(g.promoted) << g.reason;
}

}  // namespace
}  // namespace genesis::evolve
