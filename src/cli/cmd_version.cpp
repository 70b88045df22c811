// `genesis version`: prints the build id (the same id the knowledge base stores with every record).
#include <fmt/core.h>

#include "cli/command.h"
#include "common/util.h"

namespace {
void setup_version(CLI::App& app) {
  auto* cmd = app.add_subcommand("version", "Print the build id");
  cmd->callback([] { fmt::print("genesis {} (kernels {})\n", genesis::build_id(), genesis::kernel_build_id()); });
}
}  // namespace
GENESIS_COMMAND("version", 100, setup_version);
