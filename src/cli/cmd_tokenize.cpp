// `genesis tokenize`: text -> token ids (and pieces) with a model's tokenizer, from a model directory, a
// tokenizer.json or a GGUF file; no weights are loaded.
#include <fmt/core.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "runtime/model/load.h"

namespace {

namespace rt = genesis::runtime;

struct Args {
  std::string model, prompt;
  bool no_special = false, no_parse_special = false, ids_only = false, json = false;
};

void run(const Args& a) {
  const rt::Tokenizer tok = rt::load_tokenizer(a.model);
  const auto ids = tok.encode(a.prompt, !a.no_special, !a.no_parse_special);
  if (a.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(tok.decode(std::span<const int32_t>(&id, 1)));
    fmt::print("{}\n", nlohmann::json{{"ids", ids}, {"pieces", pieces}}.dump());
    return;
  }
  if (a.ids_only) {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    fmt::print("{}\n", line);
    return;
  }
  for (int32_t id : ids) fmt::print("{:>8} -> '{}'\n", id, tok.id_to_token(id));
  fmt::print("{} tokens\n", ids.size());
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* c = app.add_subcommand("tokenize", "Token ids of a text with a model's tokenizer (no weights loaded)");
  c->add_option("--model,-m", a->model, "model directory, tokenizer.json or GGUF file")->required();
  c->add_option("--prompt,-p", a->prompt, "the text")->required();
  c->add_flag("--no-special", a->no_special, "do not add BOS/EOS as the tokenizer would");
  c->add_flag("--no-parse-special", a->no_parse_special, "special tokens written in the text stay plain text");
  c->add_flag("--ids", a->ids_only, "print only the ids, space-separated");
  c->add_flag("--json", a->json, "print {\"ids\": [...], \"pieces\": [...]}");
  c->callback([a] { run(*a); });
}

}  // namespace
GENESIS_COMMAND("tokenize", 23, setup);
