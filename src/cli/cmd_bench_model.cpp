// `genesis bench model`: prefill and decode speed of a model directory next to its memory-bandwidth bound
// (runtime::run_model_bench does the work; this file parses and prints). Registers under `genesis bench`.
#include <fmt/core.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "cli/command.h"
#include "common/error.h"
#include "kernels/nf4_gemv/nf4_gemv.h"
#include "runtime/model/bench.h"

namespace {

namespace rt = genesis::runtime;
namespace nf = genesis::kernels::nf4_gemv;

struct Args {
  rt::ModelBenchOptions o;
  std::string json_file, path, experts = "stored", kb, dense = "stored";
  bool no_kb = false, quiet = false, keep_quant = false;
  genesis::cli::HybridArgs hybrid;
  genesis::cli::KvArgs kv;
};

void run(Args& a) {
  rt::set_expert_mode(a.experts, a.o.load);
  if (!a.path.empty()) {
    auto p = nf::parse_path(a.path);
    if (!p) genesis::fail("unknown kernel path '{}' (possible: avx512vnni, avx512bf16, avx512fp32, avx2vnni, avx2int8, avx2, scalar)", a.path);
    nf::require_path(*p);
    a.o.load.path = *p;
  }
  rt::set_dense_mode(a.dense, a.o.load);
  a.o.load.keep_quant = a.keep_quant;
  a.hybrid.apply(a.o.load);
  a.kv.apply(a.o.load);
  a.o.load.kb_path = a.kb;
  a.o.load.use_kb = !a.no_kb;
  a.o.progress = !a.quiet;
  a.o.threads = genesis::cli::clamp_threads(a.o.threads);
  const auto j = rt::run_model_bench(a.o);
  const double gib = double(1u << 30);
  fmt::print("model        {}\n             {}\nexperts      {}\ndense        {}\n", j["model"].get<std::string>(),
             j["config"].get<std::string>(), j["experts"].get<std::string>(), j["dense"].get<std::string>());
  if (j.contains("gpu"))
    fmt::print("gpu          {}\n             VRAM held {:.2f} GiB (weights {:.2f} GiB, KV cache and scratch the rest)\n",
               j["gpu"].get<std::string>(), j["vram_bytes"].get<double>() / gib,
               j["gpu_weight_bytes"].get<double>() / gib);
  fmt::print("load         {:.1f} s, peak memory {:.2f} GiB = {:.2f}x the weights held ({:.2f} GiB experts + "
             "{:.2f} GiB dense)\n",
             j["load_s"].get<double>(), j["peak_rss_bytes"].get<double>() / gib,
             j["peak_rss_over_weights"].get<double>(), j["nf4_expert_bytes"].get<double>() / gib,
             j["dense_bytes"].get<double>() / gib);
  fmt::print("prefill      {} tokens in {:.2f} s: {:.1f} tokens/s\n", j["prompt_tokens"].get<int>(),
             j["prefill_s"].get<double>(), j["prefill_tps"].get<double>());
  fmt::print("decode       {:.2f} tokens/s (median {:.1f} ms/token, IQR {:.1f} ms, {} tokens, {} threads, KV cache {}, "
             "experts {:.0f}% of the time)\n",
             j["decode_tps"].get<double>(), j["decode_ms_median"].get<double>(), j["decode_ms_iqr"].get<double>(),
             j["decode_tokens"].get<int>(), j["threads"].get<int>(), j["kv_cache"].get<std::string>(),
             100 * j["decode_expert_fraction"].get<double>());
  const double on_gpu = j.value("gpu_expert_pair_fraction", 0.0);
  if (j["bound_tps"].get<double>() <= 0)
    fmt::print("bound        none on the CPU: every routed expert ran on the GPU (--gpu-experts)\n");
  else
    fmt::print("bound        {}{:.1f} MB/token at {:.1f} GB/s ({}) = {:.2f} tokens/s; decode reaches {:.0f}% of it "
               "({:.1f} GB/s)\n",
               !j.contains("gpu") ? std::string()
               : on_gpu > 0       ? fmt::format("CPU experts ({:.0f}% of the pairs; the GPU ran the rest): ",
                                                100 * (1 - on_gpu))
                                  : std::string("CPU experts: "),
               j["bytes_per_token"].get<double>() / 1e6, j["read_bandwidth_gbps"].get<double>(),
               j["bandwidth_measured_now"].get<bool>() ? "measured now" : "cached", j["bound_tps"].get<double>(),
               100 * j["bound_fraction"].get<double>(), j["achieved_gbps"].get<double>());
  if (j.contains("read_bandwidth_passes")) {
    const auto& b = j["read_bandwidth_passes"]["before_prefill"];
    const auto& a = j["read_bandwidth_passes"]["after_decode"];
    fmt::print("bandwidth    median of {} read passes before the prefill ({:.1f}, best {:.1f}, worst {:.1f} GB/s) and {} "
               "after the decode ({:.1f}, best {:.1f}, worst {:.1f}); against the best pass decode reaches {:.0f}%\n",
               b["passes"].get<int>(), b["median"].get<double>(), b["best"].get<double>(), b["worst"].get<double>(),
               a["passes"].get<int>(), a["median"].get<double>(), a["best"].get<double>(), a["worst"].get<double>(),
               100 * j["bound_fraction_best"].get<double>());
    const double lo = std::min(b["median"].get<double>(), a["median"].get<double>());
    const double hi = std::max(b["median"].get<double>(), a["median"].get<double>());
    if (lo > 0 && hi / lo > 1.15)
      fmt::print("warning      the read bandwidth moved {:.0f}% between before and after: the machine is shared or "
                 "throttling, and the bound is only as good as this figure\n",
                 100 * (hi / lo - 1));
    const double worst = std::min(b["worst"].get<double>(), a["worst"].get<double>());
    if (worst > 0 && worst < 0.5 * lo)
      fmt::print("warning      a read pass ran at {:.1f} GB/s, under half the median: something else used the memory "
                 "bus during the run (a file's writeback, another process), and the bound is only as good as this "
                 "figure\n",
                 worst);
  }
  if (j.contains("paired")) {
    const auto& p = j["paired"];
    fmt::print("paired       {} more steps, each between read passes ({:.1f} GB/s median, {:.1f}-{:.1f}): median step "
               "{:.1f} ms, {:.0f}% of the bound of the passes around it (quartiles {:.0f}-{:.0f}%)\n",
               p["steps"].get<int>(), p["read_gbps_median"].get<double>(), p["read_gbps_worst"].get<double>(),
               p["read_gbps_best"].get<double>(), p["step_ms_median"].get<double>(),
               100 * p["bound_fraction"].get<double>(), 100 * p["bound_fraction_q25"].get<double>(),
               100 * p["bound_fraction_q75"].get<double>());
  }
  if (j.contains("streams"))
    fmt::print("batched      {} streams: step {:.1f} ms (IQR {:.1f}), {:.2f} tokens/s = {:.2f}x one stream; bound "
               "{:.1f} MB/step ({:.1f} distinct experts per MoE layer) = {:.2f} tokens/s, reached {:.0f}%\n",
               j["streams"].get<int64_t>(), j["batched_step_ms_median"].get<double>(),
               j["batched_step_ms_iqr"].get<double>(), j["batched_decode_tps"].get<double>(),
               j["batched_vs_single"].get<double>(), j["batched_step_bytes"].get<double>() / 1e6,
               j["batched_distinct_experts_per_layer"].get<double>(), j["batched_bound_tps"].get<double>(),
               100 * j["batched_bound_fraction"].get<double>());
  if (j.contains("batched_paired")) {
    const auto& p = j["batched_paired"];
    fmt::print("paired       {} more batched steps between read passes ({:.1f} GB/s median): median step {:.1f} ms, "
               "{:.0f}% of the bound of the passes around it (quartiles {:.0f}-{:.0f}%){}\n",
               p["steps"].get<int>(), p["read_gbps_median"].get<double>(), p["step_ms_median"].get<double>(),
               100 * p["bound_fraction"].get<double>(), 100 * p["bound_fraction_q25"].get<double>(),
               100 * p["bound_fraction_q75"].get<double>(),
               p.contains("vs_single") ? fmt::format(", {:.2f}x one stream's paired steps", p["vs_single"].get<double>())
                                       : std::string());
  }
  // The profile: milliseconds per token by op class, decode and prefill side by side (and with --streams, the
  // batched decode step's milliseconds per step).
  const auto& pd = j["profile"]["decode"];
  const auto& pp = j["profile"]["prefill"];
  const bool batched = j["profile"].contains("batched_decode");
  const nlohmann::json none = nlohmann::json::object();
  const auto& pb = batched ? j["profile"]["batched_decode"] : none;
  fmt::print("profile      ms/token        decode   prefill{}\n", batched ? "   ms/batched step" : "");
  for (const char* op : {"attention", "delta_rule", "dense", "router", "experts_gate_up", "experts_down",
                         "elementwise", "logits", "barrier", "gpu", "total"}) {
    const double d = pd[op].get<double>(), p = pp[op].get<double>();
    const double dt = pd["total"].get<double>(), ptot = pp["total"].get<double>();
    fmt::print("  {:<18} {:>9.3f} {:>4.0f}% {:>8.3f} {:>4.0f}%", op, d, dt > 0 ? 100 * d / dt : 0.0, p,
               ptot > 0 ? 100 * p / ptot : 0.0);
    if (batched) {
      const double b = pb[op].get<double>(), bt = pb["total"].get<double>();
      fmt::print(" {:>9.3f} {:>4.0f}%", b, bt > 0 ? 100 * b / bt : 0.0);
    }
    fmt::print("\n");
  }
  fmt::print("  {:<18} {:>9.1f}       {:>8.1f}", "regions per step", pd["regions_per_step"].get<double>(),
             pp["regions_per_step"].get<double>());
  if (batched) fmt::print("       {:>9.1f}", pb["regions_per_step"].get<double>());
  fmt::print("\n");
  // The pool's utilization by op (GENESIS_PROFILE_UTILIZATION=1): the threads' time inside regions over the op's wall
  // time times the threads.
  if (pd.contains("utilization")) {
    auto util = [&](const nlohmann::json& p) {
      std::string s;
      for (const char* op : {"attention", "delta_rule", "dense", "router", "experts_gate_up", "experts_down",
                             "elementwise", "logits"})
        if (p.contains("utilization") && p["utilization"].contains(op) && p[op].get<double>() > 0)
          s += fmt::format(" {} {:.0f}%", op, 100 * p["utilization"][op].get<double>());
      return s;
    };
    fmt::print("utilization  threads busy in regions over the op's time: decode{}\n", util(pd));
    if (batched) fmt::print("             batched step{}\n", util(pb));
  }
  // GENESIS_CUDA_TIMES=1 (CUDA events, graphs off) or =graph (stamps inside the graphs): the GPU's own time by part,
  // beside the host's view above. The bracketed rows (the stamps' own cost, the segments' whole) stay out of the sum.
  if (pd.contains("gpu_parts") || pp.contains("gpu_parts")) {
    const char* how = std::getenv("GENESIS_CUDA_TIMES") && std::string(std::getenv("GENESIS_CUDA_TIMES")) == "graph"
                          ? "stamps in the decode graphs"
                          : "CUDA events; graphs off";
    fmt::print("gpu parts    ms/token        decode   prefill   (GPU time by {})\n", how);
    std::map<std::string, std::pair<double, double>> rows;
    if (pd.contains("gpu_parts"))
      for (const auto& [k, v] : pd["gpu_parts"].items()) rows[k].first = v.get<double>();
    if (pp.contains("gpu_parts"))
      for (const auto& [k, v] : pp["gpu_parts"].items()) rows[k].second = v.get<double>();
    double sd = 0, sp = 0;
    for (const auto& [k, v] : rows) {
      fmt::print("  {:<24} {:>9.3f} {:>9.3f}\n", k, v.first, v.second);
      if (k.empty() || k[0] != '(') sd += v.first, sp += v.second;
    }
    fmt::print("  {:<24} {:>9.3f} {:>9.3f}\n", "sum", sd, sp);
  }
  if (!a.json_file.empty()) {
    std::ofstream f(a.json_file);
    f << j.dump(2) << "\n";
    if (!f) genesis::fail("cannot write {}", a.json_file);
    fmt::print("wrote {}\n", a.json_file);
  }
}

void setup(CLI::App& app) {
  auto* bench = app.get_subcommand("bench");
  auto a = std::make_shared<Args>();
  auto* c = bench->add_subcommand("model", "Prefill and decode tokens/s of a model vs its memory-bandwidth bound");
  c->footer(
      "The bound is the bytes a decode step reads over the read bandwidth measured in the run (about a second of read "
      "passes before the prefill and after the decode). The decode then runs as many steps again, each between two "
      "read passes (\"paired\" in --json): each step against the bandwidth of the moments around it, its weights "
      "read from memory; on a shared host whose bandwidth drifts, that median is the figure to quote.");
  c->add_option("--model,-m", a->o.dir, "model directory (config.json + safetensors; `genesis synth` makes one) or GGUF file")
      ->required();
  c->add_option("--prompt-tokens", a->o.prompt_tokens, "prefill length (default 64)")->check(CLI::PositiveNumber);
  c->add_option("--tokens,-n", a->o.decode_tokens, "decode steps timed (default 64)")->check(CLI::PositiveNumber);
  c->add_option("--threads,-t", a->o.threads, "threads (default: all allowed cores)")->check(CLI::NonNegativeNumber);
  c->add_option("--streams", a->o.streams,
                "also time decode steps of this many sequences at once (continuous batching, as `genesis serve`): "
                "aggregate tokens/s, against one stream and the batched step's bound (default 1: off)")
      ->check(CLI::Range(1, 256));
  c->add_option("--experts", a->experts, genesis::cli::kExpertsHelp);
  c->add_option("--path", a->path, "NF4 kernel path (default: the fastest this CPU runs)");
  c->add_flag("--keep-quant", a->keep_quant, "GGUF: every block-quantized matrix (experts, attention, MLP, output, embedding) stays as stored and runs on the ggml_gemv kernels with fp32 activations: the dequantized model's results at the file's size (no NF4; slower kernels)");
  c->add_option("--dense", a->dense, genesis::cli::kDenseHelp);
  c->add_option("--kb", a->kb, "knowledge base of tuned kernels (default ~/.cache/genesis/kb.sqlite)");
  c->add_flag("--no-kb", a->no_kb, "baseline kernels only");
  a->hybrid.add(c);
  a->kv.add(c);
  c->add_flag("--cached-bandwidth", a->o.cached_bandwidth, "use the cached read bandwidth instead of measuring now (and skip the decode steps paired with read passes)");
  c->add_flag("--quiet,-q", a->quiet, "no progress bar");
  c->add_option("--json", a->json_file, "also write the record as JSON to FILE");
  c->callback([a] { run(*a); });
}

}  // namespace
// After `bench` (order 50) exists.
GENESIS_COMMAND("bench-model", 51, setup);
