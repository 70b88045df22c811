// How a CLI subcommand plugs into `genesis`: each cmd_*.cpp registers itself with GENESIS_COMMAND.
// Frontends parse and print only; the work they call lives in the library.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cpu/thread_pool.h"
#include "runtime/model/config.h"
#include "runtime/model/expert_usage.h"
#include "runtime/model/weights.h"

namespace genesis::cli {

// A --threads value for a thread pool: 0 stays 0 (one per allowed cpu); more threads than allowed cpus would only
// take turns on them (and spin while they wait), so they are clamped, with one line on stderr.
inline int clamp_threads(int requested) {
  const int allowed = int(cpu::allowed_cpus().size());
  if (requested <= allowed) return requested;
  fmt::print(stderr, "genesis: warning: --threads {} is more than the {} cpus this process may use; using {}\n",
             requested, allowed, allowed);
  return allowed;
}

// setup() adds the subcommand and its options to `app` and sets its callback.
using CommandSetup = std::function<void(CLI::App& app)>;

struct CommandEntry {
  std::string name;
  int order;  // position in `genesis --help`
  CommandSetup setup;
};

std::vector<CommandEntry>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, int order, CommandSetup setup) {
    command_registry().push_back({std::move(name), order, std::move(setup)});
  }
};

#define GENESIS_COMMAND(name, order, fn) \
  static ::genesis::cli::CommandRegistrar genesis_command_registrar_##fn(name, order, fn)

// --dense, the same for run, perplexity and bench model.
inline constexpr const char* kExpertsHelp =
    "expert weights: stored (default: a GGUF's Q4_K/Q5_K/Q6_K/Q8_0/Q4_0/Q4_1 experts as the file stores them, on the "
    "kq_gemv JIT kernels: the file's quality, a fast load; experts in other formats, and every expert of a "
    "safetensors checkpoint, NF4), nf4 (re-quantized to NF4 at load, nf4_gemv JIT kernels: fewer bytes and faster "
    "prefill, at the price of a second 4-bit rounding), nf4-reference, f32";
inline constexpr const char* kDenseHelp =
    "non-expert matrices: stored (default: a GGUF's Q4_K/Q5_K/Q6_K/Q8_0/Q4_0/Q4_1 matrices as the file stores them, on "
    "the kq_gemv JIT kernels with int8 activations as llama.cpp computes them; other 4-8 bit block formats as int8 "
    "blocks; everything else bf16), q8 (a GGUF's 4-8 bit matrices and embedding re-quantized to int8 blocks, 1.125 "
    "bytes per weight), bf16 (2 bytes per weight), f32 (a GGUF exactly as dequantized), nf4 (a GGUF's 4-6 bit "
    "matrices re-quantized to NF4: fewer bytes, some quality), nf4-all";

inline constexpr const char* kGpuHelp =
    "hybrid mode: attention with its KV cache, the dense matrices, router, shared expert, norms and output on a CUDA "
    "GPU (--gpu-device, default 0); the routed experts stay on the CPU's kernels. Needs a build with the CUDA "
    "component (`genesis info` says whether it has one and which GPUs it sees)";

inline constexpr const char* kGpuDeferHelp =
    "with --gpu: expert deferral (as KTransformers): the N lowest-ranked of each token's routed experts are added one "
    "layer later, so the CPU computes them while the GPU runs the next layer; faster, but not the model's exact "
    "function (its effect on the logits is in the README). Default 0 (exact)";

inline constexpr const char* kGpuPrefillHelp =
    "with --gpu and a GGUF MoE: prefill steps of at least N rows run the routed experts on the GPU, each layer's "
    "blocks streamed from host memory and multiplied there by cuBLAS (loaded at run time); 0 keeps them on the CPU. "
    "Default 256 when no expert is held on the GPU (--gpu-experts 0), else 0: a layer's transfer costs about as much "
    "as 256 rows of the CPU's experts on a 16-core host with an H200 (see the README)";

// --gpu-prefill-rows when not given: with --gpu and every routed expert on the CPU.
inline constexpr int kAutoGpuPrefillRows = 256;

