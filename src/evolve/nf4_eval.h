// The nf4_gemv family inside the factory: its loop body as the mutation operators see it, and the evaluation
// pipeline of ARCHITECTURE.md (static checks, correctness gate, screen, full timing, interleaved A/B confirm) run in
// the sandbox, with every outcome written to the knowledge base. Also the end-of-run held-out gate.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "evolve/search.h"
#include "kb/kb.h"
#include "kernels/nf4_gemv/nf4_gemv.h"

namespace genesis::evolve {

using Shape = std::pair<int64_t, int64_t>;  // M x K
std::string shape_text(const Shape& s);
Shape parse_shape(const std::string& text);  // "768x2048"; throws genesis::Error
std::string shape_set_text(const std::vector<Shape>& shapes);  // "768x2048+2048x768"

struct Nf4EvalConfig {
  kernels::nf4_gemv::Path path = kernels::nf4_gemv::Path::avx512_vnni;
  std::vector<Shape> train;
  int tokens = 1;
  int blocksize = 64;
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

// The loop body of a genome for one problem (parameter genes only), from make_conf + canonical_body + def_use.
BodyFn nf4_body_fn(const kernels::nf4_gemv::Problem& problem);
// The parameter space for a path on this CPU.
ParamSpace nf4_param_space(kernels::nf4_gemv::Path p);

struct EvalTimes {
  double sandbox_s = 0, gate_s = 0, timing_s = 0, total_s = 0;  // summed over evaluations that ran
  int64_t ran = 0;
};

class Nf4Evaluator : public Evaluator {
 public:
  // kb may be null (no storage); run_id tags stored candidates.
  Nf4Evaluator(Nf4EvalConfig cfg, kb::Kb* kb, int64_t run_id);
  ~Nf4Evaluator() override;
  Outcome evaluate(const Genome& cand, int64_t index, const Genome& incumbent, double incumbent_fitness) override;
  const EvalTimes& times() const { return times_; }
  const Nf4EvalConfig& config() const { return cfg_; }

 private:
  struct Data;
  Nf4EvalConfig cfg_;
  kb::Kb* kb_;
  int64_t run_id_;
  std::unique_ptr<Data> data_;
  EvalTimes times_;
};

// One record of the end-of-run gate: the winner against the baseline on one (shape, regime).
struct GateRecord {
  std::string shape, set, regime;  // set: "train" | "heldout"
  double baseline_us = 0, best_us = 0, speedup = 0;
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
GateResult heldout_gate(const Nf4EvalConfig& cfg, const std::vector<Shape>& heldout, const Genome& winner,
                        const Genome& baseline, int rounds);

}  // namespace genesis::evolve
