// config.json -> ModelConfig: field names and defaults follow transformers' config classes of each architecture,
// accepting both the older `rope_theta` / `rope_scaling` keys and the newer `rope_parameters`.
#include "runtime/model/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace genesis::runtime {

int64_t ModelConfig::moe_layers() const {
  return int64_t(
      std::count_if(layers.begin(), layers.end(), [](const LayerKind& k) { return k.mlp != MlpKind::dense; }));
}

int64_t ModelConfig::layers_of(MixerKind m) const {
  return int64_t(std::count_if(layers.begin(), layers.end(), [m](const LayerKind& k) { return k.mixer == m; }));
}

const char* mixer_kind_name(MixerKind k) {
  switch (k) {
    case MixerKind::attention: return "attention";
    case MixerKind::gated_attention: return "gated attention";
    case MixerKind::gated_deltanet: return "Gated DeltaNet";
  }
  return "?";
}

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::llama: return "llama";
    case Arch::qwen2: return "qwen2";
    case Arch::qwen3: return "qwen3";
    case Arch::qwen3_moe: return "qwen3_moe";
    case Arch::olmoe: return "olmoe";
    case Arch::mixtral: return "mixtral";
    case Arch::qwen3_next: return "qwen3_next";
  }
  return "?";
}

const char* rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::default_: return "default";
    case RopeType::linear: return "linear";
    case RopeType::dynamic: return "dynamic";
    case RopeType::yarn: return "yarn";
    case RopeType::llama3: return "llama3";
  }
  return "?";
}

int64_t ModelConfig::rotary_dim() const {
  int64_t d = int64_t(double(head_dim) * rope.partial_rotary_factor);
  return d - (d % 2);
}

std::string ModelConfig::summary() const {
  std::string s = fmt::format("{}: {} layers, hidden {}, {}/{} heads x {}", arch_name(arch), num_layers, hidden_size,
                              num_heads, num_kv_heads, head_dim);
  if (is_moe()) s += fmt::format(", {} experts top-{} (inter {})", num_experts, top_k, moe_intermediate_size);
  else s += fmt::format(", mlp inter {}", intermediate_size);
  if (shared_expert_intermediate_size > 0)
    s += fmt::format(" + shared expert (inter {})", shared_expert_intermediate_size);
  if (const int64_t lin = layers_of(MixerKind::gated_deltanet); lin > 0)
    s += fmt::format(", {} Gated DeltaNet layers ({}/{} heads x {}/{}, conv {})", lin, linear_num_key_heads,
                     linear_num_value_heads, linear_key_head_dim, linear_value_head_dim, linear_conv_kernel);
  s += fmt::format(", vocab {}, rope {}", vocab_size, rope_type_name(rope.type));
  return s;
}

