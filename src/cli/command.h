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
    "expert weights: nf4 (re-quantized to NF4 at load, JIT kernels; default), stored (a GGUF's experts as the file "
    "stores them on the kq_gemv JIT kernels, those in other formats NF4), nf4-reference, f32";
inline constexpr const char* kDenseHelp =
    "non-expert matrices: stored (default: a GGUF's Q4_K/Q5_K/Q6_K/Q8_0/Q4_0/Q4_1 matrices as the file stores them, on "
    "the kq_gemv JIT kernels with int8 activations as llama.cpp computes them; other 4-8 bit block formats as int8 "
    "blocks; everything else bf16), q8 (a GGUF's 4-8 bit matrices and embedding re-quantized to int8 blocks, 1.125 "
    "bytes per weight), bf16 (2 bytes per weight), f32 (a GGUF exactly as dequantized), nf4 (a GGUF's 4-6 bit "
    "matrices re-quantized to NF4: fewer bytes, some quality), nf4-all";

}  // namespace genesis::cli
