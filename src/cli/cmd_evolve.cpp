// `genesis evolve`: parses flags, runs evolve::run_evolve, prints the table of baseline vs best per shape and the
// operator statistics, writes --json and, with --plot, draws fitness over evaluations through tools/plot_fitness.py.
#include <fmt/core.h>

#include <cmath>
#include <map>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli/command.h"
#include "common/error.h"
#include "evolve/run.h"

namespace {

using genesis::fail;
using nlohmann::json;

struct EvolveArgs {
  genesis::evolve::EvolveOptions opt;
  std::string json_file, plot_file;
  bool no_seed = false;
};

void print_report(const json& r) {
  fmt::print("\nrun {}  {}  path {}{}  strategy {}  seed {}  tokens {}  threads {}  search regime {}\n",
             r["run_id"].get<int64_t>(), r["family"].get<std::string>(), r["path"].get<std::string>(),
             r.contains("format") ? "  format " + r["format"].get<std::string>() : std::string(),
             r["strategy"].get<std::string>(), r["seed"].get<uint64_t>(), r["tokens"].get<int>(),
             r["threads"].get<int>(), r.value("regime", "hot"));
  fmt::print("evaluations {} ({:.0f}/min, {} duplicates skipped, {} restarts, {} crossovers, {} archive cells), stop: {}\n",
             r["evaluations"].get<int64_t>(), r["evals_per_min"].get<double>(), r["duplicates"].get<int64_t>(),
             r["restarts"].get<int64_t>(), r["crossovers"].get<int64_t>(), r["archive_cells"].get<int64_t>(),
             r["stop_reason"].get<std::string>());
  std::string v;
  for (auto& [k, n] : r["verdicts"].items()) v += fmt::format("{} {}  ", k, n.get<int64_t>());
  fmt::print("verdicts: {}\n", v);
  const auto& ts = r["time_split"];
  fmt::print("time per evaluation: {:.3f} s, of which timing {:.0f}%, sandbox + correctness gate + static {:.0f}%\n",
             ts["evaluations_run"].get<int64_t>() > 0
                 ? ts["total_s"].get<double>() / double(ts["evaluations_run"].get<int64_t>())
                 : 0.0,
             100 * (1 - ts["overhead_fraction"].get<double>()), 100 * ts["overhead_fraction"].get<double>());
  fmt::print("baseline  {}  {}\n", r["baseline"]["id"].get<std::string>(), r["baseline"]["genome"].get<std::string>());
  fmt::print("best      {}  {}  (search fitness {:.3f}x)\n", r["best"]["id"].get<std::string>(),
             r["best"]["genome"].get<std::string>(), r["best"]["fitness"].get<double>());
  fmt::print("\n{:>11} {:>8} {:>5} {:>12} {:>10} {:>8} {:>8} {:>9}\n", "shape", "set", "regime", "baseline_us",
             "best_us", "speedup", "A/B wins", "best GB/s");
  std::map<std::string, std::pair<double, int>> logs;  // "train hot" -> (sum of log speedups, count)
  for (const auto& s : r["shapes"]) {
    fmt::print("{:>11} {:>8} {:>5} {:>12.2f} {:>10.2f} {:>7.3f}x {:>5}/{:<3} {:>8.1f}{}\n",
               s["shape"].get<std::string>(), s["set"].get<std::string>(), s["regime"].get<std::string>(),
               s["baseline_us"].get<double>(), s["best_us"].get<double>(), s["speedup"].get<double>(),
               s["ab_wins"].get<int>(), s["ab_rounds"].get<int>(), s.value("best_gb_s", 0.0),
               s.value("remeasured", false) ? "  (lost at first, measured again)" : "");
    if (s["speedup"].get<double>() > 0) {
      auto& l = logs[s["set"].get<std::string>() + " " + s["regime"].get<std::string>()];
      l.first += std::log(s["speedup"].get<double>());
      ++l.second;
    }
  }
  std::string gm;
  for (const auto& [k, l] : logs) gm += fmt::format("  {} {:.3f}x", k, std::exp(l.first / l.second));
  if (!gm.empty()) fmt::print("geometric mean speedup:{}\n", gm);
  fmt::print("\npromoted to the knowledge base: {} ({})\n", r["promoted"].get<bool>() ? "yes" : "no",
             r["promotion_reason"].get<std::string>());
  fmt::print("\n{:>13} {:>9} {:>7} {:>8} {:>9} {:>7}\n", "operator", "proposed", "legal", "correct", "improved",
             "weight");
  for (auto& [k, o] : r["operators"].items())
    fmt::print("{:>13} {:>9} {:>7} {:>8} {:>9} {:>7.3f}\n", k, o["proposed"].get<int64_t>(), o["legal"].get<int64_t>(),
               o["correct"].get<int64_t>(), o["improved"].get<int64_t>(), o["weight"].get<double>());
}

// The plotting script is tools/plot_fitness.py of the source tree (the build folder sits inside it); matplotlib is optional (pip), so a failure to
// plot is reported, not fatal.
void plot(const std::string& json_file, const std::string& png) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path exe_dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
  fs::path script = "tools/plot_fitness.py";
  for (const fs::path& cand : {exe_dir / ".." / "tools" / "plot_fitness.py", exe_dir / "tools" / "plot_fitness.py"})
    if (fs::exists(cand, ec)) script = cand;
  const std::string cmd = fmt::format("python3 '{}' '{}' '{}'", script.string(), json_file, png);
  const int rc = std::system(cmd.c_str());
  if (rc != 0)
    fmt::print(stderr, "genesis: warning: plotting failed (exit {}); needs python3 with matplotlib: {}\n", rc, cmd);
  else
    fmt::print("fitness plot: {}\n", png);
}