namespace {

using nlohmann::json;

constexpr int64_t kMaxLayers = 1 << 14, kMaxExperts = 1 << 16, kMaxDim = 1 << 22, kMaxVocab = 1 << 26;

struct Reader {
  const json& j;
  const std::string& origin;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  int64_t req_int(const char* key) const {
    if (!has(key)) fail("{}: required field \"{}\" is missing", origin, key);
    return as_int(j.at(key), key);
  }
  int64_t opt_int(const char* key, int64_t dflt) const { return has(key) ? as_int(j.at(key), key) : dflt; }
  double opt_num(const char* key, double dflt) const {
    if (!has(key)) return dflt;
    if (!j.at(key).is_number()) fail("{}: field \"{}\" must be a number, got {}", origin, key, j.at(key).dump());
    return j.at(key).get<double>();
  }
  bool opt_bool(const char* key, bool dflt) const {
    if (!has(key)) return dflt;
    if (!j.at(key).is_boolean()) fail("{}: field \"{}\" must be true or false, got {}", origin, key, j.at(key).dump());
    return j.at(key).get<bool>();
  }
  std::string opt_str(const char* key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    if (!j.at(key).is_string()) fail("{}: field \"{}\" must be a string, got {}", origin, key, j.at(key).dump());
    return j.at(key).get<std::string>();
  }
  int64_t as_int(const json& v, const char* key) const {
    if (!v.is_number_integer()) fail("{}: field \"{}\" must be an integer, got {}", origin, key, v.dump());
    return v.get<int64_t>();
  }
};

void parse_rope(const json& j, const std::string& origin, double default_theta, double default_partial,
                ModelConfig& c) {
  Reader r{j, origin};
  RopeConfig& rope = c.rope;
  rope.theta = r.opt_num("rope_theta", default_theta);
  rope.partial_rotary_factor = r.opt_num("partial_rotary_factor", default_partial);
  // Newer transformers write one `rope_parameters` object (with rope_theta inside); older ones `rope_scaling`.
  const json* p = nullptr;
  std::string where;
  if (r.has("rope_parameters")) {
    p = &j.at("rope_parameters");
    where = "rope_parameters";
  } else if (r.has("rope_scaling")) {
    p = &j.at("rope_scaling");
    where = "rope_scaling";
  }
  if (!p) return;
  if (!p->is_object()) fail("{}: \"{}\" must be an object, got {}", origin, where, p->dump());
  const std::string ctx = origin + " (" + where + ")";
  Reader s{*p, ctx};
  rope.theta = s.opt_num("rope_theta", rope.theta);
  rope.partial_rotary_factor = s.opt_num("partial_rotary_factor", rope.partial_rotary_factor);
  std::string type = s.opt_str("rope_type", s.opt_str("type", "default"));
  if (type == "default") rope.type = RopeType::default_;
  else if (type == "linear") rope.type = RopeType::linear;
  else if (type == "dynamic") rope.type = RopeType::dynamic;
  else if (type == "yarn") rope.type = RopeType::yarn;
  else if (type == "llama3") rope.type = RopeType::llama3;
  else fail("{}: rope type \"{}\" is not supported (supported: default, linear, dynamic, yarn, llama3)", ctx, type);
  if (rope.type != RopeType::default_) {
    // YaRN without a factor takes it from the context extension, as transformers does.
    if (!s.has("factor") && rope.type != RopeType::yarn) fail("{}: rope type \"{}\" needs \"factor\"", ctx, type);
    rope.factor = s.opt_num("factor", 1.0);
    if (!(rope.factor > 0)) fail("{}: rope factor must be > 0, got {}", ctx, rope.factor);
  }
  rope.original_max_position_embeddings =
      r.has("original_max_position_embeddings") ? r.opt_int("original_max_position_embeddings", 0)
                                                 : s.opt_int("original_max_position_embeddings", 0);
  if (rope.type == RopeType::llama3) {
    if (!s.has("low_freq_factor") || !s.has("high_freq_factor") || rope.original_max_position_embeddings <= 0)
      fail("{}: llama3 rope needs low_freq_factor, high_freq_factor and original_max_position_embeddings", ctx);
    rope.low_freq_factor = s.opt_num("low_freq_factor", 1.0);
    rope.high_freq_factor = s.opt_num("high_freq_factor", 4.0);
    if (rope.low_freq_factor == rope.high_freq_factor)
      fail("{}: llama3 rope needs low_freq_factor != high_freq_factor", ctx);
  }
  if (rope.type == RopeType::yarn) {
    if (!s.has("factor")) {
      if (rope.original_max_position_embeddings <= 0)
        fail("{}: yarn rope needs \"factor\" or \"original_max_position_embeddings\"", ctx);
      rope.factor = double(r.opt_int("max_position_embeddings", 2048)) / double(rope.original_max_position_embeddings);
    }
    rope.beta_fast = s.opt_num("beta_fast", 32.0);
    rope.beta_slow = s.opt_num("beta_slow", 1.0);
    rope.attention_factor = s.opt_num("attention_factor", 0.0);
    rope.mscale = s.opt_num("mscale", 0.0);
    rope.mscale_all_dim = s.opt_num("mscale_all_dim", 0.0);
    rope.truncate = s.opt_bool("truncate", true);
  }
}

// Qwen3-Next's Gated DeltaNet sizes (transformers' Qwen3NextConfig defaults when absent).
void parse_linear_attention(const json& j, const std::string& origin, ModelConfig& c) {
  Reader r{j, origin};
  c.linear_num_key_heads = r.opt_int("linear_num_key_heads", 16);
  c.linear_num_value_heads = r.opt_int("linear_num_value_heads", 32);
  c.linear_key_head_dim = r.opt_int("linear_key_head_dim", 128);
  c.linear_value_head_dim = r.opt_int("linear_value_head_dim", 128);
  c.linear_conv_kernel = r.opt_int("linear_conv_kernel_dim", 4);
  for (auto [name, v] : {std::pair{"linear_num_key_heads", c.linear_num_key_heads},
                         {"linear_num_value_heads", c.linear_num_value_heads},
                         {"linear_key_head_dim", c.linear_key_head_dim},
                         {"linear_value_head_dim", c.linear_value_head_dim},
                         {"linear_conv_kernel_dim", c.linear_conv_kernel}})
    if (v <= 0 || v > (name == std::string("linear_conv_kernel_dim") ? 64 : 1 << 16))
      fail("{}: \"{}\" = {} is out of range", origin, name, v);
  if (c.linear_num_value_heads % c.linear_num_key_heads != 0)
    fail("{}: linear_num_value_heads {} is not a multiple of linear_num_key_heads {}", origin,
         c.linear_num_value_heads, c.linear_num_key_heads);
}

// Each layer's mixer from `layer_types` ("linear_attention" / "full_attention"), else every
// `full_attention_interval`-th layer full attention (default 4), as Qwen3NextConfig does.
void parse_layer_types(const json& j, const std::string& origin, ModelConfig& c) {
  Reader r{j, origin};
  if (r.has("layer_types")) {
    const json& t = j.at("layer_types");
    if (!t.is_array()) fail("{}: \"layer_types\" must be a list of strings", origin);
    if (int64_t(t.size()) != c.num_layers)
      fail("{}: \"layer_types\" lists {} layers, but num_hidden_layers is {}", origin, t.size(), c.num_layers);
    for (size_t l = 0; l < t.size(); ++l) {
      const std::string kind = t[l].is_string() ? t[l].get<std::string>() : t[l].dump();
      if (kind == "linear_attention") c.layers[l].mixer = MixerKind::gated_deltanet;
      else if (kind == "full_attention") c.layers[l].mixer = MixerKind::gated_attention;
      else
        fail("{}: layer_types[{}] = {} is not a known layer kind (linear_attention, full_attention)", origin, l,
             t[l].dump());
    }
    return;
  }
  const int64_t interval = r.opt_int("full_attention_interval", 4);
  if (interval <= 0) fail("{}: \"full_attention_interval\" must be > 0, got {}", origin, interval);
  for (int64_t l = 0; l < c.num_layers; ++l)
    c.layers[size_t(l)].mixer = (l + 1) % interval ? MixerKind::gated_deltanet : MixerKind::gated_attention;
}

}  // namespace

