// The factory's run driver (run.h).
#include "evolve/run.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

#include "common/error.h"
#include "common/util.h"
#include "evolve/pipeline.h"

namespace genesis::evolve {

namespace nf = kernels::nf4_gemv;
using nlohmann::json;

// The products the runtime runs for these experts: gate and up fused into one [2 * inter, hidden] matrix, then down.
// (Tuning 768x2048 would tune a shape the runtime never asks the knowledge base for.)
std::vector<std::string> default_train_shapes(const std::string& family) {
  // kq_gemv: Qwen3-30B-A3B (hidden 2048, expert 768, 32 query heads and 4 KV heads of 128) as a GGUF stores it:
  // experts' fused gate_up and down, attention q and o.
  if (canonical_family(family) == "kq_gemv") return {"1536x2048", "2048x768", "4096x2048", "2048x4096"};
  return {"1536x2048", "2048x768", "1024x2048", "2048x512"};
}
std::vector<std::string> default_heldout_shapes(const std::string& family) {
  // kq_gemv: its k/v projection, and two shapes of no training set (a 2880-row product, a 1024-column expert).
  if (canonical_family(family) == "kq_gemv") return {"512x2048", "2880x1024", "1408x2048"};
  return {"2880x1024", "1408x2048"};
}

Budget parse_budget(const std::string& text) {
  Budget b;
  if (text.empty()) fail("budget is empty (e.g. 10m, 90s, 1h or 5000 evaluations)");
  const char unit = text.back();
  const bool timed = unit == 's' || unit == 'm' || unit == 'h';
  const std::string num = timed ? text.substr(0, text.size() - 1) : text;
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(num, &used);
    if (used != num.size()) throw std::invalid_argument("trailing");
  } catch (const std::logic_error&) {
    fail("budget '{}' is not a duration (10m, 90s, 1h) or a number of evaluations", text);
  }
  if (!(v > 0)) fail("budget '{}' is zero or negative: the search needs something to spend", text);
  if (timed) {
    b.seconds = v * (unit == 's' ? 1 : unit == 'm' ? 60 : 3600);
  } else {
    if (v != std::floor(v)) fail("budget '{}': a number of evaluations must be a whole number", text);
    b.evals = int64_t(v);
  }
  return b;
}

std::string canonical_family(const std::string& name) {
  if (name == "nf4-gemv" || name == "nf4_gemv") return "nf4_gemv";
  if (name == "kq-gemv" || name == "kq_gemv") return "kq_gemv";
  fail("unknown kernel family '{}' (possible: nf4_gemv, kq_gemv)", name);
}

namespace {

json options_json(const EvolveOptions& o) {
  return {{"family", o.family},           {"path", o.path},           {"format", o.format},
          {"train", o.train},             {"heldout", o.heldout},
          {"tokens", o.tokens},           {"budget", o.budget},           {"regime", o.regime},
          {"strategy", o.strategy},       {"seed", o.seed},
          {"threads", o.threads},         {"seed_from_kb", o.seed_from_kb},
          {"gate_rounds", o.gate_rounds}, {"min_sample_s", o.min_sample_s},
          {"screen_rounds", o.screen_rounds}, {"full_rounds", o.full_rounds},
          {"confirm_rounds", o.confirm_rounds}, {"timeout_s", o.timeout_s}};
}

EvolveOptions options_from_json(const json& j, const EvolveOptions& base) {
  EvolveOptions o = base;
  try {
    o.family = j.at("family");
    o.path = j.at("path");
    o.format = j.value("format", "");  // runs stored before kq_gemv had none
    o.train = j.at("train").get<std::vector<std::string>>();
    o.heldout = j.at("heldout").get<std::vector<std::string>>();
    o.tokens = j.at("tokens");
    o.regime = j.value("regime", "hot");  // runs stored before the option existed searched hot
    o.budget = j.at("budget");
    o.strategy = j.at("strategy");
    o.seed = j.at("seed");
    o.threads = j.at("threads");
    o.seed_from_kb = j.at("seed_from_kb");
    o.gate_rounds = j.at("gate_rounds");
    o.min_sample_s = j.at("min_sample_s");
    o.screen_rounds = j.at("screen_rounds");
    o.full_rounds = j.at("full_rounds");
    o.confirm_rounds = j.at("confirm_rounds");
    o.timeout_s = j.at("timeout_s");
  } catch (const json::exception& e) {
    fail("the run's stored configuration is incomplete: {}", e.what());
  }
  return o;
}

}  // namespace

