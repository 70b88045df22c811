// Model architecture as a plain struct, parsed from a Hugging Face config.json. Supported: llama, qwen2, qwen3
// (dense), qwen3_moe, olmoe, mixtral, qwen3_next (Gated DeltaNet + gated attention, MoE with a shared expert).
// Anything else (architecture, activation, rope type) is refused here, by name.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace genesis::runtime {

enum class Arch { llama, qwen2, qwen3, qwen3_moe, olmoe, mixtral, qwen3_next };
const char* arch_name(Arch a);

// Where the QK-norm sits: none; RMSNorm over each head's head_dim (Qwen3); over the whole q / k projection
// (OLMoE: q_norm has num_heads*head_dim weights, k_norm num_kv_heads*head_dim).
enum class QkNorm { none, per_head, whole };

enum class RopeType { default_, linear, dynamic, yarn, llama3 };
const char* rope_type_name(RopeType t);

struct RopeConfig {
  RopeType type = RopeType::default_;
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;  // fraction of head_dim that is rotated
  double factor = 1.0;                 // linear, dynamic, yarn, llama3
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // llama3, yarn (0 = config.max_position_embeddings)
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;  // 0 = derived from factor / mscale
  double mscale = 0.0;            // 0 = absent
  double mscale_all_dim = 0.0;    // 0 = absent
  bool truncate = true;
};

// What each layer mixes tokens with and what its MLP is, as gemma.cpp's layer_configs[i].type: the step dispatches on
// it and the Session holds the state each kind needs (a KV cache for attention layers, a conv and a recurrent state
// for Gated DeltaNet layers).
enum class MixerKind {
  attention,
  gated_attention,  // Qwen3-Next: q_proj gives the query and a per-head output gate; output times sigmoid(gate)
  gated_deltanet,   // Qwen3-Next linear attention: causal conv1d + the gated delta rule over a per-head state
};
enum class MlpKind {
  dense,
  moe,
  moe_shared,  // Qwen3-Next: routed experts + a shared expert scaled by sigmoid(shared_expert_gate(x))
};
const char* mixer_kind_name(MixerKind k);
struct LayerKind {
  MixerKind mixer = MixerKind::attention;
  MlpKind mlp = MlpKind::dense;
  bool operator==(const LayerKind&) const = default;
};

struct ModelConfig {
  Arch arch = Arch::llama;
  std::string model_type;  // as written in config.json
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;  // dense MLP
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2; Llama if attention_bias)
  bool o_bias = false;          // o_proj carries a bias (Llama attention_bias)
  bool mlp_bias = false;        // dense MLP projections carry biases (Llama mlp_bias)
  QkNorm qk_norm = QkNorm::none;
  double clip_qkv = 0.0;       // OLMoE: clamp q, k, v to [-clip, clip]; 0 = off
  int64_t sliding_window = 0;  // 0 = full attention; else a key j is visible from query i when i - j < window
  RopeConfig rope;

  // Mixture of experts (num_experts == 0 for dense models).
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = false;     // renormalize the top-k router probabilities to sum to 1
  int64_t shared_expert_intermediate_size = 0;  // MlpKind::moe_shared
  std::vector<LayerKind> layers;   // [num_layers]: each layer's mixer and MLP kind

  // Gated DeltaNet (MixerKind::gated_deltanet): key heads (q and k) and value heads (v, z; a multiple of the key
  // heads, each key head serving num_v / num_k consecutive value heads), their sizes, the conv1d kernel.
  int64_t linear_num_key_heads = 0, linear_num_value_heads = 0;
  int64_t linear_key_head_dim = 0, linear_value_head_dim = 0;
  int64_t linear_conv_kernel = 0;
  // RMSNorm weights as stored are w, applied as (1 + w) (Qwen3-Next checkpoints); the loader adds the 1. GGUF files
  // store 1 + w already (gguf_config_json sets this false).
  bool norm_add_one = false;

  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

  bool is_moe() const { return num_experts > 0; }
  bool layer_is_moe(int64_t l) const { return layers[size_t(l)].mlp != MlpKind::dense; }
  int64_t layers_of(MixerKind k) const;
  int64_t linear_key_dim() const { return linear_num_key_heads * linear_key_head_dim; }
  int64_t linear_value_dim() const { return linear_num_value_heads * linear_value_head_dim; }
  int64_t linear_conv_dim() const { return 2 * linear_key_dim() + linear_value_dim(); }  // q, k and v channels
  int64_t moe_layers() const;
  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t rotary_dim() const;  // head_dim * partial_rotary_factor, even

  // One line: "qwen3_moe: 48 layers, hidden 2048, 32/4 heads x 128, 128 experts top-8 (inter 768), vocab 151936".
  std::string summary() const;
};

// `origin` names the file in error messages. Throws genesis::Error for a missing or bad field, an unsupported
// model_type / hidden_act / rope type, or values that disagree with each other.
ModelConfig parse_config(const nlohmann::json& j, const std::string& origin);
ModelConfig load_config(const std::string& config_json_path);

}  // namespace genesis::runtime
