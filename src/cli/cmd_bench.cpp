// `genesis bench gemv`: parses flags, runs kernels::nf4_gemv::run_gemv_bench (--format NF4) or
// kernels::kq_gemv::run_bench (the GGUF formats), prints a table and writes --json.
// (`genesis bench model` registers itself under the same `bench` command from its own file.)
#include <fmt/core.h>

#include <cctype>
#include <charconv>
#include <fstream>

#include "cli/command.h"
#include "common/error.h"
#include "kb/kb.h"
#include "kernels/family.h"
#include "kernels/kq_gemv/bench.h"
#include "kernels/nf4_gemv/bench.h"

namespace {

using genesis::fail;
namespace nf = genesis::kernels::nf4_gemv;
namespace kq = genesis::kernels::kq_gemv;

std::pair<int64_t, int64_t> parse_shape(const std::string& s) {
  const auto x = s.find('x');
  int64_t m = 0, k = 0;
  auto ok = [](const std::string& t, int64_t& v) {
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    return ec == std::errc() && p == t.data() + t.size() && v > 0;
  };
  if (x == std::string::npos || !ok(s.substr(0, x), m) || !ok(s.substr(x + 1), k))
    fail("bad shape '{}': expected MxK with positive integers, e.g. 768x2048", s);
  return {m, k};
}

struct BenchArgs {
  std::vector<std::string> shapes, paths = {"all"};
  std::vector<int> tokens = {1}, threads;
  std::string regime = "both", json_file, kb_file, format = "NF4", genome;
  bool no_kb = false;
  int blocksize = 64, samples = 15;
  bool no_baselines = false, cached_bandwidth = false;
};

void print_row(const nlohmann::json& r) {
  const bool kernel = r["genome_source"] != "-";
  std::string extra;
  if (r.contains("speedup_vs_baseline_genome"))
    extra = fmt::format("  vs baseline genome {:.3f}x ({}/{} A/B wins)", r["speedup_vs_baseline_genome"].get<double>(),
                        r["ab_wins"].get<int>(), r["ab_rounds"].get<int>());
  fmt::print("{:>4} {:>11} {:>3} {:>11} {:>2} {:>4} {:>10.1f} {:>8.1f} {:>7.1f} {:>6.0f}% {:>8} {:>8}  {}{}\n",
             r.value("format", std::string("NF4")), r["shape"].get<std::string>(), r["tokens"].get<int>(), r["path"].get<std::string>(),
             r["threads"].get<int>(), r["regime"].get<std::string>(), r["median_us"].get<double>(),
             r["iqr_us"].get<double>(), r["gbps"].get<double>(), 100 * r["roofline_fraction"].get<double>(),
             r["speedup_vs_naive"].get<double>() > 0 ? fmt::format("{:.1f}x", r["speedup_vs_naive"].get<double>()) : "-",
             r["speedup_vs_compiled"].get<double>() > 0 ? fmt::format("{:.2f}x", r["speedup_vs_compiled"].get<double>())
                                                        : "-",
             kernel ? r["genome"].get<std::string>() : "", extra);
  std::fflush(stdout);
}

void print_header() {
  fmt::print("{:>4} {:>11} {:>3} {:>11} {:>2} {:>4} {:>10} {:>8} {:>7} {:>7} {:>8} {:>8}  {}\n", "fmt", "shape", "tok",
             "path", "th", "reg", "median_us", "iqr_us", "GB/s", "roof", "vs_naive", "vs_comp", "kernel");
}

void finish(const BenchArgs& args, const nlohmann::json& result) {
  const auto& m = result["machine"];
  fmt::print("roofline: read bandwidth {:.1f} GB/s (1 thread), {:.1f} GB/s (all threads), {}; machine {}\n",
             m["read_bandwidth_gbps"]["one_thread"].get<double>(), m["read_bandwidth_gbps"]["all_threads"].get<double>(),
             m["bandwidth_measured_now"].get<bool>() ? "measured in this run" : "cached",
             m["signature"].get<std::string>());
  if (!args.json_file.empty()) {
    std::ofstream f(args.json_file);
    if (!f) fail("cannot write --json file '{}'", args.json_file);
    f << result.dump(2) << "\n";
    fmt::print("wrote {}\n", args.json_file);
  }
}

// --format Q4_K ...: the kq_gemv family against ggml_gemv ("vs_comp" is the speedup over ggml_gemv).
void run_kq(const BenchArgs& args) {
  kq::BenchOptions opt;
  const auto f = kq::parse_format(args.format);
  if (!f) fail("--format '{}' is unknown; possible: NF4, {}", args.format, kq::format_names());
  opt.format = *f;
  for (const auto& s : args.shapes) opt.shapes.push_back(parse_shape(s));
  if (opt.shapes.empty()) opt.shapes = nf::default_bench_shapes();
  opt.tokens = args.tokens;
  for (int t : opt.tokens)
    if (t < 1 || t > kq::kMaxRows) fail("--tokens {}: possible values are 1..{} for {}", t, kq::kMaxRows, args.format);
  opt.threads = args.threads;
  for (int t : opt.threads)
    if (t < 1) fail("--threads {}: must be at least 1", t);
  for (const auto& p : args.paths) {
    if (p == "all") {
      opt.paths.clear();
      break;
    }
    auto path = kq::parse_path(p);
    if (!path) fail("--path '{}' is unknown for {}; possible: avx512vnni, avx2vnni, avx2, scalar, all", p, args.format);
    opt.paths.push_back(*path);
  }
  opt.regimes = args.regime == "both" ? std::vector<std::string>{"hot", "cold"} : std::vector<std::string>{args.regime};
  opt.samples = args.samples;
  opt.baselines = !args.no_baselines;
  opt.remeasure_bandwidth = !args.cached_bandwidth;
  if (!args.genome.empty()) opt.genome = kq::Genome::parse(args.genome);
  print_header();
  finish(args, kq::run_bench(opt, print_row));
}

struct GemmArgs {
  std::vector<std::string> shapes;
  std::vector<int> rows = {512}, threads;
  std::string format = "Q4_K", json_file;
  int samples = 7;
};

// `bench gemm`: the prefill's many-row products (kq_gemv formats) through the Linear seam.
void run_gemm(const GemmArgs& args) {
  kq::GemmBenchOptions opt;
  const auto f = kq::parse_format(args.format);
  if (!f) fail("--format '{}' is unknown; possible: {}", args.format, kq::format_names());
  opt.format = *f;
  for (const auto& s : args.shapes) opt.shapes.push_back(parse_shape(s));
  if (opt.shapes.empty()) opt.shapes = {{5120, 2048}, {2048, 4096}, {1536, 2048}, {2048, 768}};
  opt.rows = args.rows;
  for (int r : opt.rows)
    if (r < 1 || r > 4096) fail("--rows {}: possible values are 1..4096", r);
  opt.threads = args.threads;
  for (int t : opt.threads)
    if (t < 1) fail("--threads {}: must be at least 1", t);
  opt.samples = args.samples;
  fmt::print("{:>4} {:>10} {:>5} {:>3} {:>10} {:>10} {:>8} {:>11} {:>8}  {}\n", "fmt", "shape", "rows", "th", "median_us",
             "prepare_us", "GMAC/s", "tiles_only", "GMAC/s", "path");
  auto row = [](const nlohmann::json& r) {
    const bool t = r.contains("tiles_only_us");
    fmt::print("{:>4} {:>10} {:>5} {:>3} {:>10.1f} {:>10.1f} {:>8.1f} {:>11} {:>8}  {}\n", r["format"].get<std::string>(),
               r["shape"].get<std::string>(), r["rows"].get<int>(), r["threads"].get<int>(),
               r["median_us"].get<double>(), r["prepare_us"].get<double>(), r["gmacs"].get<double>(),
               t ? fmt::format("{:.1f}", r["tiles_only_us"].get<double>()) : "-",
               t ? fmt::format("{:.1f}", r["tiles_only_gmacs"].get<double>()) : "-", r["path"].get<std::string>());
    std::fflush(stdout);
  };
  const auto result = kq::run_gemm_bench(opt, row);
  fmt::print("machine {}; AMX tiles {}\n", result["machine"]["signature"].get<std::string>(),
             result["machine"]["amx_tiles"].get<bool>() ? "yes" : "no");
  if (!args.json_file.empty()) {
    std::ofstream out(args.json_file);
    if (!out) fail("cannot write --json file '{}'", args.json_file);
    out << result.dump(2) << "\n";
    fmt::print("wrote {}\n", args.json_file);
  }
}

void setup_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (kernels, models); each has --json");
  bench->require_subcommand(1);
  auto args = std::make_shared<BenchArgs>();
  auto* g = bench->add_subcommand(
      "gemv", "matrix-vector kernels: NF4 vs the naive and compiled approaches, or a GGUF format's kq_gemv kernels vs "
              "the compiled ggml_gemv path (--format)");
  g->add_option("--format", args->format,
                "weight format: NF4 (the nf4_gemv family) or Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1 (the kq_gemv family, "
                "int8 activations, compared with ggml_gemv in the same run)");
  g->add_option("--shape", args->shapes, "MxK weight shapes (default: the expert shapes of BENCHMARKING.md)");
  g->add_option("--tokens", args->tokens, "tokens sharing one pass over the weights, 1..16 (several allowed)");
  g->add_option("--threads", args->threads, "thread counts (default: 1 and all cores)");
  g->add_option("--path", args->paths,
                "kernel paths: avx512vnni, avx512bf16, avx512fp32, avx2vnni, avx2int8, avx2, scalar, or all (GGUF formats: "
                "avx512vnni, avx2vnni, avx2, scalar)");
  g->add_option("--regime", args->regime, "hot (weights stay in cache), cold (rotate copies > 2x LLC), or both")
      ->check(CLI::IsMember({"hot", "cold", "both"}));
  g->add_option("--blocksize", args->blocksize, "NF4 blocksize (multiple of 32, up to 4096)");
  g->add_option("--samples", args->samples, "timed samples per measurement (each >= 2 ms)")->check(CLI::Range(3, 1000));
  g->add_flag("--no-baselines", args->no_baselines, "skip the naive and compiled-loop baselines");
  g->add_flag("--cached-bandwidth", args->cached_bandwidth,
              "use the cached read bandwidth as the roofline instead of measuring it now (~2 s)");
  g->add_option("--json", args->json_file, "also write {machine, results} as JSON to FILE");
  g->add_option("--kb", args->kb_file, "knowledge base to take tuned genomes from (default ~/.cache/genesis/kb.sqlite)");
  g->add_flag("--no-kb", args->no_kb, "use every path's baseline genome, ignoring the knowledge base");
  g->add_option("--genome", args->genome,
                "GGUF formats: the kq_gemv genome the JIT paths run, as text (e.g. 'pass=16'; unnamed genes keep "
                "their baseline values; default: the baseline genome)");
  auto gargs = std::make_shared<GemmArgs>();
  auto* gm = bench->add_subcommand(
      "gemm", "the prefill's many-row products of a GGUF format (kq_gemv) through the runtime's seam: prepare, then "
              "one row range per thread; the int8 kernels, or AMX bf16 tiles where the CPU has them (GENESIS_AMX=0 "
              "turns them off, GENESIS_AMX_ROWS sets where they start)");
  gm->add_option("--format", gargs->format, "weight format: Q4_K (default), Q5_K, Q6_K, Q8_0, Q4_0, Q4_1");
  gm->add_option("--shape", gargs->shapes,
                 "MxK weight shapes (default: the 30B-A3B shape's q+k+v 5120x2048, o 2048x4096, expert gate_up "
                 "1536x2048 and down 2048x768)");
  gm->add_option("--rows", gargs->rows, "rows of x, 1..4096 (default 512: a prefill chunk)");
  gm->add_option("--threads", gargs->threads, "thread counts (default: 1 and all cores)");
  gm->add_option("--samples", gargs->samples, "timed samples per measurement")->check(CLI::Range(3, 1000));
  gm->add_option("--json", gargs->json_file, "also write {machine, results} as JSON to FILE");
  gm->callback([gargs] { run_gemm(*gargs); });
  g->callback([args] {
    const auto family = genesis::kernels::bench_family_for(args->format);
    if (!family)
      fail("--format '{}' is unknown; possible: {}", args->format, genesis::kernels::bench_formats());
    if (family->name == "kq_gemv") {
      run_kq(*args);
      return;
    }
    if (!args->genome.empty())
      fail("--genome takes a kq_gemv genome (the GGUF formats: {}); NF4 takes its genomes from --kb",
           kq::format_names());
    nf::GemvBenchOptions opt;
    for (const auto& s : args->shapes) opt.shapes.push_back(parse_shape(s));
    if (opt.shapes.empty()) opt.shapes = nf::default_bench_shapes();
    opt.tokens = args->tokens;
    for (int t : opt.tokens)
      if (t < 1 || t > nf::kMaxTokens) fail("--tokens {}: possible values are 1..{}", t, nf::kMaxTokens);
    opt.threads = args->threads;
    for (int t : opt.threads)
      if (t < 1) fail("--threads {}: must be at least 1", t);
    for (const auto& p : args->paths) {
      if (p == "all") {
        opt.paths.clear();
        break;
      }
      auto path = nf::parse_path(p);
      if (!path) fail("--path '{}' is unknown; possible: avx512vnni, avx512bf16, avx512fp32, avx2vnni, avx2int8, avx2, scalar, all", p);
      opt.paths.push_back(*path);
    }
    opt.regimes = args->regime == "both" ? std::vector<std::string>{"hot", "cold"} : std::vector<std::string>{args->regime};
    opt.blocksize = args->blocksize;
    opt.samples = args->samples;
    opt.baselines = !args->no_baselines;
    opt.remeasure_bandwidth = !args->cached_bandwidth;
    if (!args->no_kb) {
      const std::string kb_path = args->kb_file.empty() ? genesis::kb::default_path() : args->kb_file;
      // The genome the runtime serves: that shape's record, else the nearest recorded shape's (same path, tokens).
      opt.genome_source = [kb_path](nf::Path p, const nf::Problem& pr) -> std::optional<nf::Genome> {
        const auto text = genesis::kb::nearest_genome_text(kb_path, "nf4_gemv", std::string(nf::path_name(p)),
                                                           pr.shape(), pr.tokens);
        if (!text) return std::nullopt;
        return nf::Genome::parse(*text);
      };
    }
    print_header();
    auto result = nf::run_gemv_bench(opt, print_row);
    for (auto& r : result["results"]) r["format"] = "NF4";
    finish(*args, result);
  });
}

}  // namespace
GENESIS_COMMAND("bench", 50, setup_bench);
