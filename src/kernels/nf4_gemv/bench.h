// `genesis bench gemv` as a library function: for each shape x tokens x path x threads x regime, the kernel's median
// time, IQR, GB/s and fraction of the measured read bandwidth, with the naive approach and the compiled fused loop
// timed in the same run. The CLI only parses flags and prints.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/nf4_gemv/nf4_gemv.h"

namespace genesis::kernels::nf4_gemv {

struct GemvBenchOptions {
  std::vector<std::pair<int64_t, int64_t>> shapes;  // M x K
  std::vector<int> tokens = {1};
  std::vector<Path> paths;                          // empty = every available path
  std::vector<int> threads;                         // empty = {1, all}
  std::vector<std::string> regimes = {"hot", "cold"};
  int blocksize = quant::kNf4DefaultBlocksize;
  bool baselines = true;                            // time the naive and compiled approaches too
  int samples = 15;
  bool remeasure_bandwidth = true;  // the roofline is measured in this run (false: the cached figure)
  // Where a path's genome comes from (e.g. the knowledge base); nullopt = the baseline genome.
  std::function<std::optional<Genome>(Path, const Problem&)> genome_source;
};

// Shapes of BENCHMARKING.md (expert projections of Qwen3-30B-A3B, Qwen3-Next, OLMoE, Mixtral, and two more).
std::vector<std::pair<int64_t, int64_t>> default_bench_shapes();

// Runs the benchmark. on_record is called for every result as soon as it is measured (for live output).
// Returns {"machine": {...}, "results": [...]}.
nlohmann::json run_gemv_bench(const GemvBenchOptions& opt, const std::function<void(const nlohmann::json&)>& on_record);

}  // namespace genesis::kernels::nf4_gemv
