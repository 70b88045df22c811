// `genesis bench gemv --format Q4_K|...` as a library function: for each shape x activation rows x path x threads x
// regime, the kq_gemv product's median time (activation quantization included), IQR, GB/s and fraction of the read
// bandwidth measured in the same run, with the compiled ggml_gemv path (fp32 activations) timed in the same run as
// the "compiled" baseline. Records carry the same fields as the NF4 benchmark's, plus "format".
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/kq_gemv/kq_gemv.h"

namespace genesis::kernels::kq_gemv {

struct BenchOptions {
  Format format = Format::q4_k;
  std::vector<std::pair<int64_t, int64_t>> shapes;  // rows x cols (M x K)
  std::vector<int> tokens = {1};
  std::vector<Path> paths;                          // empty = every available path
  std::vector<int> threads;                         // empty = {1, all}
  std::vector<std::string> regimes = {"hot", "cold"};
  bool baselines = true;                            // time ggml_gemv too
  int samples = 15;
  bool remeasure_bandwidth = true;
  Genome genome = Genome::baseline();               // the JIT paths' schedule (`--genome`)
};

nlohmann::json run_bench(const BenchOptions& opt, const std::function<void(const nlohmann::json&)>& on_record);

// `genesis bench gemm`: the many-row products of a prefill chunk through the Linear seam, as the runtime runs them
// (prepare() on the calling thread, then one contiguous row range per thread): for each shape x rows x threads the
// median time, the prepare() part alone, multiply-adds per second, and the path describe() names (AMX tiles, the
// int8 kernels in passes of 16 rows, or widening + sgemm). Where AMX tiles serve, also the tiles alone on rows
// widened beforehand (what the widening costs is the difference).
struct GemmBenchOptions {
  Format format = Format::q4_k;
  std::vector<std::pair<int64_t, int64_t>> shapes;  // rows x cols (M x K)
  std::vector<int> rows = {512};                    // rows of x
  std::vector<int> threads;                         // empty = {1, all}
  int samples = 7;
};
nlohmann::json run_gemm_bench(const GemmBenchOptions& opt, const std::function<void(const nlohmann::json&)>& on_record);

// Random stored blocks of a format (every code byte random, scales halves of moderate size): benchmarks need bytes.
std::vector<uint8_t> random_stored(Format f, int64_t rows, int64_t cols, uint64_t seed);

}  // namespace genesis::kernels::kq_gemv
