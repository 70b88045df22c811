// nf4_gemv evaluation pipeline (nf4_eval.h): static checks in the parent; correctness, screen, timing and confirm
// in a forked worker; outcomes to the knowledge base, one transaction each.
#include "evolve/nf4_eval.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "common/timing.h"
#include "common/util.h"
#include "cpu/info.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "jit/ir.h"
#include "kernels/nf4_gemv/conf.h"

namespace genesis::evolve {

namespace nf = kernels::nf4_gemv;
using nlohmann::json;

std::string shape_text(const Shape& s) { return fmt::format("{}x{}", s.first, s.second); }

Shape parse_shape(const std::string& text) {
  auto x = text.find('x');
  try {
    if (x == std::string::npos) throw std::invalid_argument("no x");
    size_t a = 0, b = 0;
    int64_t M = std::stoll(text.substr(0, x), &a), K = std::stoll(text.substr(x + 1), &b);
    if (a != x || b != text.size() - x - 1 || M < 1 || K < 1) throw std::invalid_argument("bad");
    return {M, K};
  } catch (const std::logic_error&) {
    fail("shape '{}' is not MxK with positive integers (e.g. 768x2048)", text);
  }
}

std::string shape_set_text(const std::vector<Shape>& shapes) {
  std::string s;
  for (const auto& sh : shapes) s += (s.empty() ? "" : "+") + shape_text(sh);
  return s;
}

BodyFn nf4_body_fn(const nf::Problem& problem) {
  return [problem](const Genome& g) {
    Genome params = g;  // the body depends on the parameter genes only
    params.order.clear();
    params.hints.clear();
    params.alt.clear();
    const nf::Conf conf = nf::make_conf(problem, params, cpu::host_isa());
    const auto body = nf::canonical_body(conf);
    const auto dep = jit::def_use(body);
    BodyModel m;
    for (size_t i = 0; i < body.size(); ++i) {
      std::vector<uint16_t> p;
      for (int j : dep.preds[i]) p.push_back(uint16_t(j));
      m.preds.push_back(std::move(p));
      m.cls.push_back(body[i].cls());
      m.is_load.push_back(body[i].is_load());
      m.has_alt.push_back(jit::has_alternative(body[i]));
      m.text.push_back(body[i].text());
    }
    return m;
  };
}

ParamSpace nf4_param_space(nf::Path p) {
  ParamSpace s = param_space(p);
  s.lut_permb = p == nf::Path::avx512_vnni && cpu::mayiuse(cpu::Isa::avx512vbmi);
  return s;
}

namespace {

// One training (or gate) shape's inputs, reference and bounds; built in the parent, read by workers.
struct ShapeData {
  nf::Problem pr;
  quant::Nf4Matrix w;
  nf::PackedWeights pw;
  std::vector<float> x;
  std::vector<double> ref, bound;
  std::vector<float> y;
};

ShapeData make_shape_data(const Shape& s, int tokens, int bs, nf::Path path, uint64_t seed) {
  ShapeData d;
  d.pr = nf::Problem{s.first, s.second, tokens, bs};
  d.pr.validate();
  std::mt19937_64 rng(seed * 1000003 + uint64_t(s.first) * 31 + uint64_t(s.second));
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(size_t(s.first * s.second));
  for (auto& v : w) v = g(rng);
  d.w = quant::quantize_nf4(w, s.first, s.second, bs);
  d.pw = nf::pack(d.w, path);
  d.x.resize(size_t(tokens * s.second));
  for (auto& v : d.x) v = g(rng);
  d.ref.resize(size_t(tokens * s.first));
  nf::reference(d.w, d.x.data(), tokens, d.ref.data());
  d.bound.resize(d.ref.size());
  for (int t = 0; t < tokens; ++t)
    for (int64_t m = 0; m < s.first; ++m) d.bound[size_t(t * s.first + m)] = nf::error_bound(path, d.w, d.x.data(), m, t);
  d.y.resize(d.ref.size());
  return d;
}

// Correctness gate in the worker: every output within the path's bound; a reorder/hint/alt descendant also
// bit-exact to its canonical twin (same parameter genes). Throws WrongResult naming the first bad output.
void check_correct(const nf::Kernel& k, const ShapeData& d, const Genome& g, cpu::ThreadPool* pool, bool allow_faults) {
  std::vector<float> y(d.ref.size(), std::nanf(""));
  k.run(d.pw, d.x.data(), y.data(), pool);
  for (size_t i = 0; i < y.size(); ++i)
    if (!(std::fabs(double(y[i]) - d.ref[i]) <= d.bound[i]))
      throw WrongResult{fmt::format("{} {} tokens={}: y[t={}][m={}] = {} but reference {} (bound {})", k.id(),
                                    d.pr.shape(), d.pr.tokens, i / size_t(d.pr.M), i % size_t(d.pr.M), y[i], d.ref[i],
                                    d.bound[i])};
  if (g.order.empty() && g.hints.empty() && g.alt.empty()) return;
  Genome twin = g;
  twin.order.clear();
  twin.hints.clear();
  twin.alt.clear();
  twin.fault = nf::Fault::none;
  auto tk = nf::get_kernel(d.pr, twin, allow_faults);
  std::vector<float> ty(y.size());
  tk->run(d.pw, d.x.data(), ty.data(), pool);
  for (size_t i = 0; i < y.size(); ++i)
    if (std::memcmp(&y[i], &ty[i], 4) != 0)
      throw WrongResult{fmt::format("{} {}: reorder/hint descendant differs from its canonical order at y[{}]: {} vs {} "
                                    "(a legality bug)",
                                    k.id(), d.pr.shape(), i, y[i], ty[i])};
}

struct Pairs {
  std::vector<double> ratios;  // time(A) / time(B), per pair
  int a_wins = 0;
  double a_us = 0, b_us = 0;
};

void add_pairs(Pairs& p, const AbResult& r) {
  for (size_t i = 0; i < r.a.sample_us.size() && i < r.b.sample_us.size(); ++i)
    p.ratios.push_back(r.a.sample_us[i] / r.b.sample_us[i]);
  p.a_wins += r.a_wins;
  p.a_us = r.a.median_us;
  p.b_us = r.b.median_us;
}

double geomean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += std::log(x);
  return v.empty() ? 0 : std::exp(s / double(v.size()));
}

std::unique_ptr<cpu::ThreadPool> worker_setup(int threads) {
  const auto cpus = cpu::allowed_cpus();
  if (!cpus.empty()) cpu::pin_current_thread(cpus.front());
  return threads > 1 ? std::make_unique<cpu::ThreadPool>(threads) : nullptr;
}

// One timed measurement of the fitness: a training shape in one cache regime.
struct Unit {
  size_t shape;
  bool cold;
};

// Copies of a shape's packed weights worth >= 2x the last-level cache, so that rotating through them reads from
// memory (the cold regime of BENCHMARKING.md).
std::vector<nf::PackedWeights> cold_copies(const nf::PackedWeights& pw) {
  const auto& info = cpu::cpu_info();
  const size_t llc = std::max<size_t>(info.caches.l3 ? info.caches.l3 : info.caches.l2, size_t(8) << 20);
  const size_t n = std::max<size_t>(2, 2 * llc / std::max<size_t>(1, pw.bytes()) + 1);
  std::vector<nf::PackedWeights> copies;
  for (size_t c = 0; c < n; ++c) copies.push_back(pw.clone());
  return copies;
}

}  // namespace

