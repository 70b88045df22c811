// `genesis` entry point: builds the CLI11 app from the registered subcommands and maps errors to exit codes.
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>

#include "cli/command.h"
#include "common/error.h"

namespace genesis::cli {
std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> registry;
  return registry;
}
}  // namespace genesis::cli

int main(int argc, char** argv) {
  CLI::App app{
      "Genesis: quantized LLM inference on x86 CPUs with JIT kernels discovered by evolutionary search.\n"
      "Environment: GENESIS_MAX_ISA=scalar|avx2|avx512|amx caps the ISA, GENESIS_JIT_DUMP=DIR dumps kernels,\n"
      "GENESIS_CACHE_DIR overrides ~/.cache/genesis.",
      "genesis"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(GENESIS_VERSION) + " (" GENESIS_GIT_REV ")");
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
