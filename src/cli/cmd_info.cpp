// `genesis info [--json] [--remeasure]`: prints cpu::cpu_report() as an aligned table, or as one JSON object.
#include <fmt/core.h>

#include <string>

#include "cli/command.h"
#include "cpu/isa.h"
#include "cpu/report.h"
#include "kernels/family.h"
#include "runtime/model/gpu.h"

extern "C" char* openblas_get_corename();  // OpenBLAS (also in its cblas.h)

namespace {

std::string human_bytes(uint64_t b) {
  if (b == 0) return "unknown";
  if (b >= (uint64_t{1} << 30) && b % (uint64_t{1} << 30) == 0) return fmt::format("{} GiB", b >> 30);
  if (b >= (uint64_t{1} << 20) && b % (uint64_t{1} << 20) == 0) return fmt::format("{} MiB", b >> 20);
  if (b >= 1024 && b % 1024 == 0) return fmt::format("{} KiB", b >> 10);
  return fmt::format("{} B", b);
}

void row(const std::string& key, const std::string& value) { fmt::print("  {:<22} {}\n", key, value); }

void print_table(const nlohmann::json& r) {
  using genesis::cpu::Isa;
  using genesis::cpu::IsaSet;
  fmt::print("CPU\n");
  row("vendor", r["vendor"].get<std::string>());
  row("brand", r["brand"].get<std::string>());
  row("signature", r["signature"].get<std::string>());
  row("family/model/stepping",
      fmt::format("{} / {} / {}", r["family"].get<int>(), r["model"].get<int>(), r["stepping"].get<int>()));
  row("microcode", r["microcode"].get<std::string>());
  row("cpus",
      fmt::format("{} logical, {} physical cores", r["logical_cpus"].get<int>(), r["physical_cores"].get<int>()));
  const auto& c = r["caches"];
  row("caches (per instance)", fmt::format("L1d {}, L2 {}, L3 {}", human_bytes(c["l1d"].get<uint64_t>()),
                                           human_bytes(c["l2"].get<uint64_t>()), human_bytes(c["l3"].get<uint64_t>())));
  row("L3 total", human_bytes(c["l3_total"].get<uint64_t>()));

  std::string cap = r["max_isa"].get<std::string>();
  fmt::print("\nISA{}\n", cap.empty() ? "" : fmt::format(" (GENESIS_MAX_ISA={})", cap));
  for (int k = 0; k < genesis::cpu::kIsaCount; ++k) {
    const char* name = IsaSet::name(static_cast<Isa>(k));
    bool det = r["isa"][name].get<bool>(), use = r["isa_usable"][name].get<bool>();
    std::string v = det ? "yes" : "no";
    if (!cap.empty()) v = fmt::format("{:<4}{}", v, det && !use ? "(capped off)" : (use ? "(usable)" : ""));
    row(name, v);
  }

  fmt::print("\nMemory\n");
  const auto& bw = r["read_bandwidth_gbps"];
  row("read 1 thread", fmt::format("{:.1f} GB/s", bw["one_thread"].get<double>()));
  row(fmt::format("read {} threads", r["bandwidth_threads"].get<int>()),
      fmt::format("{:.1f} GB/s", bw["all_threads"].get<double>()));
  row("buffer",
      fmt::format("{} ({})", human_bytes(r["bandwidth_buffer_bytes"].get<uint64_t>()),
                  r["bandwidth_from_cache"].get<bool>() ? "from cache; --remeasure to measure again" : "measured now"));

  fmt::print("\nKernels\n");
  for (const auto& [family, k] : r["kernels"].items()) {
    std::string formats;
    for (const auto& x : k["formats"]) formats += (formats.empty() ? "" : ", ") + x.get<std::string>();
    row(family, fmt::format("uses {}; formats {}", k["path"].get<std::string>(), formats));
    for (const auto& p : k["paths"])
      fmt::print("    {:<12} {:<3} {:<4} {:<24} {}\n", p["path"].get<std::string>(), p["usable"].get<bool>() ? "yes" : "no",
                 p["jit"].get<bool>() ? "jit" : "c++", p["needs"].get<std::string>(), p["error_bound"].get<std::string>());
  }

  row("openblas core", r["openblas_core"].get<std::string>() + " (OPENBLAS_CORETYPE overrides)");

  fmt::print("\nThread pool\n");
  const auto& p = r["pool_overhead_us"];
  row("empty run()",
      fmt::format("{:.2f} us median, {} threads", p["median_us"].get<double>(), p["threads"].get<int>()));

  fmt::print("\nGPU (--gpu, the hybrid mode)\n");
  row("cuda", r["gpu"].get<std::string>());
}

void setup_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show the CPU, its ISA, caches, read bandwidth and thread-pool overhead");
  static bool json = false, remeasure = false;
  cmd->add_flag("--json", json, "Print one JSON object");
  cmd->add_flag("--remeasure", remeasure, "Measure read bandwidth again instead of using the cached figure");
  cmd->callback([] {
    nlohmann::json r = genesis::cpu::cpu_report(remeasure);
    r["openblas_core"] = openblas_get_corename();
    for (const auto& f : genesis::kernels::families()) {
      nlohmann::json paths = nlohmann::json::array();
      for (const auto& p : f.paths)
        paths.push_back({{"path", p.name}, {"usable", p.usable}, {"needs", p.needs}, {"jit", p.jit},
                         {"error_bound", p.error_bound}});
      r["kernels"][f.name] = {{"path", f.path},       {"paths", paths},  {"formats", f.formats},
                              {"summary", f.summary}, {"bytes", f.bytes}, {"bench_gemv", f.benchmarked}};
    }
    r["gpu"] = genesis::runtime::gpu_summary();
    r["cuda_built"] = genesis::runtime::cuda_built();
    if (json) {
      fmt::print("{}\n", r.dump(2));
    } else {
      print_table(r);
    }
  });
}

}  // namespace
GENESIS_COMMAND("info", 10, setup_info);