void setup_evolve(CLI::App& app) {
  auto a = std::make_shared<EvolveArgs>();
  auto* c = app.add_subcommand("evolve", "Discover faster kernels on this CPU (evolutionary search, knowledge base)");
  c->add_option("--family", a->opt.family,
                 "kernel family: nf4_gemv (default; NF4 experts) or kq_gemv (GGUF block formats as stored)");
  c->add_option("--format", a->opt.format,
                 "kq_gemv's weight format: Q4_K (default), Q5_K, Q6_K, Q8_0, Q4_0 or Q4_1 (nf4_gemv: NF4 only)");
  c->add_option("--path", a->opt.path, "ISA path (default: the fastest this CPU runs)");
  c->add_option("--shape", a->opt.train,
                 "training shapes MxK (default nf4_gemv: Qwen3-30B-A3B and Qwen3-Next experts as the runtime runs "
                 "them: fused gate_up 1536x2048 and 1024x2048, down 2048x768 and 2048x512; kq_gemv: Qwen3-30B-A3B's "
                 "fused gate_up 1536x2048, down 2048x768, attention q 4096x2048 and o 2048x4096)");
  c->add_option("--heldout", a->opt.heldout,
                 "held-out shapes MxK, never seen by the search (default nf4_gemv: 2880x1024 1408x2048; kq_gemv: "
                 "512x2048 2880x1024 1408x2048)");
  c->add_option("--tokens", a->opt.tokens, "tokens per call, 1..16");
  c->add_option("--regime", a->opt.regime,
                 "cache regime of the search's fitness: both (default), hot (weights stay in cache) or cold (rotate "
                 "copies > 2x LLC); the end-of-run gate measures both")
      ->check(CLI::IsMember({"hot", "cold", "both"}));
  c->add_option("--gate", a->opt.gate,
                 "what the end-of-run gate requires: both (default: not slower in either regime) or search (not slower "
                 "in the search's --regime, hot or cold; the other regime is measured and reported, not gating). "
                 "Decode streams a model's weights from memory: a cold winner is what it runs")
      ->check(CLI::IsMember({"both", "search"}));
  c->add_option("--budget", a->opt.budget, "10m / 90s / 1h of search, or a number of evaluations (default 2m)");
  c->add_option("--strategy", a->opt.strategy, "one-plus-one or map-elites");
  c->add_option("--seed", a->opt.seed, "random seed (same seed, same sequence of genomes)");
  c->add_option("--threads", a->opt.threads, "threads per kernel call");
  c->add_option("--kb", a->opt.kb_path, "knowledge base file (default ~/.cache/genesis/kb.sqlite)");
  c->add_option("--resume", a->opt.resume, "continue an interrupted run (its id, see `genesis kb list`)");
  c->add_flag("--no-kb-seed", a->no_seed, "do not seed the search with the best genomes of other shapes");
  c->add_option("--json", a->json_file, "write the JSON report to FILE");
  c->add_option("--plot", a->plot_file, "draw fitness over evaluations to FILE.png (python3 + matplotlib)");
  c->callback([a] {
    auto opt = a->opt;
    opt.seed_from_kb = !a->no_seed;
    if (!a->plot_file.empty() && a->json_file.empty()) a->json_file = a->plot_file + ".json";
    const json report = genesis::evolve::run_evolve(opt);
    print_report(report);
    if (!a->json_file.empty()) {
      std::ofstream f(a->json_file);
      if (!f) fail("cannot write {}", a->json_file);
      f << report.dump(2) << "\n";
      fmt::print("report: {}\n", a->json_file);
    }
    if (!a->plot_file.empty()) plot(a->json_file, a->plot_file);
  });
}

}  // namespace
GENESIS_COMMAND("evolve", 40, setup_evolve);
