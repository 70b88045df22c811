// Search strategies over genomes: one-plus-one (the known result's hill climber, kept as a faithful baseline) and
// map-elites (an archive over cheap descriptors, with restarts on stagnation and precedence-preserving crossover).
// The strategies know nothing of timing: an Evaluator says what a candidate is worth, and nothing of a family: they
// see its genome through hash(), serialize(), `fault` and its mutator (mutate, crossover, descriptors, same_params).
// Same seed and same evaluator answers give the same sequence of genomes.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "evolve/mutate.h"
#include "evolve/sandbox.h"

namespace genesis::evolve {

enum class Strategy : uint8_t { one_plus_one, map_elites };
const char* strategy_name(Strategy s);                        // "one-plus-one", "map-elites"
std::optional<Strategy> parse_strategy(std::string_view name);

struct Outcome {
  Verdict verdict = Verdict::ok;
  double fitness = 0;     // geomean speedup over the baseline genome (ok only; higher is better)
  bool promoted = false;  // beat the incumbent in the confirm stage
  bool screened_out = false;
  bool reused = false;  // answered from an earlier evaluation (knowledge base); nothing ran
  std::string diagnostics;
};

// What a candidate is worth, for one family's genome type G (evolve/family.h: FamilyEvaluator is the real one).
template <class G>
class EvaluatorOf {
 public:
  virtual ~EvaluatorOf() = default;
  // Evaluates candidate number `index` of the run against the incumbent (the best so far, fitness known).
  virtual Outcome evaluate(const G& cand, int64_t index, const G& incumbent, double incumbent_fitness) = 0;
};
using Evaluator = EvaluatorOf<Genome>;

struct Progress {
  int64_t evaluations = 0, duplicates = 0, restarts = 0;
  double best_fitness = 0;
  std::array<int64_t, kVerdictCount> verdicts{};
  double elapsed_s = 0;
};

template <class G>
struct SearchOptionsOf {
  Strategy strategy = Strategy::map_elites;
  uint64_t seed = 1;
  int64_t max_evals = 1000;  // evaluations of new genomes (0 = no limit; then max_seconds must be set)
  double max_seconds = 0;    // wall-clock budget (0 = none)
  int stagnation = 150;      // map-elites: evaluations without an archive improvement before a restart
  int kick = 4;              // mutations applied to an elite at a restart
  double crossover_rate = 0.15;
  // Fitness of the start genome by definition (1.0 when fitness is a speedup over it); nullopt = as evaluated.
  std::optional<double> start_fitness;
  std::vector<G> seeds;  // extra starting genomes (best of similar shapes from the knowledge base)
  std::function<void(const Progress&)> on_progress;
};
using SearchOptions = SearchOptionsOf<Genome>;

struct TraceItem {
  int64_t index = 0;
  std::string origin;  // operator name, "crossover", "restart", "seed", "baseline"
  std::string genome_hash;
  Verdict verdict = Verdict::ok;
  double fitness = 0, best_fitness = 0;
  bool promoted = false, reused = false;
};

template <class G>
struct SearchResultOf {
  G best;
  double best_fitness = 1;
  int64_t evaluations = 0, duplicates = 0, restarts = 0, crossovers = 0, archive_cells = 0;
  std::array<OpStats, kOpCount> ops{};
  std::array<double, kOpCount> op_weights{};
  std::array<int64_t, kVerdictCount> verdicts{};
  std::vector<TraceItem> trace;
  std::string stop_reason;
};
using SearchResult = SearchResultOf<Genome>;

// Runs a search from `start` (normally the baseline genome, evaluated first as index 0). One overload per family
// (the strategies are one template in search.cpp, instantiated for each family's genome and mutator); kq_gemv's is
// declared in evolve/kq_family.h.
SearchResult search(const Genome& start, const Mutator& mutator, Evaluator& evaluator, const SearchOptions& opt);

}  // namespace genesis::evolve
