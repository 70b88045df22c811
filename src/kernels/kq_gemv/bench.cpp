// Implementation of the kq_gemv benchmark (see bench.h and BENCHMARKING.md: pinned threads, warm-up, samples
// >= 2 ms, medians with IQR, hot and cold regimes, the baseline in the same run).
#include "kernels/kq_gemv/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "common/error.h"
#include "common/timing.h"
#include "cpu/bandwidth.h"
#include "cpu/info.h"
#include "cpu/thread_pool.h"
#include "kernels/amx/amx_gemm.h"
#include "kernels/ggml_gemv/ggml_gemv.h"
#include "kernels/kq_gemv/build.h"
#include "kernels/kq_gemv/layout.h"
#include "kernels/linear.h"
#include "quant/ggml.h"
#include "quant/half.h"

namespace genesis::kernels::kq_gemv {
namespace {

double roofline_gbps(const cpu::Bandwidth& bw, int threads) {
  if (threads <= 1) return bw.one_thread_gbps;
  const double linear = bw.one_thread_gbps * threads;
  return std::min(linear, std::max(bw.all_threads_gbps, bw.one_thread_gbps));
}

std::string shape_text(int64_t m, int64_t k) { return std::to_string(m) + "x" + std::to_string(k); }

// The thread counts asked for, else 1 and all cores.
std::vector<int> thread_counts(const std::vector<int>& asked) {
  if (!asked.empty()) return asked;
  const int all = int(cpu::allowed_cpus().size());
  return all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
}

}  // namespace

std::vector<uint8_t> random_stored(Format f, int64_t rows, int64_t cols, uint64_t seed) {
  const int bc = layout::stored_block_cols(f), bb = layout::stored_block_bytes(f);
  const int64_t blocks = rows * (cols / bc);
  std::vector<uint8_t> b(size_t(blocks * bb));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  for (size_t i = 0; i < b.size(); i += 8) {
    const uint64_t r = next();
    for (size_t j = 0; j < 8 && i + j < b.size(); ++j) b[i + j] = uint8_t(r >> (8 * j));
  }
  auto half = [&](uint8_t* p) {  // exponent field 8..13: |h| in [2^-7, 2^-1)
    const uint16_t h = uint16_t((8 + next() % 6) << 10 | (next() & 0x3FF));
    std::memcpy(p, &h, 2);
  };
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* blk = b.data() + i * bb;
    switch (f) {
      case Format::q4_k:
      case Format::q5_k: half(blk), half(blk + 2); break;
      case Format::q6_k: half(blk + 208); break;
      case Format::q4_1: half(blk), half(blk + 2); break;
      default: half(blk); break;
    }
  }
  return b;
}

