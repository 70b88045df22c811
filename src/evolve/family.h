// The factory's evaluation pipeline, generic over a family adapter. A family (nf4_gemv: nf4_eval.h, kq_gemv:
// kq_family.h) supplies its genome type, its parameter space and mutator (mutate.h / kq_family.h), and an adapter A
// with what only it knows:
//
//   using Genome, Config (derives from EvalConfig), Case (one shape's inputs), Weights, Kernel;
//   static constexpr const char* kName;                       // knowledge-base family, "nf4_gemv"
//   static std::string kb_path(const Config&);                // knowledge-base path key ("avx512vnni", ...)
//   static Genome baseline(const Config&);
//   static Case make_case(const Config&, const Shape&, uint64_t seed);   // random inputs, fp64 reference, bounds
//   static void static_check(const Config&, const Case&, const Genome&); // no code runs; genesis::Error = invalid
//   static Kernel build(const Config&, const Case&, const Genome&);     // in the worker
//   static void check(const Config&, const Kernel&, Case&, const Genome&, cpu::ThreadPool*);  // WrongResult
//   static const Weights& weights(const Case&); static Weights clone(const Weights&); static size_t bytes(const Weights&);
//   static void run(const Kernel&, const Weights&, Case&, cpu::ThreadPool*);   // one product (timed)
//   static double bytes_moved(const Case&);                   // what one product reads (the roofline's bytes)
//
// The pipeline (pipeline.h, instantiated by each family's .cpp): dedupe by genome hash in the knowledge base, static
// checks in the parent, then in a forked worker the correctness gate, the screen, full timing and the interleaved
// A/B confirm against the incumbent; at the end of a run the held-out gate on unseen shapes in both cache regimes.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "evolve/search.h"
#include "kb/kb.h"

namespace genesis::evolve {

using Shape = std::pair<int64_t, int64_t>;  // M x K
std::string shape_text(const Shape& s);
Shape parse_shape(const std::string& text);  // "768x2048"; throws genesis::Error
std::string shape_set_text(const std::vector<Shape>& shapes);  // "768x2048+2048x768"

// What every family's evaluation takes; a family's Config adds its path and data options.
struct EvalConfig {
  std::vector<Shape> train;
  int tokens = 1;
  // The regime(s) the search times in: "hot", "cold" or "both" (fitness = geomean over shapes x regimes).
  std::string regime = "both";
  int threads = 1;
  double timeout_s = 20;   // per candidate, the whole worker
  int screen_rounds = 5;   // A/B pairs vs the baseline per shape in the screen
  int full_rounds = 15;    // more pairs for a candidate not clearly slower
  int confirm_rounds = 20; // A/B pairs vs the incumbent per shape before a promotion
  double screen_cut = 1.25;    // dropped when slower than the incumbent by this factor
  double confirm_wins = 0.7;   // fraction of confirm pairs the candidate must win
  double min_sample_s = 0.002;
  bool allow_faults = false;  // tests only: build genomes carrying a planted Fault
  uint64_t data_seed = 1;
};

struct EvalTimes {
  double sandbox_s = 0, gate_s = 0, timing_s = 0, total_s = 0;  // summed over evaluations that ran
  int64_t ran = 0;
};

template <class A>
class FamilyEvaluator : public EvaluatorOf<typename A::Genome> {
 public:
  using Genome = typename A::Genome;
  using Config = typename A::Config;
  // kb may be null (no storage); run_id tags stored candidates.
  FamilyEvaluator(Config cfg, kb::Kb* kb, int64_t run_id);
  ~FamilyEvaluator() override;
  Outcome evaluate(const Genome& cand, int64_t index, const Genome& incumbent, double incumbent_fitness) override;
  const EvalTimes& times() const { return times_; }
  const Config& config() const { return cfg_; }

 private:
  struct Data;
  Config cfg_;
  kb::Kb* kb_;
  int64_t run_id_;
  std::unique_ptr<Data> data_;
  EvalTimes times_;
};

// One record of the end-of-run gate: the winner against the baseline on one (shape, regime).
struct GateRecord {
  std::string shape, set, regime;  // set: "train" | "heldout"
  double baseline_us = 0, best_us = 0, speedup = 0;
  double bytes = 0;  // what one product reads (GB/s = bytes / us / 1e3)
  int ab_wins = 0, ab_rounds = 0;
  bool correct = true;
  bool remeasured = false;  // it lost on the first look and was measured again (figures cover both looks)
  std::string diagnostics;
};

// Incorrect, or slower than the baseline by more than 2% with fewer than half the pairs won, or by more than 1% with
// a one-sided sign test over the pairs significant at 5%.
bool gate_loses(const GateRecord& r);

struct GateResult {
  std::vector<GateRecord> records;
  bool promoted = false;
  std::string reason;
};

// Runs winner vs baseline, interleaved, on every training and held-out shape in the hot and cold regimes (the cold
// regime rotates through copies of the weights worth >= 2x the last-level cache), after a correctness check of the
// winner on each, all in the sandbox. The winner is promoted only if it is correct everywhere and loses nowhere
// (slower by more than 2% with fewer than half the pairs won, on a first look and again over 3x the pairs).
template <class A>
GateResult heldout_gate_of(const typename A::Config& cfg, const std::vector<Shape>& heldout,
                           const typename A::Genome& winner, const typename A::Genome& baseline, int rounds);

}  // namespace genesis::evolve
