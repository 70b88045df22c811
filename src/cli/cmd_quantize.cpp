// `genesis quantize`: bf16/fp16/fp32 checkpoint -> NF4 experts in bitsandbytes' format (runtime::quantize_model).
#include <fmt/core.h>

#include <memory>

#include "cli/command.h"
#include "runtime/model/quantize.h"

namespace {

namespace rt = genesis::runtime;

void setup_quantize(CLI::App& app) {
  auto o = std::make_shared<rt::QuantizeOptions>();
  auto* c = app.add_subcommand(
      "quantize", "Convert a bf16/fp16/fp32 MoE checkpoint's experts to bitsandbytes NF4 (other weights unchanged)");
  c->add_option("--model,-m", o->in, "input model directory (config.json + safetensors)")->required();
  c->add_option("--out,-o", o->out, "output directory (new or empty); tokenizer and other files are copied")
      ->required();
  c->add_option("--blocksize", o->blocksize, "NF4 blocksize: a multiple of 32 up to 4096 (default 64, as bitsandbytes)");
  c->add_flag("--double-quant", o->double_quant, "double-quantize the absmax (bnb_4bit_use_double_quant)");
  c->add_option("--shard-size", o->shard_bytes, "bytes per safetensors shard (default 4 GiB)");
  c->callback([o] {
    const auto r = rt::quantize_model(*o);
    fmt::print("wrote {}: {} expert matrices in NF4 (blocksize {}{}), {} tensors copied; {:.2f} GiB -> {:.2f} GiB in "
               "{:.1f} s\n",
               o->out, r.quantized, o->blocksize, o->double_quant ? ", double-quantized absmax" : "", r.copied,
               double(r.bytes_in) / (1u << 30), double(r.bytes_out) / (1u << 30), r.seconds);
  });
}

}  // namespace
GENESIS_COMMAND("quantize", 25, setup_quantize);