namespace {

// What run_evolve needs of a family beyond its adapter: the mutator, the kernel id printed for a genome, parsing a
// seed genome of the knowledge base.
std::string id_of(const Genome& g) { return kernel_id(g); }
std::string id_of(const KqGenome& g) { return "kq_gemv_" + g.code_key(); }

// The search, the held-out gate, the best records and the JSON report: the same for every family.
template <class A, class M>
json search_and_gate(const EvolveOptions& opt, kb::Kb& kb, const std::string& kb_path, int64_t run_id,
                     const typename A::Config& cfg, const std::vector<Shape>& heldout, const M& mutator,
                     const Budget& budget, Strategy strategy) {
  using G = typename A::Genome;
  const std::string key_path = A::kb_path(cfg);
  FamilyEvaluator<A> evaluator(cfg, &kb, run_id);
  const G baseline = A::baseline(cfg);

  SearchOptionsOf<G> sopt;
  sopt.strategy = strategy;
  sopt.seed = opt.seed;
  sopt.max_evals = budget.evals;
  sopt.max_seconds = budget.seconds;
  sopt.start_fitness = 1.0;  // fitness is a speedup over the baseline genome
  if (opt.seed_from_kb) {
    // The best genomes of other shapes (same family, path, tokens) on this CPU and build.
    auto rows = kb.best_for_seeding(opt.family, key_path, opt.tokens);
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.speedup > b.speedup; });
    for (const auto& r : rows) {
      if (sopt.seeds.size() >= 4) break;
      G g = G::parse(r.genome);
      if (g == baseline || std::find(sopt.seeds.begin(), sopt.seeds.end(), g) != sopt.seeds.end()) continue;
      sopt.seeds.push_back(g);
    }
  }
  const double t0 = now_seconds();
  double last_print = 0;
  if (opt.progress)
    sopt.on_progress = [&](const Progress& p) {
      if (p.elapsed_s - last_print < 1.0 && p.evaluations > 1) return;  // a live line, not a log
      last_print = p.elapsed_s;
      fmt::print(stderr, "\r[evolve run {}] evals {:5d}  best {:.3f}x  crash {}  wrong {}  timeout {}  invalid {}  {:.0f}/min  {:.0f}s ",
                 run_id, p.evaluations, p.best_fitness, p.verdicts[int(Verdict::crash)],
                 p.verdicts[int(Verdict::wrong_result)], p.verdicts[int(Verdict::timeout)],
                 p.verdicts[int(Verdict::invalid)], p.elapsed_s > 0 ? 60.0 * double(p.evaluations) / p.elapsed_s : 0.0,
                 p.elapsed_s);
      std::fflush(stderr);
    };
  SearchResultOf<G> res;
  try {
    res = search(baseline, mutator, evaluator, sopt);
  } catch (...) {
    kb.finish_run(run_id, "interrupted", json());
    throw;
  }
  const double search_s = now_seconds() - t0;
  if (opt.progress) fmt::print(stderr, "\n[evolve] held-out gate: {} vs baseline on {} shapes, hot and cold\n",
                               id_of(res.best), cfg.train.size() + heldout.size());
  GateResult gate = heldout_gate(cfg, heldout, res.best, baseline, opt.gate_rounds);
  if (opt.gate == "search") pipeline::judge_gate(gate, res.best == baseline, opt.regime);

  json report;
  report["run_id"] = run_id;
  report["kb"] = kb_path;
  report["family"] = opt.family;
  report["path"] = opt.path;
  if (!opt.format.empty()) report["format"] = opt.format;
  report["kb_path_key"] = key_path;
  report["strategy"] = opt.strategy;
  report["seed"] = opt.seed;
  report["tokens"] = opt.tokens;
  report["regime"] = opt.regime;
  report["gate"] = opt.gate;
  report["threads"] = opt.threads;
  report["budget"] = opt.budget;
  report["cpu_signature"] = kb.cpu_sig();
  report["build_id"] = kb.build();
  report["evaluations"] = res.evaluations;
  report["duplicates"] = res.duplicates;
  report["restarts"] = res.restarts;
  report["crossovers"] = res.crossovers;
  report["archive_cells"] = res.archive_cells;
  report["stop_reason"] = res.stop_reason;
  report["search_s"] = search_s;
  report["evals_per_min"] = search_s > 0 ? 60.0 * double(res.evaluations) / search_s : 0.0;
  json verdicts;
  for (int v = 0; v < kVerdictCount; ++v) verdicts[verdict_name(Verdict(v))] = res.verdicts[v];
  report["verdicts"] = verdicts;
  json ops;
  for (int i = 0; i < kOpCount; ++i)
    ops[op_name(Op(i))] = {{"proposed", res.ops[i].proposed},
                           {"legal", res.ops[i].legal},
                           {"correct", res.ops[i].correct},
                           {"improved", res.ops[i].improved},
                           {"weight", res.op_weights[i]}};
  report["operators"] = ops;
  report["baseline"] = {{"genome", baseline.serialize()}, {"id", id_of(baseline)}};
  report["best"] = {{"genome", res.best.serialize()}, {"id", id_of(res.best)}, {"fitness", res.best_fitness}};
  const auto& t = evaluator.times();
  report["time_split"] = {{"evaluations_run", t.ran},
                          {"total_s", t.total_s},
                          {"sandbox_s", t.sandbox_s},
                          {"correctness_gate_s", t.gate_s},
                          {"timing_s", t.timing_s},
                          {"overhead_fraction", t.total_s > 0 ? 1.0 - t.timing_s / t.total_s : 0.0}};
  json shapes = json::array();
  for (const auto& r : gate.records) {
    const bool loses = gate_loses(r);
    shapes.push_back({{"shape", r.shape},
                      {"set", r.set},
                      {"regime", r.regime},
                      {"baseline_us", r.baseline_us},
                      {"best_us", r.best_us},
                      {"speedup", r.speedup},
                      {"bytes", r.bytes},
                      {"baseline_gb_s", r.baseline_us > 0 ? r.bytes / r.baseline_us / 1e3 : 0.0},
                      {"best_gb_s", r.best_us > 0 ? r.bytes / r.best_us / 1e3 : 0.0},
                      {"ab_wins", r.ab_wins},
                      {"ab_rounds", r.ab_rounds},
                      {"remeasured", r.remeasured},
                      {"promoted", gate.promoted},
                      {"reason", loses ? (r.correct ? "loses here" : r.diagnostics) : gate.reason}});
  }
  report["shapes"] = shapes;
  report["promoted"] = gate.promoted;
  report["promotion_reason"] = gate.reason;
  json trace = json::array();
  for (const auto& it : res.trace)
    trace.push_back({{"i", it.index},
                     {"origin", it.origin},
                     {"verdict", verdict_name(it.verdict)},
                     {"fitness", it.fitness},
                     {"best", it.best_fitness},
                     {"promoted", it.promoted},
                     {"reused", it.reused}});
  report["trace"] = trace;

  if (gate.promoted) {
    // The gating regime's records (hot by default; the search's with --gate search) go to the best table.
    const std::string stored = opt.gate == "search" ? opt.regime : "hot";
    for (const auto& r : gate.records) {
      if (r.regime != stored || !r.correct || r.speedup <= 1.0) continue;  // never store a slower genome as best
      kb::Best b;
      b.family = opt.family;
      b.path = key_path;
      b.shape = r.shape;
      b.tokens = opt.tokens;
      b.genome = res.best.serialize();
      b.genome_hash = hex64(res.best.hash());
      b.speedup = r.speedup;
      b.baseline_us = r.baseline_us;
      b.best_us = r.best_us;
      b.run_id = run_id;
      kb.offer_best(b);
    }
  }
  kb.finish_run(run_id, "finished", report);
  return report;
}

