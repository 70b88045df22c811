// A GGUF file's tokenizer (the `tokenizer.ggml.*` metadata) as a TokenizerSpec, following what llama.cpp does with
// the same keys:
//   tokenizer.ggml.model = "gpt2": byte-level BPE; tokens + merges; the pre-tokenizer regexes are chosen by
//     tokenizer.ggml.pre (llama-bpe, qwen2, smollm, gpt-2, olmo, ... — see kGgufPreTokenizers in the .cpp);
//   tokenizer.ggml.model = "llama": sentencepiece-style BPE with byte fallback; the merges are derived from the
//     token scores (a pair merges when the merged token is in the vocabulary; the higher its score, the earlier).
// token_type 3 (control) becomes a special added token, 4 (user defined) a non-special added token, as llama.cpp
// matches both in text. add_bos_token / add_eos_token decide what encode(add_special = true) adds.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string>

#include "runtime/tokenizer/tokenizer.h"

namespace genesis::runtime {

// `meta`: the GGUF metadata as GgufFile::metadata() gives it. Throws genesis::Error naming `origin` and the key for
// a missing or malformed key or an unsupported tokenizer model / pre-tokenizer.
TokenizerSpec tokenizer_spec_from_gguf(const nlohmann::json& meta, const std::string& origin);

}  // namespace genesis::runtime