struct Nf4Evaluator::Data {
  std::vector<ShapeData> shapes;
  std::vector<std::vector<nf::PackedWeights>> cold;  // per shape; empty when the search times hot only
  std::vector<Unit> units;
  std::string shape_set;
};

Nf4Evaluator::Nf4Evaluator(Nf4EvalConfig cfg, kb::Kb* kb, int64_t run_id)
    : cfg_(std::move(cfg)), kb_(kb), run_id_(run_id), data_(std::make_unique<Data>()) {
  if (cfg_.train.empty()) fail("evolve: no training shapes");
  nf::require_path(cfg_.path);
  if (cfg_.regime != "hot" && cfg_.regime != "cold" && cfg_.regime != "both")
    fail("evolve: unknown regime '{}' (possible: hot, cold, both)", cfg_.regime);
  for (const auto& s : cfg_.train)
    data_->shapes.push_back(make_shape_data(s, cfg_.tokens, cfg_.blocksize, cfg_.path, cfg_.data_seed));
  // Built once in the parent: forked workers share the copies (they only read them).
  for (const auto& d : data_->shapes)
    data_->cold.push_back(cfg_.regime == "hot" ? std::vector<nf::PackedWeights>{} : cold_copies(d.pw));
  for (size_t i = 0; i < data_->shapes.size(); ++i) {
    if (cfg_.regime != "cold") data_->units.push_back({i, false});
    if (cfg_.regime != "hot") data_->units.push_back({i, true});
  }
  data_->shape_set = shape_set_text(cfg_.train);
}