nlohmann::json run_bench(const BenchOptions& opt, const std::function<void(const nlohmann::json&)>& on_record) {
  using nlohmann::json;
  const auto& info = cpu::cpu_info();
  const cpu::Bandwidth bw = cpu::read_bandwidth(opt.remeasure_bandwidth);
  std::vector<Path> paths = opt.paths.empty() ? available_paths() : opt.paths;
  for (Path p : paths) require_path(p);
  const std::vector<int> threads = thread_counts(opt.threads);
  for (const auto& r : opt.regimes)
    if (r != "hot" && r != "cold") fail("bench: regime '{}' is not one of hot, cold", r);
  const size_t llc = std::max<size_t>(info.caches.l3 ? info.caches.l3 : info.caches.l2, size_t(8) << 20);
  const uint32_t type = ggml_type(opt.format);

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

  for (const auto& shape : opt.shapes)
    for (int T : opt.tokens) {
      const int64_t M = shape.first, K = shape.second;  // named copies: the lambdas below capture them
      if (T < 1 || T > kMaxRows) fail("bench: {} tokens; 1..{} possible", T, kMaxRows);
      const auto stored = random_stored(opt.format, M, K, uint64_t(M * 131 + K));
      std::vector<float> x(size_t(T * K));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i)) + 0.1f;
      std::vector<float> y(size_t(T * M));
      const double stored_bytes = double(stored.size());
      const int copies = std::max(2, int(std::ceil(2.0 * double(llc) / stored_bytes)) + 1);
      std::vector<ggml_gemv::GgmlMatrix> g_mats;
      std::vector<Matrix> k_mats;
      auto ggml_copies = [&](int n) {
        while (int(g_mats.size()) < n) {
          const auto b = g_mats.empty() ? stored : random_stored(opt.format, M, K, uint64_t(g_mats.size() + 7));
          g_mats.push_back(ggml_gemv::make_matrix(type, M, K, b.data(), b.size()));
        }
      };
      auto kq_copies = [&](int n) {
        while (int(k_mats.size()) < n) {
          const auto b = k_mats.empty() ? stored : random_stored(opt.format, M, K, uint64_t(k_mats.size() + 7));
          k_mats.push_back(make_matrix(type, M, K, b.data(), b.size()));
        }
      };
      Activations acts;
      for (int nt : threads) {
        std::unique_ptr<cpu::ThreadPool> pool = nt > 1 ? std::make_unique<cpu::ThreadPool>(nt) : nullptr;
        for (const auto& regime : opt.regimes) {
          const bool cold = regime == "cold";
          double ggml_us = 0;
          auto base = [&](const std::string& path, const std::string& genome) {
            return json{{"format", format_name(opt.format)}, {"shape", shape_text(M, K)}, {"tokens", T},
                        {"path", path}, {"genome", genome}, {"threads", nt}, {"regime", regime}};
          };
          if (opt.baselines) {
            ggml_copies(cold ? copies : 1);
            size_t i = 0;
            const auto st = time_calls(
                [&] { ggml_gemv::gemv(g_mats[cold ? i++ % g_mats.size() : 0], x.data(), y.data(), T, pool.get()); },
                topt);
            ggml_us = st.median_us;
            const double gbps = stored_bytes / (st.median_us * 1e3);
            json rec = base("ggml_gemv", "");
            rec.update({{"genome_source", "-"}, {"median_us", st.median_us}, {"iqr_us", st.iqr_us}, {"gbps", gbps},
                        {"roofline_fraction", gbps / roofline_gbps(bw, nt)}, {"speedup_vs_naive", 0.0},
                        {"speedup_vs_compiled", 1.0}, {"bytes", stored_bytes}});
            on_record(rec);
            out["results"].push_back(rec);
          }
          kq_copies(cold ? copies : 1);
          for (Path p : paths) {
            // One product with genome g on the next copy (cold) or the same one (hot), `i` counting the calls.
            auto call_with = [&](const Genome& g, size_t& i) {
              const Matrix& w = k_mats[cold ? i++ % k_mats.size() : 0];
              quantize_activations(w.format, x.data(), T, K, acts);
              if (pool == nullptr) {
                run_rows(w, acts, y.data(), M, 0, M, p, g);
                return;
              }
              const int n = pool->size();
              const int64_t per = (M + n - 1) / n;
              pool->run([&](int tid, int) {
                const int64_t a = std::min(M, int64_t(tid) * per), b = std::min(M, a + per);
                if (a < b) run_rows(w, acts, y.data(), M, a, b, p, g);
              });
            };
            size_t i = 0, j = 0;
            auto call = [&] { call_with(opt.genome, i); };
            const auto st = time_calls(call, topt);
            nlohmann::json ab_rec;
            if (p != Path::scalar && !(opt.genome == Genome::baseline())) {
              // --genome against the baseline, interleaved (A B A B ...): a shared host's speed moves between runs,
              // and only pairs taken moments apart compare two genomes.
              const Genome base = Genome::baseline();
              const auto ab = ab_compare(call, [&] { call_with(base, j); }, 10, topt);
              ab_rec = {{"speedup_vs_baseline_genome", 1.0 / ab.median_ratio}, {"ab_wins", ab.a_wins},
                        {"ab_rounds", ab.rounds}};
            }
            const double bytes = bytes_moved(k_mats[0], T);
            const double gbps = bytes / (st.median_us * 1e3);
            const Genome& g = opt.genome;
            const std::string kid = fmt::format("kq_gemv_{}{}{}_t{}_{}", p == Path::avx512vnni ? "" : path_name(p),
                                                p == Path::avx512vnni ? "" : "_", format_name(opt.format),
                                                std::min(T, pass_rows(p, opt.format, g, T).front()), g.code_key());
            json rec = base(path_name(p), p == Path::scalar ? std::string("scalar") : kid);
            rec.update({{"genome_source", g == Genome::baseline() ? "baseline" : "--genome"},
                        {"genome_text", g.serialize()},
                        {"median_us", st.median_us}, {"iqr_us", st.iqr_us},
                        {"gbps", gbps}, {"roofline_fraction", gbps / roofline_gbps(bw, nt)},
                        {"speedup_vs_naive", 0.0},
                        {"speedup_vs_compiled", ggml_us > 0 ? ggml_us / st.median_us : 0.0}, {"bytes", bytes}});
            if (!ab_rec.empty()) rec.update(ab_rec);
            on_record(rec);
            out["results"].push_back(rec);
          }
        }
      }
    }
  return out;
}

