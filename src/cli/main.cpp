// `genesis` entry point: builds the CLI11 app from the registered subcommands and maps errors to exit codes.
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "cli/command.h"
#include "common/error.h"
#include "common/util.h"

extern "C" char* openblas_get_corename();  // OpenBLAS (also in its cblas.h)

namespace {

// OpenBLAS (DYNAMIC_ARCH) picks its kernels from the CPU model when it loads. A model it does not know falls back to
// Prescott (SSE3) kernels, 4-6x slower per core: so it did on the 16-core host (a VM of a new Xeon), where prefill's
// sgemm then took 56% of the time. OPENBLAS_CORETYPE overrides the choice, but OpenBLAS reads it in its own
// constructor, before main(); so when it fell back to an SSE kernel on a CPU with AVX2 or AVX-512, the program
// starts itself again with the variable set (once: an OPENBLAS_CORETYPE already set is left alone).
void reexec_with_openblas_core(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE")) return;
  const std::string now = openblas_get_corename();
  for (const char* generic : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai", "Coppermine",
                              "Northwood", "Banias"}) {
    if (now != generic) continue;
    __builtin_cpu_init();
    const char* core = nullptr;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      core = "Haswell";
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the slow kernels
    return;
  }
}

}  // namespace

namespace genesis::cli {
std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> registry;
  return registry;
}
}  // namespace genesis::cli

int main(int argc, char** argv) {
  reexec_with_openblas_core(argv);
  CLI::App app{
      "Genesis: quantized LLM inference on x86 CPUs with JIT kernels discovered by evolutionary search.\n"
      "Environment: GENESIS_MAX_ISA=scalar|avx2|avx512|amx caps the ISA, GENESIS_JIT_DUMP=DIR dumps kernels,\n"
      "GENESIS_CACHE_DIR overrides ~/.cache/genesis.",
      "genesis"};
  app.require_subcommand(1);
  app.set_version_flag("--version", genesis::build_id());
  auto& reg = genesis::cli::command_registry();
  std::sort(reg.begin(), reg.end(), [](const auto& a, const auto& b) { return a.order < b.order; });
  for (auto& c : reg) c.setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const genesis::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "genesis: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "genesis: internal error: {}\n", e.what());
    return 70;
  }
  return 0;
}