Nf4Evaluator::~Nf4Evaluator() = default;

Outcome Nf4Evaluator::evaluate(const Genome& cand, int64_t index, const Genome& incumbent, double incumbent_fitness) {
  const std::string path_s(nf::path_name(cfg_.path));
  const std::string hash = hex64(cand.hash());
  Outcome o;
  // 1. Known already (this run before a kill, or an earlier run with the same key): not re-run.
  if (kb_) {
    if (auto c = kb_->find_candidate(hash, "nf4_gemv", path_s, data_->shape_set, cfg_.tokens, cfg_.regime)) {
      for (int v = 0; v < kVerdictCount; ++v)
        if (c->verdict == verdict_name(Verdict(v))) o.verdict = Verdict(v);
      o.fitness = c->fitness;
      o.diagnostics = c->diagnostics;
      o.screened_out = c->result.value("screened_out", false);
      // A promotion holds only against the incumbent it was measured against.
      o.promoted = c->result.value("promoted", false) && c->result.value("incumbent", "") == hex64(incumbent.hash());
      o.reused = true;
      return o;
    }
  }
  const double t0 = now_seconds();
  json result;
  result["incumbent"] = hex64(incumbent.hash());
  // 2. Static checks in the parent: no code is generated or run.
  std::string why;
  try {
    cand.validate();
    if (cand.fault != nf::Fault::none && !cfg_.allow_faults) fail("genome carries a planted fault");
    for (const auto& d : data_->shapes) {
      if (!nf::path_is_jit(cand.path)) break;  // compiled paths (scalar, avx2): no code to configure or order
      const nf::Conf conf = nf::make_conf(d.pr, cand, cpu::host_isa());
      if (!cand.order.empty()) {
        const auto body = nf::canonical_body(conf);
        if (!jit::is_legal_order(body, cand.order, &why)) fail("illegal order: {}", why);
      }
    }
  } catch (const Error& e) {
    o.verdict = Verdict::invalid;
    o.diagnostics = e.what();
  }
  // 3. Sandbox: correctness gate, then screen / full timing / confirm.
  if (o.verdict == Verdict::ok) {
    const Genome base = Genome::baseline(cfg_.path);
    const auto& cfg = cfg_;
    auto& shapes = data_->shapes;
    auto& cold = data_->cold;
    const auto& units = data_->units;
    auto r = run_sandboxed(
        [&]() -> std::string {
          const double w0 = now_seconds();
          auto pool = worker_setup(cfg.threads);
          std::vector<std::shared_ptr<const nf::Kernel>> kc, kb_, ki;
          for (auto& d : shapes) {
            kc.push_back(nf::get_kernel(d.pr, cand, cfg.allow_faults));
            check_correct(*kc.back(), d, cand, pool.get(), cfg.allow_faults);
            kb_.push_back(nf::get_kernel(d.pr, base));
            ki.push_back(nf::get_kernel(d.pr, incumbent));
          }
          const double w1 = now_seconds();
          TimingOptions topt;
          topt.warmup_s = 0.005;
          topt.min_sample_s = cfg.min_sample_s;
          // A unit's call: hot reuses one copy of the weights, cold rotates through copies worth >= 2x the LLC.
          auto fn = [&](const nf::Kernel& k, const Unit& u) -> std::function<void()> {
            ShapeData& d = shapes[u.shape];
            if (!u.cold) return [&k, &d, p = pool.get()] { k.run(d.pw, d.x.data(), d.y.data(), p); };
            auto& copies = cold[u.shape];
            return [&k, &d, &copies, p = pool.get(), i = size_t(0)]() mutable {
              k.run(copies[i++ % copies.size()], d.x.data(), d.y.data(), p);
            };
          };
          std::vector<Pairs> vs_base(units.size());
          auto fitness_now = [&] {
            std::vector<double> sp;
            for (auto& p : vs_base) sp.push_back(1.0 / median(p.ratios));
            return geomean(sp);
          };
          for (size_t i = 0; i < units.size(); ++i)
            add_pairs(vs_base[i], ab_compare(fn(*kc[units[i].shape], units[i]), fn(*kb_[units[i].shape], units[i]),
                                             cfg.screen_rounds, topt));
          json out;
          double fit = fitness_now();
          out["screen_fitness"] = fit;
          bool screened = fit < incumbent_fitness / cfg.screen_cut;
          if (!screened) {
            for (size_t i = 0; i < units.size(); ++i)
              add_pairs(vs_base[i], ab_compare(fn(*kc[units[i].shape], units[i]), fn(*kb_[units[i].shape], units[i]),
                                               cfg.full_rounds, topt));
            fit = fitness_now();
          }
          int wins = 0, rounds = 0;
          bool promoted = false;
          if (!screened && fit > incumbent_fitness) {
            // Two independent sets of interleaved A/B pairs against the incumbent (the known result re-measured
            // its improvements too): both must show a win, so that one burst of noise cannot promote.
            std::vector<double> sp;
            promoted = true;
            for (int rep = 0; rep < 2 && promoted; ++rep) {
              std::vector<double> sp_rep;
              int w = 0, n = 0;
              for (const Unit& u : units) {
                Pairs p;
                add_pairs(p, ab_compare(fn(*kc[u.shape], u), fn(*ki[u.shape], u), cfg.confirm_rounds, topt));
                w += p.a_wins;
                n += int(p.ratios.size());
                sp_rep.push_back(1.0 / median(p.ratios));
              }
              wins += w;
              rounds += n;
              sp.push_back(geomean(sp_rep));
              promoted = geomean(sp_rep) > 1.0 && w >= int(std::ceil(cfg.confirm_wins * n));
            }
            out["confirm_speedup_vs_incumbent"] = sp;
          }
          out["fitness"] = fit;
          out["screened_out"] = screened;
          out["promoted"] = promoted;
          out["ab_wins"] = wins;
          out["ab_rounds"] = rounds;
          json per = json::array();
          for (size_t i = 0; i < units.size(); ++i)
            per.push_back({{"shape", shapes[units[i].shape].pr.shape()},
                           {"regime", units[i].cold ? "cold" : "hot"},
                           {"baseline_us", vs_base[i].b_us},
                           {"cand_us", vs_base[i].a_us},
                           {"speedup", 1.0 / median(vs_base[i].ratios)},
                           {"pairs", vs_base[i].ratios.size()}});
          out["shapes"] = per;
          out["gate_s"] = w1 - w0;
          out["timing_s"] = now_seconds() - w1;
          return out.dump();
        },
        cfg_.timeout_s);
    o.verdict = r.verdict;
    o.diagnostics = r.diagnostics;
    times_.sandbox_s += r.wall_s;
    if (r.verdict == Verdict::ok) {
      json w = json::parse(r.payload);
      o.fitness = w["fitness"];
      o.promoted = w["promoted"];
      o.screened_out = w["screened_out"];
      times_.gate_s += w["gate_s"].get<double>();
      times_.timing_s += w["timing_s"].get<double>();
      for (auto& [k, v] : w.items()) result[k] = v;
    }
    ++times_.ran;
  }
  times_.total_s += now_seconds() - t0;
  result["promoted"] = o.promoted;
  result["screened_out"] = o.screened_out;
  if (kb_) {
    kb::Candidate c;
    c.run_id = run_id_;
    c.eval_index = index;
    c.family = "nf4_gemv";
    c.path = path_s;
    c.shape = data_->shape_set;
    c.tokens = cfg_.tokens;
    c.regime = cfg_.regime;
    c.genome = cand.serialize();
    c.genome_hash = hash;
    c.verdict = verdict_name(o.verdict);
    c.diagnostics = o.diagnostics;
    c.fitness = o.fitness;
    c.result = result;
    kb_->add_candidate(c);
  }
  return o;
}