ModelConfig parse_config(const json& j, const std::string& origin) {
  if (!j.is_object()) fail("{}: expected a JSON object", origin);
  Reader r{j, origin};
  ModelConfig c;
  c.model_type = r.opt_str("model_type", "");
  if (c.model_type.empty()) fail("{}: field \"model_type\" is missing", origin);
  double default_theta = 10000.0, default_eps = 1e-6;
  if (c.model_type == "llama") c.arch = Arch::llama;
  else if (c.model_type == "qwen2") c.arch = Arch::qwen2;
  else if (c.model_type == "qwen3") c.arch = Arch::qwen3;
  else if (c.model_type == "qwen3_moe") c.arch = Arch::qwen3_moe;
  else if (c.model_type == "olmoe") c.arch = Arch::olmoe, default_eps = 1e-5;
  else if (c.model_type == "mixtral") c.arch = Arch::mixtral, default_theta = 1e6, default_eps = 1e-5;
  else if (c.model_type == "qwen3_next") c.arch = Arch::qwen3_next;
  else
    fail("{}: model_type \"{}\" is not supported (supported: llama, qwen2, qwen3, qwen3_moe, olmoe, mixtral, "
         "qwen3_next)", origin, c.model_type);
  const bool next = c.arch == Arch::qwen3_next;

  c.vocab_size = r.req_int("vocab_size");
  c.hidden_size = r.req_int("hidden_size");
  c.num_layers = r.req_int("num_hidden_layers");
  c.num_heads = r.req_int("num_attention_heads");
  c.num_kv_heads = r.opt_int("num_key_value_heads", c.num_heads);
  // Qwen3-Next's config class has defaults for every size (and its checkpoints may leave intermediate_size out).
  c.intermediate_size = next ? r.opt_int("intermediate_size", 5632) : r.req_int("intermediate_size");
  c.max_position_embeddings = r.opt_int("max_position_embeddings", 2048);
  c.rms_norm_eps = r.opt_num("rms_norm_eps", default_eps);
  c.tie_word_embeddings = r.opt_bool("tie_word_embeddings", false);
  const int64_t default_head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  c.head_dim = r.opt_int("head_dim", next ? 256 : default_head_dim);

  for (auto [name, v] : {std::pair{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                         {"num_hidden_layers", c.num_layers}, {"num_attention_heads", c.num_heads},
                         {"num_key_value_heads", c.num_kv_heads}, {"head_dim", c.head_dim},
                         {"intermediate_size", c.intermediate_size}, {"max_position_embeddings",
                                                                      c.max_position_embeddings}})
    if (v <= 0) fail("{}: \"{}\" must be > 0, got {}", origin, name, v);
  // Far above any released model, far below what overflows a product of two of them or makes a loop over layers
  // slow: the sizes are checked against the tensors only at load, and some size loops and buffers before that.
  for (auto [name, v, most] : {std::tuple{"vocab_size", c.vocab_size, kMaxVocab},
                               {"hidden_size", c.hidden_size, kMaxDim},
                               {"num_hidden_layers", c.num_layers, kMaxLayers},
                               {"num_attention_heads", c.num_heads, kMaxDim},
                               {"head_dim", c.head_dim, kMaxDim},
                               {"intermediate_size", c.intermediate_size, kMaxDim}})
    if (v > most) fail("{}: \"{}\" = {} is beyond what Genesis loads (at most {})", origin, name, v, most);
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", origin, c.num_heads,
         c.num_kv_heads);
  if (!(c.rms_norm_eps > 0)) fail("{}: rms_norm_eps must be > 0", origin);

  const std::string act = r.opt_str("hidden_act", "silu");
  if (act != "silu") fail("{}: hidden_act \"{}\" is not supported (only silu / SwiGLU)", origin, act);

  switch (c.arch) {
    case Arch::llama:
      c.attention_bias = c.o_bias = r.opt_bool("attention_bias", false);
      c.mlp_bias = r.opt_bool("mlp_bias", false);
      break;
    case Arch::qwen2:
      c.attention_bias = true;  // Qwen2 always has q/k/v biases (no o_proj bias)
      if (r.opt_bool("use_sliding_window", false))
        fail("{}: qwen2 with use_sliding_window=true is not supported", origin);
      break;
    case Arch::qwen3:
    case Arch::qwen3_moe:
      c.attention_bias = c.o_bias = r.opt_bool("attention_bias", false);
      c.qk_norm = QkNorm::per_head;
      if (r.opt_bool("use_sliding_window", false))
        fail("{}: {} with use_sliding_window=true is not supported", origin, c.model_type);
      break;
    case Arch::olmoe:
      c.attention_bias = c.o_bias = r.opt_bool("attention_bias", false);
      c.qk_norm = QkNorm::whole;
      c.clip_qkv = r.opt_num("clip_qkv", 0.0);
      break;
    case Arch::mixtral:
      c.sliding_window = r.opt_int("sliding_window", 0);
      break;
    case Arch::qwen3_next:
      c.attention_bias = c.o_bias = r.opt_bool("attention_bias", false);
      c.qk_norm = QkNorm::per_head;
      // The checkpoint stores RMSNorm weights w applied as (1 + w); a GGUF file stores 1 + w (gguf_model.cpp).
      c.norm_add_one = !r.opt_bool("genesis_norm_weights_include_one", false);
      parse_linear_attention(j, origin, c);
      break;
  }
  parse_rope(j, origin, default_theta, next ? 0.25 : 1.0, c);
  if (c.rotary_dim() <= 0 || c.rotary_dim() > c.head_dim)
    fail("{}: partial_rotary_factor {} gives a rotary dim of {} for head_dim {}", origin,
         c.rope.partial_rotary_factor, c.rotary_dim(), c.head_dim);

  // Mixture of experts.
  c.layers.assign(size_t(c.num_layers), LayerKind{});
  auto all_moe = [&] {
    for (LayerKind& k : c.layers) k.mlp = MlpKind::moe;
  };
  if (c.arch == Arch::qwen3_moe) {
    c.num_experts = r.opt_int("num_experts", r.opt_int("num_local_experts", 128));
    c.top_k = r.opt_int("num_experts_per_tok", 8);
    c.moe_intermediate_size = r.opt_int("moe_intermediate_size", 768);
    c.norm_topk_prob = r.opt_bool("norm_topk_prob", false);
    const int64_t step = r.opt_int("decoder_sparse_step", 1);
    std::vector<bool> dense(size_t(c.num_layers), false);
    if (r.has("mlp_only_layers")) {
      const json& m = j.at("mlp_only_layers");
      if (!m.is_array()) fail("{}: \"mlp_only_layers\" must be a list of layer indices", origin);
      for (const auto& v : m)  // indices past the last layer mean nothing, as in transformers
        if (const int64_t l = r.as_int(v, "mlp_only_layers"); l >= 0 && l < c.num_layers) dense[size_t(l)] = true;
    }
    for (int64_t l = 0; l < c.num_layers; ++l)
      if (!dense[size_t(l)] && c.num_experts > 0 && step > 0 && (l + 1) % step == 0) c.layers[size_t(l)].mlp = MlpKind::moe;
  } else if (c.arch == Arch::olmoe) {
    c.num_experts = r.opt_int("num_experts", r.opt_int("num_local_experts", 64));
    c.top_k = r.opt_int("num_experts_per_tok", 8);
    c.moe_intermediate_size = c.intermediate_size;
    c.norm_topk_prob = r.opt_bool("norm_topk_prob", false);
    all_moe();
  } else if (c.arch == Arch::qwen3_next) {
    c.num_experts = r.opt_int("num_experts", 512);
    c.top_k = r.opt_int("num_experts_per_tok", 10);
    c.moe_intermediate_size = r.opt_int("moe_intermediate_size", 512);
    c.shared_expert_intermediate_size = r.opt_int("shared_expert_intermediate_size", 512);
    c.norm_topk_prob = r.opt_bool("norm_topk_prob", true);
    const int64_t step = r.opt_int("decoder_sparse_step", 1);
    std::vector<bool> dense(size_t(c.num_layers), false);
    if (r.has("mlp_only_layers")) {
      const json& m = j.at("mlp_only_layers");
      if (!m.is_array()) fail("{}: \"mlp_only_layers\" must be a list of layer indices", origin);
      for (const auto& v : m)
        if (const int64_t l = r.as_int(v, "mlp_only_layers"); l >= 0 && l < c.num_layers) dense[size_t(l)] = true;
    }
    for (int64_t l = 0; l < c.num_layers; ++l)
      if (!dense[size_t(l)] && c.num_experts > 0 && step > 0 && (l + 1) % step == 0)
        c.layers[size_t(l)].mlp = MlpKind::moe_shared;
    if (c.moe_layers() > 0 && (c.shared_expert_intermediate_size <= 0 || c.shared_expert_intermediate_size > kMaxDim))
      fail("{}: shared_expert_intermediate_size = {} must be in [1, {}]", origin, c.shared_expert_intermediate_size,
           kMaxDim);
    parse_layer_types(j, origin, c);
  } else if (c.arch == Arch::mixtral) {
    c.num_experts = r.opt_int("num_local_experts", 8);
    c.top_k = r.opt_int("num_experts_per_tok", 2);
    c.moe_intermediate_size = c.intermediate_size;
    c.norm_topk_prob = true;  // Mixtral always renormalizes its top-k weights
    all_moe();
  }
  if (c.num_experts > kMaxExperts || c.moe_intermediate_size > kMaxDim)
    fail("{}: {} experts of intermediate size {} are beyond what Genesis loads (at most {} of {})", origin,
         c.num_experts, c.moe_intermediate_size, kMaxExperts, kMaxDim);
  if (c.is_moe()) {
    if (c.top_k <= 0 || c.top_k > c.num_experts)
      fail("{}: num_experts_per_tok {} must be in [1, {}]", origin, c.top_k, c.num_experts);
    if (c.moe_intermediate_size <= 0) fail("{}: the expert intermediate size must be > 0", origin);
  }

  auto read_ids = [&](const char* key, std::vector<int32_t>& out) {
    if (!r.has(key)) return;
    const json& v = j.at(key);
    if (v.is_number_integer()) out.push_back(int32_t(v.get<int64_t>()));
    else if (v.is_array())
      for (const auto& e : v) out.push_back(int32_t(r.as_int(e, key)));
    else fail("{}: \"{}\" must be an integer or a list of integers", origin, key);
  };
  read_ids("eos_token_id", c.eos_token_ids);
  std::vector<int32_t> bos;
  read_ids("bos_token_id", bos);
  if (!bos.empty()) c.bos_token_id = bos[0];
  return c;
}

ModelConfig load_config(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("cannot open {}: {}", path, std::strerror(errno));
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  return parse_config(j, path);
}

}  // namespace genesis::runtime
