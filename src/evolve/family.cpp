// The family-independent parts of the evaluation pipeline (family.h, pipeline.h): shapes, A/B pairs, the worker's
// setup, the cold regime's copy count and the held-out gate's verdict.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/error.h"
#include "cpu/info.h"
#include "cpu/thread_pool.h"
#include "evolve/pipeline.h"

namespace genesis::evolve {

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

namespace pipeline {

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

size_t cold_copy_count(size_t bytes) {
  const auto& info = cpu::cpu_info();
  const size_t llc = std::max<size_t>(info.caches.l3 ? info.caches.l3 : info.caches.l2, size_t(8) << 20);
  return std::max<size_t>(2, 2 * llc / std::max<size_t>(1, bytes) + 1);
}

void judge_gate(GateResult& g, bool winner_is_baseline, const std::string& only_regime) {
  // Verdict: the search's own regime on training shapes was already confirmed; everything else must not lose.
  std::vector<std::string> losses;
  for (const auto& rec : g.records) {
    if (!only_regime.empty() && rec.correct && rec.regime != only_regime) continue;  // reported, not gating
    if (!rec.correct) {
      losses.push_back(fmt::format("{} {}: {}", rec.set, rec.shape, rec.diagnostics));
      continue;
    }
    if (gate_loses(rec))
      losses.push_back(fmt::format("{} {} {}: {:.3f}x ({} of {} pairs won)", rec.set, rec.shape, rec.regime,
                                   rec.speedup, rec.ab_wins, rec.ab_rounds));
  }
  if (winner_is_baseline) {
    g.promoted = false;
    g.reason = "the search found nothing better than the baseline";
  } else if (!losses.empty()) {
    g.promoted = false;
    g.reason = "loses on: " + losses.front() + (losses.size() > 1 ? fmt::format(" (+{} more)", losses.size() - 1) : "");
  } else {
    g.promoted = true;
    g.reason = only_regime.empty()
                   ? "correct everywhere and not slower on held-out shapes or in the other regime"
                   : fmt::format("correct everywhere and not slower on held-out shapes in the {} regime (--gate "
                                 "search: the other regime reported, not gating)",
                                 only_regime);
  }
}

}  // namespace pipeline
}  // namespace genesis::evolve