namespace {

// One gate worker: winner vs baseline on one shape, correctness first, then interleaved A/B in each regime.
// The payload is a JSON array of {regime, best_us, baseline_us, ratios, ab_wins, ab_rounds}.
SandboxResult gate_shape(const Nf4EvalConfig& cfg, const Shape& shape, const Genome& winner, const Genome& baseline,
                         const std::vector<std::string>& regimes, int rounds) {
  return run_sandboxed(
      [&]() -> std::string {
        auto pool = worker_setup(cfg.threads);
        ShapeData d = make_shape_data(shape, cfg.tokens, cfg.blocksize, cfg.path, cfg.data_seed + 17);
        auto kw = nf::get_kernel(d.pr, winner), kbase = nf::get_kernel(d.pr, baseline);
        check_correct(*kw, d, winner, pool.get(), false);
        TimingOptions topt;
        topt.min_sample_s = cfg.min_sample_s;
        json out = json::array();
        for (const auto& regime : regimes) {
          const bool cold = regime == "cold";
          std::vector<nf::PackedWeights> copies = cold ? cold_copies(d.pw) : std::vector<nf::PackedWeights>{};
          size_t ia = 0, ib = 0;
          auto run_w = [&] {
            kw->run(cold ? copies[ia++ % copies.size()] : d.pw, d.x.data(), d.y.data(), pool.get());
          };
          auto run_b = [&] {
            kbase->run(cold ? copies[ib++ % copies.size()] : d.pw, d.x.data(), d.y.data(), pool.get());
          };
          auto ab = ab_compare(run_w, run_b, rounds, topt);
          std::vector<double> ratios;
          for (size_t i = 0; i < ab.a.sample_us.size() && i < ab.b.sample_us.size(); ++i)
            ratios.push_back(ab.a.sample_us[i] / ab.b.sample_us[i]);
          out.push_back({{"regime", regime},
                         {"best_us", ab.a.median_us},
                         {"baseline_us", ab.b.median_us},
                         {"ratios", ratios},
                         {"ab_wins", ab.a_wins},
                         {"ab_rounds", ab.rounds}});
        }
        return out.dump();
      },
      cfg.timeout_s + 60);
}

}  // namespace