inline constexpr const char* kGpuExpertsHelp =
    "with --gpu and a GGUF MoE: hold routed experts in the GPU's memory, as the file stores their blocks, within SIZE "
    "(12G, 500M, or all); a step's pairs routed to them run there while the CPU runs the rest. Which ones: the most "
    "used by --expert-usage's counts, else spread evenly over the layers. Default 0 (all routed experts on the CPU)";

inline constexpr const char* kExpertUsageHelp =
    "a JSON file of how often each routed expert was chosen: --gpu-experts places by it, and `run`, `perplexity` and "
    "`serve` (at exit) add their run's choices to it (created when missing): run a representative text through `genesis perplexity "
    "--expert-usage FILE` once, then load with --gpu --gpu-experts SIZE --expert-usage FILE";

inline constexpr const char* kCacheTypeHelp =
    "element type of the KV cache on the CPU: f16 (default, as llama.cpp's: half the memory and half the bytes decode "
    "attention reads; keys and values rounded to 11 significant bits) or f32 (exact, what the checks against "
    "transformers use). The hybrid mode keeps its cache on the GPU";

// --cache-type, the same for run, perplexity, serve and bench model.
struct KvArgs {
  std::string type = "f16";
  void add(CLI::App* c) {
    c->add_option("--cache-type", type, kCacheTypeHelp)->check(CLI::IsMember({"f16", "f32"}))->type_name("TYPE");
  }
  void apply(runtime::LoadOptions& o) const { o.kv_cache = runtime::parse_kv_type(type); }
};

// The hybrid mode's options, the same for run, perplexity, serve and bench model.
struct HybridArgs {
  bool gpu = false;
  int device = 0, defer = 0, prefill_rows = -1;  // -1: not given (kAutoGpuPrefillRows or 0)
  std::string experts = "0", usage;

  void add(CLI::App* c) {
    c->add_flag("--gpu", gpu, kGpuHelp);
    c->add_option("--gpu-device", device, "CUDA device for --gpu (default 0)")->check(CLI::NonNegativeNumber);
    c->add_option("--gpu-defer", defer, kGpuDeferHelp)->check(CLI::NonNegativeNumber);
    c->add_option("--gpu-prefill-rows", prefill_rows, kGpuPrefillHelp)->check(CLI::NonNegativeNumber);
    c->add_option("--gpu-experts", experts, kGpuExpertsHelp)->type_name("SIZE");
    c->add_option("--expert-usage", usage, kExpertUsageHelp)->type_name("FILE");
  }
  // Throws genesis::Error for a malformed --gpu-experts.
  void apply(runtime::LoadOptions& o) const {
    o.gpu = gpu;
    o.gpu_device = device;
    o.gpu_defer = defer;
    o.gpu_expert_budget = runtime::parse_byte_budget(experts);
    o.gpu_prefill_rows = prefill_rows >= 0 ? prefill_rows : gpu && o.gpu_expert_budget == 0 ? kAutoGpuPrefillRows : 0;
    o.expert_usage = usage;
  }
  // After a run (its results already out): its routed experts' choices (Session::expert_usage()) added to the
  // --expert-usage file, if given. A failure to write it is a warning on stderr, not the run's failure.
  void record(const runtime::ModelConfig& c, const std::vector<uint64_t>& counts, bool quiet) const {
    if (usage.empty()) return;
    if (!c.is_moe() || counts.empty()) {
      if (!quiet) fmt::print(stderr, "--expert-usage {}: nothing recorded (no routed experts ran)\n", usage);
      return;
    }
    try {
      const std::string note = runtime::add_expert_usage(usage, c, counts);
      if (!note.empty()) fmt::print(stderr, "--expert-usage: warning: {}\n", note);
      else if (!quiet) fmt::print(stderr, "--expert-usage {}: this run's expert choices added\n", usage);
    } catch (const std::exception& e) {
      fmt::print(stderr, "--expert-usage: warning: not recorded: {}\n", e.what());
    }
  }
};

}  // namespace genesis::cli