nlohmann::json run_gemm_bench(const GemmBenchOptions& opt,
                              const std::function<void(const nlohmann::json&)>& on_record) {
  using nlohmann::json;
  const auto& info = cpu::cpu_info();
  const std::vector<int> threads = thread_counts(opt.threads);
  json out;
  out["machine"] = {{"signature", info.signature}, {"brand", info.brand}, {"amx_tiles", amx::available()}};
  out["results"] = json::array();
  cpu::pin_current_thread(cpu::allowed_cpus().front());
  TimingOptions topt;
  topt.samples = opt.samples;
  for (const auto& shape : opt.shapes)
    for (int n : opt.rows) {
      const int64_t M = shape.first, K = shape.second;
      if (n < 1 || n > 4096) fail("bench gemm: {} rows of x; 1..4096 possible", n);
      const auto stored = random_stored(opt.format, M, K, uint64_t(M * 131 + K));
      const auto lin = make_linear(
          std::make_shared<const Matrix>(make_matrix(ggml_type(opt.format), M, K, stored.data(), stored.size())));
      std::vector<float> x(size_t(n) * size_t(K)), y(size_t(n) * size_t(M));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i)) + 0.1f;
      auto acts = lin->new_activations();
      const bool tiles = lin->tile_rows() > 0 && n >= lin->tile_rows();
      // The tiles alone: every row widened to bf16 beforehand (the stride widened_rows uses).
      std::vector<uint16_t> wb;
      amx::PackedRows packed;
      int64_t ldw = 0;
      if (tiles) {
        amx::pack_rows(x.data(), n, K, packed);
        ldw = packed.kblocks * amx::kTileK + amx::kTileK;
        const int64_t mp = (M + amx::kBlockRows - 1) / amx::kBlockRows * amx::kBlockRows;
        wb.assign(size_t(mp * ldw), 0);
        std::vector<float> f(static_cast<size_t>(K));
        for (int64_t r = 0; r < M; ++r) {
          lin->row_f32(r, f.data());
          for (int64_t c = 0; c < K; ++c) wb[size_t(r * ldw + c)] = quant::f32_to_bf16(f[size_t(c)]);
        }
      }
      for (int nt : threads) {
        std::unique_ptr<cpu::ThreadPool> pool = nt > 1 ? std::make_unique<cpu::ThreadPool>(nt) : nullptr;
        // Rows per thread: an even share rounded up to 32 (the runtime's prefill rounds to 16: a range may then start
        // inside a 32-row block, which widened_rows() handles alike).
        const int64_t per = ((M + nt - 1) / nt + 31) / 32 * 32;
        auto over_threads = [&](const std::function<void(int64_t, int64_t)>& f) {
          if (!pool) return f(0, M);
          pool->run([&](int tid, int) {
            const int64_t a = std::min(M, int64_t(tid) * per), b = std::min(M, a + per);
            if (a < b) f(a, b);
          });
        };
        const auto prep = time_calls([&] { lin->prepare(x.data(), n, *acts); }, topt);
        const auto whole = time_calls(
            [&] {
              lin->prepare(x.data(), n, *acts);
              over_threads([&](int64_t a, int64_t b) { lin->run_rows(*acts, y.data(), a, b); });
            },
            topt);
        const double macs = double(M) * double(K) * double(n);
        json rec{{"format", format_name(opt.format)}, {"shape", shape_text(M, K)}, {"rows", n}, {"threads", nt},
                 {"path", lin->describe()}, {"tiles", tiles}, {"median_us", whole.median_us}, {"iqr_us", whole.iqr_us},
                 {"prepare_us", prep.median_us}, {"gmacs", macs / (whole.median_us * 1e3)}};
        if (tiles) {
          const auto bare = time_calls(
              [&] {
                over_threads([&](int64_t a, int64_t b) {
                  amx::gemm_bf16(wb.data() + a * ldw, ldw, b - a, packed, y.data() + a, M);
                });
              },
              topt);
          rec["tiles_only_us"] = bare.median_us;
          rec["tiles_only_gmacs"] = macs / (bare.median_us * 1e3);
        }
        on_record(rec);
        out["results"].push_back(rec);
      }
    }
  return out;
}

}  // namespace genesis::kernels::kq_gemv