bool gate_loses(const GateRecord& r) {
  if (!r.correct) return true;
  if (r.speedup < 0.98 && r.ab_wins * 2 < r.ab_rounds) return true;
  // A smaller loss counts when the pairs say it is real: a one-sided sign test at 5% (e.g. at most 5 of 20 pairs won).
  double p = 0, c = 1;  // P(wins <= ab_wins) for a fair coin
  for (int k = 0; k <= r.ab_wins; ++k) {
    p += c;
    c = c * double(r.ab_rounds - k) / double(k + 1);
  }
  p *= std::pow(0.5, r.ab_rounds);
  return r.speedup < 0.99 && p < 0.05;
}

GateResult heldout_gate(const Nf4EvalConfig& cfg, const std::vector<Shape>& heldout, const Genome& winner,
                        const Genome& baseline, int rounds) {
  GateResult g;
  std::vector<std::pair<Shape, std::string>> todo;
  for (const auto& s : cfg.train) todo.push_back({s, "train"});
  for (const auto& s : heldout) todo.push_back({s, "heldout"});
  std::vector<std::vector<double>> ratios;  // per record, every A/B pair's time(winner) / time(baseline)
  auto add = [&](GateRecord& rec, const json& e) {
    rec.baseline_us = e["baseline_us"];
    rec.best_us = e["best_us"];
    rec.ab_wins += e["ab_wins"].get<int>();
    rec.ab_rounds += e["ab_rounds"].get<int>();
    auto& r = ratios[size_t(&rec - g.records.data())];
    for (double v : e["ratios"]) r.push_back(v);
    rec.speedup = 1.0 / median(r);
  };
  auto failed = [](GateRecord& rec, const SandboxResult& r) {
    rec.correct = false;
    rec.diagnostics = fmt::format("{}: {}", verdict_name(r.verdict), r.diagnostics);
  };
  for (const auto& [shape, set] : todo) {
    // One worker per shape: a crash on a held-out shape is recorded for that shape.
    auto r = gate_shape(cfg, shape, winner, baseline, {"hot", "cold"}, rounds);
    const size_t first = g.records.size();
    for (const char* regime : {"hot", "cold"}) {
      GateRecord rec;
      rec.shape = shape_text(shape);
      rec.set = set;
      rec.regime = regime;
      g.records.push_back(rec);
      ratios.emplace_back();
    }
    if (r.verdict != Verdict::ok) {
      for (size_t i = first; i < g.records.size(); ++i) failed(g.records[i], r);
      continue;
    }
    const json e = json::parse(r.payload);
    for (size_t i = 0; i < e.size(); ++i) add(g.records[first + i], e[i]);
  }
  // A loss, like a promotion, must hold on a second look: a record that loses is measured again with twice the pairs
  // and judged on all its pairs together (a 2% difference with 9 of 20 pairs won is within the noise of a shared
  // machine's memory bus).
  for (auto& rec : g.records) {
    if (!rec.correct || !gate_loses(rec)) continue;
    auto r = gate_shape(cfg, parse_shape(rec.shape), winner, baseline, {rec.regime}, 2 * rounds);
    if (r.verdict != Verdict::ok) {
      failed(rec, r);
      continue;
    }
    add(rec, json::parse(r.payload)[0]);
    rec.remeasured = true;
  }
  // Verdict: the search's own regime on training shapes was already confirmed; everything else must not lose.
  std::vector<std::string> losses;
  for (const auto& rec : g.records) {
    if (!rec.correct) {
      losses.push_back(fmt::format("{} {}: {}", rec.set, rec.shape, rec.diagnostics));
      continue;
    }
    if (gate_loses(rec))
      losses.push_back(fmt::format("{} {} {}: {:.3f}x ({} of {} pairs won)", rec.set, rec.shape, rec.regime,
                                   rec.speedup, rec.ab_wins, rec.ab_rounds));
  }
  if (winner == baseline) {
    g.promoted = false;
    g.reason = "the search found nothing better than the baseline";
  } else if (!losses.empty()) {
    g.promoted = false;
    g.reason = "loses on: " + losses.front() + (losses.size() > 1 ? fmt::format(" (+{} more)", losses.size() - 1) : "");
  } else {
    g.promoted = true;
    g.reason = "correct everywhere and not slower on held-out shapes or in the other regime";
  }
  return g;
}

}  // namespace genesis::evolve