// The evaluation options every family's Config shares.
void fill_common(EvalConfig& cfg, const EvolveOptions& opt) {
  for (const auto& s : opt.train) cfg.train.push_back(parse_shape(s));
  cfg.tokens = opt.tokens;
  cfg.regime = opt.regime;
  cfg.threads = opt.threads;
  cfg.min_sample_s = opt.min_sample_s;
  cfg.screen_rounds = opt.screen_rounds;
  cfg.full_rounds = opt.full_rounds;
  cfg.confirm_rounds = opt.confirm_rounds;
  cfg.timeout_s = opt.timeout_s;
}

}  // namespace

json run_evolve(const EvolveOptions& given) {
  EvolveOptions opt = given;
  const std::string kb_path = opt.kb_path.empty() ? kb::default_path() : opt.kb_path;
  kb::Kb kb(kb_path);
  int64_t run_id = 0;
  if (opt.resume > 0) {
    auto r = kb.run(opt.resume);
    if (!r) fail("knowledge base {}: no run {} to resume", kb_path, opt.resume);
    if (r->cpu_sig != kb.cpu_sig() || r->build_id != kb.build())
      fail("run {} was made on another CPU or build ({} / {}); it cannot be resumed here", opt.resume, r->cpu_sig,
           r->build_id);
    if (r->status == "finished") fail("run {} is already finished", opt.resume);
    opt = options_from_json(r->config, given);
    run_id = r->id;
  }
  opt.family = canonical_family(opt.family);
  const bool kq_family = opt.family == "kq_gemv";
  if (opt.train.empty()) opt.train = default_train_shapes(opt.family);
  if (opt.heldout.empty() && given.resume == 0 && given.heldout.empty())
    opt.heldout = default_heldout_shapes(opt.family);
  const Budget budget = parse_budget(opt.budget);
  const auto strategy = parse_strategy(opt.strategy);
  if (!strategy) fail("unknown strategy '{}' (possible: one-plus-one, map-elites)", opt.strategy);
  if (opt.threads < 1) fail("threads {} must be at least 1", opt.threads);
  if (opt.regime != "hot" && opt.regime != "cold" && opt.regime != "both")
    fail("unknown regime '{}' (possible: hot, cold, both)", opt.regime);
  if (opt.gate != "both" && opt.gate != "search") fail("unknown gate '{}' (possible: both, search)", opt.gate);
  if (opt.gate == "search" && opt.regime == "both")
    fail("--gate search gates on the search's regime: give --regime hot or cold (the search ran both)");
  std::vector<Shape> heldout;
  for (const auto& s : opt.heldout) heldout.push_back(parse_shape(s));

  if (kq_family) {
    namespace kq = kernels::kq_gemv;
    KqEvalConfig cfg;
    cfg.path = kq::best_path();
    if (!opt.path.empty()) {
      auto p = kq::parse_path(opt.path);
      if (!p) fail("unknown path '{}' for kq_gemv (possible: avx512vnni, avx2vnni, avx2, scalar)", opt.path);
      cfg.path = *p;
    }
    kq::require_path(cfg.path);
    opt.path = kq::path_name(cfg.path);
    if (opt.format.empty()) opt.format = "Q4_K";
    auto f = kq::parse_format(opt.format);
    if (!f) fail("unknown format '{}' for kq_gemv (possible: {})", opt.format, kq::format_names());
    cfg.format = *f;
    opt.format = kq::format_name(*f);
    if (opt.tokens < 1 || opt.tokens > kq::kMaxTokens) fail("tokens {} not in 1..{}", opt.tokens, kq::kMaxTokens);
    fill_common(cfg, opt);
    const int block = kq::is_k_quant(cfg.format) ? 256 : 32;
    for (const auto* set : {&cfg.train, &heldout})
      for (const auto& s : *set)
        if (s.second % block != 0)
          fail("shape {}: {} columns is not a multiple of {}'s block of {}", shape_text(s), s.second, opt.format,
               block);
    if (run_id == 0) run_id = kb.begin_run(opt.family, opt.strategy, opt.seed, options_json(opt));
    KqMutator mutator(kq_body_fn(cfg.format, cfg.tokens, cfg.path), kq_param_space(cfg.tokens), cfg.tokens, cfg.path,
                      cfg.format);
    return search_and_gate<KqFamily>(opt, kb, kb_path, run_id, cfg, heldout, mutator, budget, *strategy);
  }

  if (!opt.format.empty() && opt.format != "NF4" && opt.format != "nf4")
    fail("format '{}' is not nf4_gemv's (NF4); K-quant formats are searched with --family kq_gemv", opt.format);
  opt.format.clear();
  nf::Path path = nf::best_path();
  if (!opt.path.empty()) {
    auto p = nf::parse_path(opt.path);
    if (!p)
      fail("unknown path '{}' (possible: scalar, avx2, avx2int8, avx2vnni, avx512fp32, avx512bf16, avx512vnni)",
           opt.path);
    path = *p;
  }
  nf::require_path(path);
  opt.path = std::string(nf::path_name(path));
  if (opt.tokens < 1 || opt.tokens > nf::kMaxTokens) fail("tokens {} not in 1..{}", opt.tokens, nf::kMaxTokens);

  Nf4EvalConfig cfg;
  cfg.path = path;
  fill_common(cfg, opt);
  for (const auto& s : cfg.train) nf::Problem{s.first, s.second, opt.tokens, cfg.blocksize}.validate();
  for (const auto& s : heldout) nf::Problem{s.first, s.second, opt.tokens, cfg.blocksize}.validate();

  if (run_id == 0) run_id = kb.begin_run(opt.family, opt.strategy, opt.seed, options_json(opt));
  Mutator mutator(nf4_body_fn(nf::Problem{cfg.train[0].first, cfg.train[0].second, cfg.tokens, cfg.blocksize}),
                  nf4_param_space(path));
  return search_and_gate<Nf4Family>(opt, kb, kb_path, run_id, cfg, heldout, mutator, budget, *strategy);
}

}  // namespace genesis::evolve
