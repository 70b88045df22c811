// The factory on its second family, kq_gemv, with small shapes and short timings: reorder mutants bit-exact to their
// parent; a short search finds the baseline correct, rejects planted faulty genomes (wrong result, crash, hang,
// illegal instruction) while it goes on, and stores every candidate under family kq_gemv; a run end to end through
// run_evolve; a promoted genome is the one the runtime serves; bad input as clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "common/error.h"
#include "common/util.h"
#include "evolve/run.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/linear.h"
#include "runtime/model/linear_policy.h"

namespace genesis::evolve {
namespace {

namespace fs = std::filesystem;
namespace kq = kernels::kq_gemv;

bool have_jit() {
  for (auto p : kq::available_paths())
    if (p == kq::Path::avx512vnni) return true;
  return false;
}

KqEvalConfig tiny_kq_config(kq::Format f) {
  KqEvalConfig c;
  c.format = f;
  c.train = {{48, 512}, {32, 1024}};
  c.min_sample_s = 0.0002;
  c.screen_rounds = 3;
  c.full_rounds = 3;
  c.confirm_rounds = 5;
  c.timeout_s = 1.5;
  c.allow_faults = true;
  return c;
}

// Random reorders of the unit loop (walking away from the baseline) compute the same bits as their parent, on a
// K-quant and a legacy format, one and three activation rows; param moves keep every output within the bound.
TEST(KqMutants, ReordersAreBitExactAndParamMovesCorrect) {
  if (!have_jit()) GTEST_SKIP() << "no kq_gemv JIT path on this CPU (needs AVX-512 VNNI)";
  for (auto f : {kq::Format::q4_k, kq::Format::q6_k, kq::Format::q4_0})
    for (int tokens : {1, 3}) {
      SCOPED_TRACE(testing::Message() << kq::format_name(f) << " tokens=" << tokens);
      KqEvalConfig cfg = tiny_kq_config(f);
      cfg.tokens = tokens;
      auto d = KqFamily::make_case(cfg, {37, 512}, 3);
      KqMutator mut(kq_body_fn(f, tokens), kq_param_space(tokens), tokens);
      Rng rng(uint64_t(int(f) * 10 + tokens));
      auto y_of = [&](const KqGenome& g) {
        KqFamily::check(cfg, KqFamily::build(cfg, d, g), d, g, nullptr);  // bound (and bit-exact to its twin)
        return d.y;
      };
      KqGenome parent = KqGenome::baseline();
      auto parent_y = y_of(parent);
      int reorders = 0, params = 0, ordered = 0;
      const Op ops[] = {Op::swap_near, Op::swap_far, Op::move_block, Op::param};
      for (int i = 0; i < 80; ++i) {
        const Op op = ops[i % std::size(ops)];
        auto child = mut.mutate(parent, op, rng);
        if (!child) continue;
        try {
          KqFamily::static_check(cfg, d, *child);
        } catch (const Error& e) {
          FAIL() << e.what() << "\nop " << op_name(op) << "\nparent " << parent.serialize() << "\nchild  "
                 << child->serialize();
        }
        auto y = y_of(*child);
        if (op != Op::param) {
          ASSERT_EQ(0, std::memcmp(y.data(), parent_y.data(), y.size() * 4))
              << "parent " << parent.serialize() << "\nchild  " << child->serialize();
          ++reorders;
        } else {
          ++params;
        }
        parent = *child;
        parent_y = std::move(y);
        ordered += !parent.order.empty();
      }
      EXPECT_GT(reorders, 15);  // with 3 rows, passes of 2 + 1 rows take no order
      EXPECT_GT(params, 10);
      if (tokens == 1) {  // the walk went through ordered genomes (a param move may drop the order again)
        EXPECT_GT(ordered, 10);
      }
      // The family offers no hints and no same-class replacements.
      std::string why;
      EXPECT_FALSE(mut.mutate(parent, Op::hint_insert, rng, &why).has_value());
      EXPECT_NE(why.find("no hint_insert"), std::string::npos) << why;
    }
}

// The Linear seam on a genome with an instruction order (as the factory promotes one): one row of x runs the order
// (bit-exact to the baseline, a reorder), several rows run the same genes without it (an order fits one row's body).
TEST(KqLinearGenome, OrderedGenomeServesOneRowAndSeveral) {
  if (!have_jit()) GTEST_SKIP() << "no kq_gemv JIT path on this CPU (needs AVX-512 VNNI)";
  KqEvalConfig cfg = tiny_kq_config(kq::Format::q5_k);
  auto d = KqFamily::make_case(cfg, {40, 512}, 9);
  KqMutator mut(kq_body_fn(cfg.format, 1), kq_param_space(1), 1);
  Rng rng(11);
  KqGenome g = KqGenome::baseline();
  for (int i = 0; i < 12; ++i)
    if (auto c = mut.mutate(g, i % 2 ? Op::swap_far : Op::move_block, rng)) g = *c;
  ASSERT_FALSE(g.order.empty());
  auto m = std::make_shared<const kq::Matrix>(d.m);
  auto tuned = kq::make_linear(m, g), base = kq::make_linear(m);
  EXPECT_NE(tuned->describe().find("order="), std::string::npos) << tuned->describe();
  std::mt19937 gen(5);
  std::normal_distribution<float> nd;
  for (int n : {1, 5}) {
    std::vector<float> x(size_t(n * 512)), yt(size_t(n * 40)), yb(yt.size());
    for (auto& v : x) v = nd(gen);
    auto at = tuned->new_activations(), ab = base->new_activations();
    tuned->prepare(x.data(), n, *at);
    base->prepare(x.data(), n, *ab);
    tuned->run_rows(*at, yt.data(), 0, 40);
    base->run_rows(*ab, yb.data(), 0, 40);
    EXPECT_EQ(0, std::memcmp(yt.data(), yb.data(), yt.size() * 4)) << n << " rows";
  }
  KqGenome faulty = KqGenome::baseline();
  faulty.fault = kq::Fault::crash;
  EXPECT_THROW(kq::make_linear(m, faulty), Error);
}

class KqFactory : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_jit()) GTEST_SKIP() << "no kq_gemv JIT path on this CPU (needs AVX-512 VNNI)";
    dir_ = fs::temp_directory_path() / ("genesis_kq_factory_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  EvolveOptions small(const std::string& budget) const {
    EvolveOptions o;
    o.family = "kq_gemv";
    o.format = "Q6_K";
    o.train = {"48x512", "32x1024"};
    o.heldout = {"80x256"};
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

TEST_F(KqFactory, ShortSearchFindsBaselineCorrectRejectsPlantedFaultsStoresUnderKqGemv) {
  kb::Kb kb((dir_ / "kb.sqlite").string());
  const int64_t run = kb.begin_run("kq_gemv", "one-plus-one", 1, nlohmann::json::object());
  const KqEvalConfig cfg = tiny_kq_config(kq::Format::q4_k);
  KqEvaluator ev(cfg, &kb, run);
  KqMutator mut(kq_body_fn(cfg.format, cfg.tokens), kq_param_space(cfg.tokens), cfg.tokens);
  SearchOptionsOf<KqGenome> opt;
  opt.strategy = Strategy::one_plus_one;
  opt.seed = 3;
  opt.max_evals = 12;
  opt.start_fitness = 1.0;
  for (auto f : {kq::Fault::wrong_result, kq::Fault::crash, kq::Fault::hang, kq::Fault::illegal_instruction}) {
    KqGenome g = KqGenome::baseline();
    g.fault = f;
    opt.seeds.push_back(g);
  }
  auto r = search(KqGenome::baseline(), mut, ev, opt);
  EXPECT_EQ(r.evaluations, 12);
  EXPECT_EQ(r.verdicts[int(Verdict::wrong_result)], 1);
  EXPECT_EQ(r.verdicts[int(Verdict::crash)], 2);  // SIGSEGV and SIGILL
  EXPECT_EQ(r.verdicts[int(Verdict::timeout)], 1);
  EXPECT_GE(r.verdicts[int(Verdict::ok)], 8);
  EXPECT_EQ(r.best.fault, kq::Fault::none);
  ASSERT_FALSE(r.trace.empty());
  EXPECT_EQ(r.trace[0].origin, "baseline");
  EXPECT_EQ(r.trace[0].verdict, Verdict::ok);  // the baseline passes the correctness gate
  // Every candidate is in the knowledge base under kq_gemv, its path key naming the format, with its reason.
  std::map<std::string, std::string> diag;
  const auto cands = kb.candidates_of_run(run);
  EXPECT_EQ(cands.size(), 12u);
  for (const auto& c : cands) {
    EXPECT_EQ(c.family, "kq_gemv");
    EXPECT_EQ(c.path, "avx512vnni/Q4_K");
    EXPECT_EQ(c.shape, "48x512+32x1024");
    EXPECT_EQ(c.genome_hash, hex64(KqGenome::parse(c.genome).hash()));
    diag[c.verdict] += c.diagnostics + ";";
  }
  EXPECT_NE(diag["crash"].find("SIGSEGV"), std::string::npos) << diag["crash"];
  EXPECT_NE(diag["crash"].find("SIGILL"), std::string::npos) << diag["crash"];
  EXPECT_NE(diag["wrong_result"].find("reference"), std::string::npos) << diag["wrong_result"];
  EXPECT_NE(diag["timeout"].find("killed"), std::string::npos) << diag["timeout"];
  // Without allow_faults a planted genome is refused before anything runs, and run_rows refuses it too.
  KqEvalConfig strict = cfg;
  strict.allow_faults = false;
  KqEvaluator ev2(strict, nullptr, 0);
  KqGenome bad = KqGenome::baseline();
  bad.fault = kq::Fault::wrong_result;
  EXPECT_EQ(ev2.evaluate(bad, 0, KqGenome::baseline(), 1.0).verdict, Verdict::invalid);
  auto d = KqFamily::make_case(cfg, {16, 256}, 1);
  EXPECT_THROW(kq::run_rows(d.m, d.a, d.y.data(), 16, 0, 16, kq::Path::avx512vnni, bad), Error);
}

TEST_F(KqFactory, RunEndToEndDedupeAndTheRuntimeServesAPromotedGenome) {
  auto opt = small("8");
  opt.seed_from_kb = false;
  auto rep = run_evolve(opt);
  EXPECT_EQ(rep["family"], "kq_gemv");
  EXPECT_EQ(rep["format"], "Q6_K");
  EXPECT_EQ(rep["kb_path_key"], "avx512vnni/Q6_K");
  EXPECT_EQ(rep["evaluations"], 8);
  int heldout = 0, cold = 0;
  for (const auto& s : rep["shapes"]) {
    heldout += s["set"] == "heldout";
    cold += s["regime"] == "cold";
    EXPECT_GT(s["best_gb_s"].get<double>(), 0.0);
  }
  EXPECT_EQ(heldout, 2);  // hot and cold
  EXPECT_EQ(cold, 3);
  {
    kb::Kb kb(opt.kb_path, false);
    for (const auto& c : kb.candidates_of_run(rep["run_id"])) EXPECT_EQ(c.family, "kq_gemv");
  }
  // The same run again: every genome is known, nothing is re-run.
  auto again = run_evolve(opt);
  EXPECT_EQ(again["time_split"]["evaluations_run"], 0);

  // A best record (as a promoted run stores it) is what the runtime's policy serves for that format and shape. In a
  // knowledge base of its own: the run above may have promoted a genome of its own (timing decides), which would be
  // the nearest record for some shapes.
  const std::string serve_kb = (dir_ / "serve.sqlite").string();
  KqGenome tuned = KqGenome::baseline();
  tuned.pf_dist = 2048;
  tuned.row_chunk = 16;
  {
    kb::Kb kb(serve_kb);
    kb::Best b;
    b.family = "kq_gemv";
    b.path = "avx512vnni/Q6_K";
    b.shape = "48x512";
    b.genome = tuned.serialize();
    b.genome_hash = hex64(tuned.hash());
    b.speedup = 1.1;
    ASSERT_TRUE(kb.offer_best(b));
  }
  bool was_tuned = false;
  EXPECT_EQ(runtime::genome_for(kq::Format::q6_k, 48, 512, kq::Path::avx512vnni, serve_kb, &was_tuned), tuned);
  EXPECT_TRUE(was_tuned);
  // Another shape of that format: the nearest record's genome (the gate checked it on held-out shapes).
  EXPECT_EQ(runtime::genome_for(kq::Format::q6_k, 4096, 2048, kq::Path::avx512vnni, serve_kb, &was_tuned), tuned);
  EXPECT_TRUE(was_tuned);
  // Another format: its baseline with the record's prefetch genes (distance, kind, ramp), not its other genes.
  KqGenome borrowed = KqGenome::baseline();
  borrowed.pf_dist = 2048;
  EXPECT_EQ(runtime::genome_for(kq::Format::q4_k, 48, 512, kq::Path::avx512vnni, serve_kb, &was_tuned), borrowed);
  EXPECT_FALSE(was_tuned);
  EXPECT_EQ(runtime::genome_for(kq::Format::q4_k, 48, 512, kq::Path::avx2, serve_kb, &was_tuned),
            KqGenome::baseline());  // another path: baseline
  EXPECT_FALSE(was_tuned);
  EXPECT_EQ(runtime::genome_for(kq::Format::q6_k, 48, 512, kq::Path::avx512vnni, "", &was_tuned),
            KqGenome::baseline());  // no knowledge base
  EXPECT_FALSE(was_tuned);
}

TEST_F(KqFactory, BadInputIsAClearError) {
  auto expect_error = [&](EvolveOptions o, const std::string& needle) {
    try {
      run_evolve(o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto o = small("5");
  o.format = "Q3_K";
  expect_error(o, "unknown format 'Q3_K'");
  o = small("5");
  o.train = {"48x300"};
  expect_error(o, "not a multiple of Q6_K's block of 256");
  o = small("5");
  o.heldout = {"48x100"};
  expect_error(o, "48x100");
  o = small("5");
  o.path = "avx1024";
  expect_error(o, "unknown path 'avx1024' for kq_gemv");
  o = small("5");
  o.tokens = 17;
  expect_error(o, "tokens 17");
  o = small("5");
  o.family = "nf4_gemv";
  o.format = "Q4_K";
  expect_error(o, "not nf4_gemv's");
  EXPECT_THROW(KqGenome::parse("pf=4096 fault=melt"), Error);
}

}  // namespace
}  // namespace genesis::evolve
