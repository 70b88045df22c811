// A GGUF model file seen through the runtime's seams: its metadata as a Hugging Face config.json (then parsed and
// checked by parse_config like any other), and its tensors as a TensorSource under Hugging Face names.
//
// Architectures (general.architecture): llama (dense; with experts it is Mixtral), qwen2, qwen3, qwen3moe, olmoe,
// qwen3next. Tensor names: token_embd / output_norm / output, blk.N.{attn_norm, attn_q/k/v/output (+ .bias),
// attn_q_norm, attn_k_norm, ffn_norm, ffn_gate/up/down, ffn_gate_inp, ffn_gate/up/down_exps (3-D: one slice per
// expert), and the older per-expert ffn_gate.E / ffn_up.E / ffn_down.E}; qwen3next adds post_attention_norm,
// ssm_in (or newer converters' attn_qkv + attn_gate) / ssm_ba / ssm_conv1d / ssm_dt.bias / ssm_a / ssm_norm /
// ssm_out and ffn_gate/up/down_shexp,
// ffn_gate_inp_shexp (its RMSNorm weights are stored as 1 + w: the config says so to the loader).
//
// llama.cpp's converter permutes the rows of llama's q and k projections (rotate-half pairs -> adjacent pairs, for
// ggml's "normal" rope); this source undoes it, so the runtime's Hugging Face rope applies unchanged. qwen2/qwen3/
// qwen3moe/olmoe are stored unpermuted (ggml's NeoX rope).
//
// Tensors stored as F32 / F16 / BF16 are served from the mapped file without a copy. Quantized ones (Q4_0 ... Q6_K,
// see quant/ggml.h) are dequantized when asked for: to fp32, or to bf16 (round to nearest even) for non-expert
// matrices when `dense_bf16` is set, which halves what the forward pass reads per token.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "runtime/model/config.h"
#include "runtime/tensor.h"

namespace genesis::runtime {

class GgufFile;

// The HF-style config.json equivalent of a GGUF file's metadata (model_type, sizes, rope, experts, token ids).
// Throws genesis::Error naming the file and key for an unsupported architecture or a missing / malformed key.
nlohmann::json gguf_config_json(const GgufFile& f);

// Tensors of `f` under Hugging Face names for config `c` (from gguf_config_json). The source keeps `f` alive.
// A view of a dequantized tensor stays valid until release() of a prefix covering it, or until kGgufViewsKept
// further dequantized tensors were asked for (the loader uses each view before it asks for the next one, and a
// model's weights are never held twice in fp32).
inline constexpr size_t kGgufViewsKept = 8;
std::unique_ptr<TensorSource> gguf_tensor_source(std::shared_ptr<const GgufFile> f, const ModelConfig& c,
                                                 bool dense_bf16);

// True when `path` names a GGUF file (by its magic bytes; a directory is not).
bool is_gguf_file(const std::string& path);

}  // namespace genesis::runtime
