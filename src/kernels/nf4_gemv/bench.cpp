// Implementation of the gemv benchmark (see bench.h and BENCHMARKING.md: pinned threads, warm-up, samples >= 2 ms,
// medians with IQR, hot and cold regimes, baselines in the same run).
#include "kernels/nf4_gemv/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "common/error.h"
#include "common/timing.h"
#include "cpu/bandwidth.h"
#include "cpu/info.h"
#include "cpu/thread_pool.h"
#include "kernels/nf4_gemv/baselines.h"

namespace genesis::kernels::nf4_gemv {
namespace {

// Random NF4 data (codes uniform, absmax in [0.01, 0.1)): benchmarks need the bytes, not a trained matrix.
quant::Nf4Matrix random_nf4(int64_t M, int64_t K, int bs, uint64_t seed) {
  quant::Nf4Matrix m;
  m.rows = M;
  m.cols = K;
  m.blocksize = bs;
  m.packed.resize(size_t(M * K / 2));
  m.absmax.resize(size_t(M * K / bs));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  for (size_t i = 0; i < m.packed.size(); i += 8) {
    const uint64_t r = next();
    for (size_t j = 0; j < 8 && i + j < m.packed.size(); ++j) m.packed[i + j] = uint8_t(r >> (8 * j));
  }
  for (auto& a : m.absmax) a = 0.01f + 0.09f * float(next() >> 11) / float(1ull << 53);
  return m;
}

double roofline_gbps(const cpu::Bandwidth& bw, int threads) {
  if (threads <= 1) return bw.one_thread_gbps;
  const double linear = bw.one_thread_gbps * threads;
  return std::min(linear, std::max(bw.all_threads_gbps, bw.one_thread_gbps));
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> default_bench_shapes() {
  return {{768, 2048},  {2048, 768},  {512, 2048},   {2048, 512},   {1024, 2048},
          {2048, 1024}, {2048, 1536}, {3072, 2048},  {14336, 4096}, {4096, 14336}};
}

nlohmann::json run_gemv_bench(const GemvBenchOptions& opt, const std::function<void(const nlohmann::json&)>& on_record) {
  using nlohmann::json;
  const auto& info = cpu::cpu_info();
  const cpu::Bandwidth bw = cpu::read_bandwidth(opt.remeasure_bandwidth);
  std::vector<Path> paths = opt.paths.empty() ? available_paths() : opt.paths;
  for (Path p : paths) require_path(p);
  std::vector<int> threads = opt.threads;
  const int all = int(cpu::allowed_cpus().size());
  if (threads.empty()) threads = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
  for (const auto& r : opt.regimes)
    if (r != "hot" && r != "cold") fail("bench: regime '{}' is not one of hot, cold", r);
  const size_t llc = std::max<size_t>(info.caches.l3 ? info.caches.l3 : info.caches.l2, size_t(8) << 20);

  json out;
  out["machine"] = {{"signature", info.signature},
                    {"brand", info.brand},
                    {"read_bandwidth_gbps", {{"one_thread", bw.one_thread_gbps}, {"all_threads", bw.all_threads_gbps}}},
                    {"bandwidth_measured_now", !bw.from_cache},
                    {"llc_bytes", llc}};
  out["results"] = json::array();
  cpu::pin_current_thread(cpu::allowed_cpus().front());
  TimingOptions topt;
  topt.samples = opt.samples;

  for (auto [M, K] : opt.shapes)
    for (int T : opt.tokens) {
      const Problem pr{M, K, T, opt.blocksize};
      pr.validate();
      const auto w = random_nf4(M, K, opt.blocksize, uint64_t(M * 131 + K));
      std::vector<float> x(size_t(T * K));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i)) + 0.1f;
      std::vector<float> y(size_t(T * M));
      // Cold regime: enough copies that their total is >= 2x the last-level cache.
      const double w_bytes = double(w.packed.size() + w.absmax.size() * 4);
      const int copies = std::max(2, int(std::ceil(2.0 * double(llc) / w_bytes)) + 1);
      std::vector<quant::Nf4Matrix> w_cold;

      for (int nt : threads) {
        std::unique_ptr<cpu::ThreadPool> pool = nt > 1 ? std::make_unique<cpu::ThreadPool>(nt) : nullptr;
        for (const auto& regime : opt.regimes) {
          const bool cold = regime == "cold";
          // Baselines for this (shape, tokens, threads, regime).
          double naive_us = 0, compiled_us = 0;
          if (opt.baselines) {
            if (cold && w_cold.empty())
              for (int c = 0; c < copies; ++c) w_cold.push_back(random_nf4(M, K, opt.blocksize, uint64_t(c + 7)));
            std::vector<float> scratch;
            size_t i = 0;
            auto pick = [&]() -> const quant::Nf4Matrix& { return cold ? w_cold[i++ % w_cold.size()] : w; };
            const auto naive = time_calls([&] { naive_dequant_sgemv(pick(), x.data(), T, y.data(), scratch, pool.get()); }, topt);
            const auto comp = time_calls([&] { compiled_fused_loop(pick(), x.data(), T, y.data(), pool.get()); }, topt);
            naive_us = naive.median_us;
            compiled_us = comp.median_us;
            for (auto [name, st] : {std::pair{"naive", naive}, std::pair{"compiled", comp}}) {
              const double gbps = w_bytes / (st.median_us * 1e3);
              json rec = {{"shape", pr.shape()},     {"tokens", T},        {"path", name},
                          {"genome", ""},            {"genome_source", "-"}, {"threads", nt},
                          {"regime", regime},        {"median_us", st.median_us}, {"iqr_us", st.iqr_us},
                          {"gbps", gbps},            {"roofline_fraction", gbps / roofline_gbps(bw, nt)},
                          {"speedup_vs_naive", naive_us / st.median_us},
                          {"speedup_vs_compiled", compiled_us > 0 ? compiled_us / st.median_us : 0.0}};
              on_record(rec);
              out["results"].push_back(rec);
            }
          }
          for (Path p : paths) {
            std::optional<Genome> tuned = opt.genome_source ? opt.genome_source(p, pr) : std::nullopt;
            const Genome g = tuned ? *tuned : Genome::baseline(p);
            auto k = get_kernel(pr, g);
            std::vector<PackedWeights> packed;
            packed.push_back(pack(w, p));
            if (cold)
              for (int c = 1; c < copies; ++c) packed.push_back(packed[0].clone());
            size_t i = 0;
            const auto st = time_calls([&] { k->run(packed[cold ? i++ % packed.size() : 0], x.data(), y.data(), pool.get()); }, topt);
            const double bytes = bytes_moved(pr, p);
            const double gbps = bytes / (st.median_us * 1e3);
            json rec = {{"shape", pr.shape()},
                        {"tokens", T},
                        {"path", std::string(path_name(p))},
                        {"genome", k->id()},
                        {"genome_text", g.serialize()},
                        {"genome_source", tuned ? "kb" : "baseline"},
                        {"threads", nt},
                        {"regime", regime},
                        {"median_us", st.median_us},
                        {"iqr_us", st.iqr_us},
                        {"gbps", gbps},
                        {"roofline_fraction", gbps / roofline_gbps(bw, nt)},
                        {"speedup_vs_naive", naive_us > 0 ? naive_us / st.median_us : 0.0},
                        {"speedup_vs_compiled", compiled_us > 0 ? compiled_us / st.median_us : 0.0}};
            if (tuned) {
              auto kb = get_kernel(pr, Genome::baseline(p));
              size_t j = 0;
              const auto ab = ab_compare(
                  [&] { k->run(packed[cold ? i++ % packed.size() : 0], x.data(), y.data(), pool.get()); },
                  [&] { kb->run(packed[cold ? j++ % packed.size() : 0], x.data(), y.data(), pool.get()); }, 10, topt);
              rec["speedup_vs_baseline_genome"] = 1.0 / ab.median_ratio;
              rec["ab_wins"] = ab.a_wins;
              rec["ab_rounds"] = ab.rounds;
            }
            on_record(rec);
            out["results"].push_back(rec);
          }
        }
      }
    }
  return out;
}

}  // namespace genesis::kernels::nf4_gemv
