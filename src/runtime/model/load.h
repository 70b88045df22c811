// Everything `genesis run` needs from a model directory, loaded in one call: the model (config.json + safetensors),
// the tokenizer (tokenizer.json), the chat template (tokenizer_config.json or chat_template.jinja) and the generation
// defaults (generation_config.json); or the same from one GGUF file (its metadata, gguf_model.h, gguf_vocab.h).
// Frontends call this; they hold no loading logic.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/model/forward.h"
#include "runtime/model/sampler.h"
#include "runtime/tokenizer/tokenizer.h"

namespace genesis::runtime {

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tokenizer;  // absent when the directory has no tokenizer.json (GGUF: no tokenizer.ggml.*)
  std::string chat_template;           // "" when the model has none
  std::string bos_token, eos_token;    // as text, for chat templates ("" when unknown)
  std::vector<int32_t> stop_tokens;    // config + generation_config + tokenizer end-of-sequence ids, deduplicated
  SamplerOptions sampling;             // generation_config.json's defaults (greedy when it says do_sample false)
  bool sampling_from_config = false;
  double load_s = 0;                   // wall time of the whole load
  std::string dir;                     // the model directory or GGUF file
};

// `dir`: a Hugging Face model directory or a GGUF file. Throws genesis::Error naming the file for a missing
// directory, config.json, weights, or a malformed file.
LoadedModel load_model(const std::string& dir, const LoadOptions& opt);

// Only the tokenizer of a model directory (tokenizer.json) or GGUF file (tokenizer.ggml.*), without the weights.
// Throws genesis::Error naming the file when there is none.
Tokenizer load_tokenizer(const std::string& path);

// Peak resident memory of this process so far (bytes), from getrusage.
uint64_t peak_rss_bytes();

}  // namespace genesis::runtime
