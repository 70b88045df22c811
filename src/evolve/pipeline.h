// The generic evaluation pipeline and held-out gate of family.h, as templates over a family adapter. Included only by
// a family's .cpp, which instantiates them (template class FamilyEvaluator<ItsAdapter>; heldout_gate_of<...>).
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <functional>

#include "common/error.h"
#include "common/timing.h"
#include "common/util.h"
#include "cpu/info.h"
#include "cpu/thread_pool.h"
#include "evolve/family.h"
#include "evolve/sandbox.h"

namespace genesis::evolve {

namespace pipeline {

struct Pairs {
  std::vector<double> ratios;  // time(A) / time(B), per pair
  int a_wins = 0;
  double a_us = 0, b_us = 0;
};

void add_pairs(Pairs& p, const AbResult& r);
double geomean(const std::vector<double>& v);
std::unique_ptr<cpu::ThreadPool> worker_setup(int threads);
// How many copies of `bytes` of weights are worth >= 2x the last-level cache (the cold regime of BENCHMARKING.md).
size_t cold_copy_count(size_t bytes);

// One timed measurement of the fitness: a training shape in one cache regime.
struct Unit {
  size_t shape;
  bool cold;
};

template <class A>
std::vector<typename A::Weights> cold_copies(const typename A::Weights& w) {
  const size_t n = cold_copy_count(A::bytes(w));
  std::vector<typename A::Weights> copies;
  for (size_t c = 0; c < n; ++c) copies.push_back(A::clone(w));
  return copies;
}

}  // namespace pipeline

template <class A>
struct FamilyEvaluator<A>::Data {
  std::vector<typename A::Case> shapes;
  std::vector<std::vector<typename A::Weights>> cold;  // per shape; empty when the search times hot only
  std::vector<pipeline::Unit> units;
  std::string shape_set;
};

template <class A>
FamilyEvaluator<A>::FamilyEvaluator(Config cfg, kb::Kb* kb, int64_t run_id)
    : cfg_(std::move(cfg)), kb_(kb), run_id_(run_id), data_(std::make_unique<Data>()) {
  if (cfg_.train.empty()) fail("evolve: no training shapes");
  if (cfg_.regime != "hot" && cfg_.regime != "cold" && cfg_.regime != "both")
    fail("evolve: unknown regime '{}' (possible: hot, cold, both)", cfg_.regime);
  for (const auto& s : cfg_.train) data_->shapes.push_back(A::make_case(cfg_, s, cfg_.data_seed));
  // Built once in the parent: forked workers share the copies (they only read them).
  for (const auto& d : data_->shapes)
    data_->cold.push_back(cfg_.regime == "hot" ? std::vector<typename A::Weights>{}
                                               : pipeline::cold_copies<A>(A::weights(d)));
  for (size_t i = 0; i < data_->shapes.size(); ++i) {
    if (cfg_.regime != "cold") data_->units.push_back({i, false});
    if (cfg_.regime != "hot") data_->units.push_back({i, true});
  }
  data_->shape_set = shape_set_text(cfg_.train);
}

template <class A>
FamilyEvaluator<A>::~FamilyEvaluator() = default;

template <class A>
Outcome FamilyEvaluator<A>::evaluate(const Genome& cand, int64_t index, const Genome& incumbent,
                                     double incumbent_fitness) {
  using nlohmann::json;
  using namespace pipeline;
  const std::string path_s = A::kb_path(cfg_);
  const std::string hash = hex64(cand.hash());
  Outcome o;
  // 1. Known already (this run before a kill, or an earlier run with the same key): not re-run.
  if (kb_) {
    if (auto c = kb_->find_candidate(hash, A::kName, path_s, data_->shape_set, cfg_.tokens, cfg_.regime)) {
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
  try {
    cand.validate();
    if (cand.fault != decltype(cand.fault){} && !cfg_.allow_faults) fail("genome carries a planted fault");
    for (const auto& d : data_->shapes) A::static_check(cfg_, d, cand);
  } catch (const Error& e) {
    o.verdict = Verdict::invalid;
    o.diagnostics = e.what();
  }
  // 3. Sandbox: correctness gate, then screen / full timing / confirm.
  if (o.verdict == Verdict::ok) {
    const Genome base = A::baseline(cfg_);
    const auto& cfg = cfg_;
    auto& shapes = data_->shapes;
    auto& cold = data_->cold;
    const auto& units = data_->units;
    auto r = run_sandboxed(
        [&]() -> std::string {
          const double w0 = now_seconds();
          auto pool = worker_setup(cfg.threads);
          std::vector<typename A::Kernel> kc, kbase, ki;
          for (auto& d : shapes) {
            kc.push_back(A::build(cfg, d, cand));
            A::check(cfg, kc.back(), d, cand, pool.get());
            kbase.push_back(A::build(cfg, d, base));
            ki.push_back(A::build(cfg, d, incumbent));
          }
          const double w1 = now_seconds();
          TimingOptions topt;
          topt.warmup_s = 0.005;
          topt.min_sample_s = cfg.min_sample_s;
          // A unit's call: hot reuses one copy of the weights, cold rotates through copies worth >= 2x the LLC.
          auto fn = [&](const typename A::Kernel& k, const Unit& u) -> std::function<void()> {
            auto& d = shapes[u.shape];
            if (!u.cold) return [&k, &d, p = pool.get()] { A::run(k, A::weights(d), d, p); };
            auto& copies = cold[u.shape];
            return [&k, &d, &copies, p = pool.get(), i = size_t(0)]() mutable {
              A::run(k, copies[i++ % copies.size()], d, p);
            };
          };
          std::vector<Pairs> vs_base(units.size());
          auto fitness_now = [&] {
            std::vector<double> sp;
            for (auto& p : vs_base) sp.push_back(1.0 / median(p.ratios));
            return geomean(sp);
          };
          for (size_t i = 0; i < units.size(); ++i)
            add_pairs(vs_base[i], ab_compare(fn(kc[units[i].shape], units[i]), fn(kbase[units[i].shape], units[i]),
                                             cfg.screen_rounds, topt));
          json out;
          double fit = fitness_now();
          out["screen_fitness"] = fit;
          bool screened = fit < incumbent_fitness / cfg.screen_cut;
          if (!screened) {
            for (size_t i = 0; i < units.size(); ++i)
              add_pairs(vs_base[i], ab_compare(fn(kc[units[i].shape], units[i]),
                                               fn(kbase[units[i].shape], units[i]), cfg.full_rounds, topt));
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
                add_pairs(p, ab_compare(fn(kc[u.shape], u), fn(ki[u.shape], u), cfg.confirm_rounds, topt));
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
            per.push_back({{"shape", shape_text(cfg.train[units[i].shape])},
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
      times_.gate_s += w["gate_s"].template get<double>();
      times_.timing_s += w["timing_s"].template get<double>();
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
    c.family = A::kName;
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

namespace pipeline {

// One gate worker: winner vs baseline on one shape, correctness first, then interleaved A/B in each regime.
// The payload is a JSON array of {regime, best_us, baseline_us, ratios, ab_wins, ab_rounds, bytes}.
template <class A>
SandboxResult gate_shape(const typename A::Config& given, const Shape& shape, const typename A::Genome& winner,
                         const typename A::Genome& baseline, const std::vector<std::string>& regimes, int rounds) {
  using nlohmann::json;
  typename A::Config cfg = given;
  cfg.allow_faults = false;  // the gate never builds a planted fault
  return run_sandboxed(
      [&]() -> std::string {
        auto pool = worker_setup(cfg.threads);
        auto d = A::make_case(cfg, shape, cfg.data_seed + 17);
        auto kw = A::build(cfg, d, winner), kbase = A::build(cfg, d, baseline);
        A::check(cfg, kw, d, winner, pool.get());
        TimingOptions topt;
        topt.min_sample_s = cfg.min_sample_s;
        json out = json::array();
        for (const auto& regime : regimes) {
          const bool cold = regime == "cold";
          std::vector<typename A::Weights> copies =
              cold ? cold_copies<A>(A::weights(d)) : std::vector<typename A::Weights>{};
          size_t ia = 0, ib = 0;
          auto run_w = [&] { A::run(kw, cold ? copies[ia++ % copies.size()] : A::weights(d), d, pool.get()); };
          auto run_b = [&] { A::run(kbase, cold ? copies[ib++ % copies.size()] : A::weights(d), d, pool.get()); };
          auto ab = ab_compare(run_w, run_b, rounds, topt);
          std::vector<double> ratios;
          for (size_t i = 0; i < ab.a.sample_us.size() && i < ab.b.sample_us.size(); ++i)
            ratios.push_back(ab.a.sample_us[i] / ab.b.sample_us[i]);
          out.push_back({{"regime", regime},
                         {"best_us", ab.a.median_us},
                         {"baseline_us", ab.b.median_us},
                         {"ratios", ratios},
                         {"ab_wins", ab.a_wins},
                         {"ab_rounds", ab.rounds},
                         {"bytes", A::bytes_moved(d)}});
        }
        return out.dump();
      },
      cfg.timeout_s + 60);
}

// The verdict of the gate from its records (shared by every family). With `only_regime` ("hot" or "cold") records of
// the other regime are reported but do not block the promotion.
void judge_gate(GateResult& g, bool winner_is_baseline, const std::string& only_regime = "");

}  // namespace pipeline

template <class A>
GateResult heldout_gate_of(const typename A::Config& cfg, const std::vector<Shape>& heldout,
                           const typename A::Genome& winner, const typename A::Genome& baseline, int rounds) {
  using nlohmann::json;
  GateResult g;
  std::vector<std::pair<Shape, std::string>> todo;
  for (const auto& s : cfg.train) todo.push_back({s, "train"});
  for (const auto& s : heldout) todo.push_back({s, "heldout"});
  std::vector<std::vector<double>> ratios;  // per record, every A/B pair's time(winner) / time(baseline)
  auto add = [&](GateRecord& rec, const json& e) {
    rec.baseline_us = e["baseline_us"];
    rec.best_us = e["best_us"];
    rec.bytes = e["bytes"];
    rec.ab_wins += e["ab_wins"].template get<int>();
    rec.ab_rounds += e["ab_rounds"].template get<int>();
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
    auto r = pipeline::gate_shape<A>(cfg, shape, winner, baseline, {"hot", "cold"}, rounds);
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
    auto r = pipeline::gate_shape<A>(cfg, parse_shape(rec.shape), winner, baseline, {rec.regime}, 2 * rounds);
    if (r.verdict != Verdict::ok) {
      failed(rec, r);
      continue;
    }
    add(rec, json::parse(r.payload)[0]);
    rec.remeasured = true;
  }
  pipeline::judge_gate(g, winner == baseline);
  return g;
}

}  // namespace genesis::evolve
