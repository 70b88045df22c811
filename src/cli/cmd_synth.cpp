// `genesis synth`: write a random-weight checkpoint at a real model's shapes (runtime::synth_model does the work).
#include <fmt/core.h>

#include <memory>

#include "cli/command.h"
#include "runtime/model/synth.h"

namespace {

namespace rt = genesis::runtime;

void setup_synth(CLI::App& app) {
  auto o = std::make_shared<rt::SynthOptions>();
  std::string presets;
  for (const auto& p : rt::synth_presets()) presets += fmt::format("\n  {:<18} {}", p.name, p.description);
  auto* c = app.add_subcommand(
      "synth", "Write a random-weight model at real shapes (NF4 experts, bf16 rest) to measure speed without downloads");
  c->footer("Presets:" + presets);
  c->add_option("--preset", o->preset, "qwen3-30b-a3b, qwen3-next-shapes, olmoe or mixtral")->required();
  c->add_option("--out,-o", o->out, "output directory (new or empty)")->required();
  c->add_option("--layers", o->layers, "number of layers (default: the model's own)")->check(CLI::NonNegativeNumber);
  c->add_option("--seed", o->seed, "random seed");
  c->add_option("--blocksize", o->blocksize, "NF4 blocksize of the experts (default 64)");
  c->add_flag("--double-quant", o->double_quant, "store the experts' absmax double-quantized (bitsandbytes)");
  c->add_option("--shard-size", o->shard_bytes, "bytes per safetensors shard (default 4 GiB)");
  c->callback([o] {
    const auto r = rt::synth_model(*o);
    fmt::print("wrote {}: {}\n{:.2f} GiB in {} shard(s) ({:.2f} GiB of NF4 experts) in {:.1f} s\n", o->out, r.summary,
               double(r.bytes) / (1u << 30), r.shards, double(r.expert_bytes) / (1u << 30), r.seconds);
  });
}

}  // namespace
GENESIS_COMMAND("synth", 30, setup_synth);
