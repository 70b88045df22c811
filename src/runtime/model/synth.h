// Random-weight checkpoints at the real shapes of known MoE models, written straight to disk: config.json and
// generation_config.json, non-expert weights in bf16, experts as bitsandbytes NF4 (the tensors io/bnb.cpp reads),
// sharded safetensors with an index. Tensor by tensor, never the whole model in memory, so that a 30B model can be
// made on a machine that could not hold it in bf16. For measuring speed without downloads; the text is noise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace genesis::runtime {

struct SynthOptions {
  std::string preset;      // see synth_presets()
  std::string out;         // directory to create (must not exist or be empty)
  int64_t layers = 0;      // 0: the preset's full depth
  uint64_t seed = 1;
  int blocksize = 64;      // NF4 blocksize of the experts
  bool double_quant = false;
  uint64_t shard_bytes = uint64_t(4) << 30;
  bool progress = true;
};

struct SynthPreset {
  std::string name, description;
};
std::vector<SynthPreset> synth_presets();

struct SynthResult {
  std::string summary;  // the config's one-line summary
  uint64_t bytes = 0;   // written, all shards
  uint64_t expert_bytes = 0;
  int shards = 0;
  double seconds = 0;
};

// Throws genesis::Error for an unknown preset, a bad layer count, or an output directory that exists and is not empty.
SynthResult synth_model(const SynthOptions& opt);

}  // namespace genesis::runtime
