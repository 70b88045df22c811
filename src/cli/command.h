// How a CLI subcommand plugs into `genesis`: each cmd_*.cpp registers itself with GENESIS_COMMAND.
// Frontends parse and print only; the work they call lives in the library.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace genesis::cli {

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

}  // namespace genesis::cli
