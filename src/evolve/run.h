// One factory run end to end: options -> knowledge base run -> search -> held-out gate -> best records -> JSON
// report. Resume of an interrupted run replays the same seed over the evaluations the knowledge base kept.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "evolve/kq_family.h"
#include "evolve/nf4_eval.h"

namespace genesis::evolve {

struct EvolveOptions {
  std::string family = "nf4_gemv";  // nf4_gemv | kq_gemv
  std::string path;    // empty = the fastest path of this CPU
  std::string format;  // kq_gemv: Q4_K (default), Q5_K, Q6_K, Q8_0, Q4_0, Q4_1; nf4_gemv: empty or NF4
  std::vector<std::string> train, heldout;  // shapes "MxK"; empty = defaults
  int tokens = 1;
  // Cache regime of the search's fitness: "both" (default), "hot" or "cold". A hot-only search on shapes whose
  // weights fit L2 finds schedules (e.g. 4 row groups per tile) that lose 20-40% in the cold regime.
  std::string regime = "both";
  std::string budget = "2m";  // "10m", "90s", "1h" (time) or "5000" (evaluations)
  std::string strategy = "map-elites";
  uint64_t seed = 1;
  int threads = 1;
  std::string kb_path;  // empty = kb::default_path()
  int64_t resume = 0;   // run id to continue
  bool seed_from_kb = true;
  int gate_rounds = 20;
  // Which regimes the end-of-run gate requires the winner not to lose in: "both" (default) or "search" (only the
  // search's regime, with --regime hot or cold; the other regime is still measured and reported). Decode streams a
  // model's weights from memory (far more than the LLC), so a cold winner that loses hot is what it runs.
  std::string gate = "both";
  bool progress = true;
  // Tests: shorter timing per evaluation.
  double min_sample_s = 0.002;
  int screen_rounds = 5, full_rounds = 15, confirm_rounds = 20;
  double timeout_s = 20;
};

// Defaults of BENCHMARKING.md: training = the Qwen3-30B-A3B and Qwen3-Next expert products as the runtime runs them
// (fused gate_up, down); held-out = odd sizes. kq_gemv: Qwen3-30B-A3B's expert (fused gate_up, down) and attention
// (q, o) products; held-out: its k/v projection and two sizes of other models.
std::vector<std::string> default_train_shapes(const std::string& family = "nf4_gemv");
std::vector<std::string> default_heldout_shapes(const std::string& family = "nf4_gemv");

struct Budget {
  int64_t evals = 0;
  double seconds = 0;
};
Budget parse_budget(const std::string& text);  // throws genesis::Error (zero, malformed)

// "nf4-gemv" | "nf4_gemv" -> "nf4_gemv", "kq-gemv" | "kq_gemv" -> "kq_gemv"; else throws
std::string canonical_family(const std::string& name);

// Runs the factory; returns the JSON report (see README: strategy, seed, evaluations, verdicts, operators,
// baseline, best, shapes, ...). Prints a live progress line on stderr when opt.progress.
nlohmann::json run_evolve(const EvolveOptions& opt);

}  // namespace genesis::evolve
