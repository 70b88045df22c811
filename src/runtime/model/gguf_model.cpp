// GGUF metadata -> config.json equivalent, GGUF tensors -> a TensorSource under Hugging Face names; see gguf_model.h.
#include "runtime/model/gguf_model.h"

#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <unordered_map>

#include "common/error.h"
#include "quant/ggml.h"
#include "runtime/io/gguf.h"
#include "quant/half.h"

namespace genesis::runtime {

namespace {

using nlohmann::json;
using quant::GgmlType;

class Meta {
 public:
  explicit Meta(const GgufFile& f) : f_(f) {}
  const json* find(const std::string& key) const { return f_.find_meta(key); }
  // An integer key; per-layer arrays are accepted when every layer has the same value.
  std::optional<int64_t> integer(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (v->is_array()) {
      if (v->empty() || !(*v)[0].is_number_integer()) bad(key, "an integer");
      for (const auto& e : *v)
        if (!e.is_number_integer() || e != (*v)[0])
          fail("{}: metadata {} differs between layers ({}); per-layer sizes are not supported", f_.label(), key,
               describe_meta_value(*v));
      return (*v)[0].get<int64_t>();
    }
    if (!v->is_number_integer()) bad(key, "an integer");
    return v->get<int64_t>();
  }
  int64_t req_int(const std::string& key) const {
    auto v = integer(key);
    if (!v) fail("{}: metadata key {} is missing", f_.label(), key);
    return *v;
  }
  std::optional<double> number(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) bad(key, "a number");
    return v->get<double>();
  }
  std::optional<std::string> str(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) bad(key, "a string");
    return v->get<std::string>();
  }
  std::optional<bool> flag(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) bad(key, "a bool");
    return v->get<bool>();
  }
  [[noreturn]] void bad(const std::string& key, const char* what) const {
    fail("{}: metadata {} must be {}, got {}", f_.label(), key, what, describe_meta_value(*find(key)));
  }

 private:
  const GgufFile& f_;
};

bool has_tensor(const GgufFile& f, const std::string& name) { return f.find(name) != nullptr; }

// N of a tensor named blk.N.*, else -1.
int64_t block_index(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  const char *b = name.data() + 4, *e = name.data() + name.size();
  int64_t n = -1;
  const auto [p, ec] = std::from_chars(b, e, n);
  return ec == std::errc() && p != b && p != e && *p == '.' ? n : -1;
}

// The sizes the metadata claims, before any of them bounds a loop or sizes an allocation.
struct Claims {
  int64_t layers, hidden, heads, kv_heads, head_dim;
  int64_t q_rows_per_head;  // 2 * head_dim when q_proj also gives the output gate (qwen3next), else head_dim
  bool head_dim_keyed;  // attention.key_length given (else embedding_length / head_count)
  std::optional<int64_t> vocab, experts, experts_used;
};

// Checks the claims against the tensors the file holds: a file saying 2^30 layers or a million experts fails here,
// naming the key, the value and what the tensors hold, instead of after gigabytes of config and buffers.
void check_claims(const GgufFile& f, const std::string& A, const Claims& c) {
  const std::string& file = f.label();
  for (auto [key, v] : {std::pair{"block_count", c.layers},
                        {"embedding_length", c.hidden},
                        {"attention.head_count", c.heads},
                        {"attention.head_count_kv", c.kv_heads}})
    if (v <= 0) fail("{}: metadata {}{} = {} must be > 0", file, A, key, v);

  int64_t held = 0;  // 1 + the highest N of blk.N.*
  for (const GgufTensor& t : f.tensors()) held = std::max(held, block_index(t.name) + 1);
  if (c.layers > held)
    fail("{}: metadata {}block_count = {}, but the file holds tensors for {} layers{}", file, A, c.layers, held,
         held > 0 ? fmt::format(" (blk.0 to blk.{})", held - 1) : std::string(" (no blk.N tensors)"));

  const GgufTensor* emb = f.find("token_embd.weight");
  if (!emb || emb->ne.size() != 2) fail("{}: tensor token_embd.weight is missing or not 2-D", file);
  if (emb->ne[0] != c.hidden)
    fail("{}: metadata {}embedding_length = {}, but token_embd.weight holds rows of {}", file, A, c.hidden, emb->ne[0]);
  if (c.vocab && *c.vocab != 0 && *c.vocab != emb->ne[1])  // 0: absent, as gguf_config_json reads it
    fail("{}: metadata {}vocab_size = {}, but token_embd.weight holds {} tokens", file, A, *c.vocab, emb->ne[1]);

  const std::string head_size = c.head_dim_keyed
                                    ? fmt::format("{}attention.key_length {}", A, c.head_dim)
                                    : fmt::format("head size {} (embedding_length / head_count)", c.head_dim);
  // The first layer with attention tensors (qwen3next's first layers are Gated DeltaNet).
  int64_t attn_layer = 0;
  while (attn_layer < c.layers && !f.find(fmt::format("blk.{}.attn_k.weight", attn_layer))) ++attn_layer;
  for (auto [key, heads, what, per_head] :
       {std::tuple{"attention.head_count", c.heads, "attn_q", c.q_rows_per_head},
        {"attention.head_count_kv", c.kv_heads, "attn_k", c.head_dim}}) {
    const std::string tensor = fmt::format("blk.{}.{}.weight", attn_layer, what);
    const GgufTensor* t = f.find(tensor);
    if (!t || t->ne.size() != 2) continue;  // the loader names a missing tensor
    const int64_t rows = t->ne[1];
    if (rows % heads != 0 || rows / heads != per_head)
      fail("{}: metadata {}{} = {} with {} needs {} x {} rows, but {} has {}", file, A, key, heads, head_size, heads,
           per_head, tensor, rows);
  }

  const int64_t experts = c.experts.value_or(0);
  for (const GgufTensor& t : f.tensors()) {
    if (block_index(t.name) < 0) continue;
    const std::string rest = t.name.substr(t.name.find('.', 4) + 1);
    int64_t held_experts = -1;
    if (rest == "ffn_gate_inp.weight" && t.ne.size() == 2) held_experts = t.ne[1];
    if ((rest == "ffn_gate_exps.weight" || rest == "ffn_up_exps.weight" || rest == "ffn_down_exps.weight") &&
        t.ne.size() == 3)
      held_experts = t.ne[2];
    if (held_experts >= 0 && held_experts != experts)
      fail("{}: metadata {}expert_count {}, but {} holds {} experts", file, A,
           c.experts ? fmt::format("= {}", *c.experts) : std::string("is missing"), t.name, held_experts);
  }
  if (experts > 0 && (c.experts_used.value_or(0) < 1 || *c.experts_used > experts))
    fail("{}: metadata {}expert_used_count {} must be in [1, expert_count {}]", file, A,
         c.experts_used ? fmt::format("= {}", *c.experts_used) : std::string("is missing"), experts);
}

// llama.cpp's qwen3next layout (convert_hf_to_gguf.py's Qwen3NextModel): ssm.* sizes, each layer's kind from its
// tensors (Gated DeltaNet: ssm_in, ssm_ba, ssm_conv1d, ssm_a, ssm_dt, ssm_norm, ssm_out; gated attention: attn_q with
// the gate rows, attn_k, attn_v, attn_output), RMSNorm weights stored as 1 + w (ssm_norm as is), the shared expert.
void qwen3next_config(const GgufFile& f, const Meta& m, const std::string& A, json& j) {
  j["model_type"] = "qwen3_next";
  auto req = [&](const char* key) { return m.req_int(A + key); };
  j["linear_conv_kernel_dim"] = req("ssm.conv_kernel");
  j["linear_key_head_dim"] = req("ssm.state_size");
  j["linear_num_key_heads"] = req("ssm.group_count");
  const int64_t nv = req("ssm.time_step_rank"), inner = req("ssm.inner_size");
  if (nv <= 0 || inner % nv != 0)
    fail("{}: metadata {}ssm.inner_size = {} is not a multiple of {}ssm.time_step_rank = {}", f.label(), A, inner, A,
         nv);
  j["linear_num_value_heads"] = nv;
  j["linear_value_head_dim"] = inner / nv;
  j["genesis_norm_weights_include_one"] = true;
  const auto experts = m.integer(A + "expert_count").value_or(0);
  j["num_experts"] = experts;
  j["num_experts_per_tok"] = m.integer(A + "expert_used_count").value_or(0);
  j["moe_intermediate_size"] = m.integer(A + "expert_feed_forward_length").value_or(0);
  j["shared_expert_intermediate_size"] = m.integer(A + "expert_shared_feed_forward_length").value_or(0);
  j["intermediate_size"] = m.integer(A + "feed_forward_length").value_or(j["moe_intermediate_size"].get<int64_t>());
  j["norm_topk_prob"] = m.flag(A + "expert_weights_norm").value_or(true);
  const int64_t L = j["num_hidden_layers"].get<int64_t>();
  json types = json::array(), dense_layers = json::array();
  static const char* kLinear[] = {"ssm_ba.weight", "ssm_conv1d.weight", "ssm_dt.bias", "ssm_norm.weight",
                                  "ssm_out.weight"};
  for (int64_t l = 0; l < L; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    const bool linear = has_tensor(f, b + "ssm_in.weight") || has_tensor(f, b + "ssm_a") ||
                        has_tensor(f, b + "ssm_conv1d.weight") || has_tensor(f, b + "attn_qkv.weight");
    if (linear) {
      // in_proj_qkvz fused (ssm_in, older files) or split into attn_qkv + attn_gate (newer converters).
      if (!has_tensor(f, b + "ssm_in.weight") &&
          !(has_tensor(f, b + "attn_qkv.weight") && has_tensor(f, b + "attn_gate.weight")))
        fail("{}: Gated DeltaNet layer {} has no tensor {}ssm_in.weight (nor the split {}attn_qkv.weight + "
             "{}attn_gate.weight)", f.label(), l, b, b, b);
      for (const char* t : kLinear)
        if (!has_tensor(f, b + t)) fail("{}: Gated DeltaNet layer {} has no tensor {}{}", f.label(), l, b, t);
      if (!has_tensor(f, b + "ssm_a") && !has_tensor(f, b + "ssm_a.weight"))
        fail("{}: Gated DeltaNet layer {} has no tensor {}ssm_a", f.label(), l, b);
    } else if (!has_tensor(f, b + "attn_q.weight")) {
      fail("{}: layer {} has neither attention tensors ({}attn_q.weight) nor Gated DeltaNet ones ({}ssm_in.weight)",
           f.label(), l, b, b);
    }
    types.push_back(linear ? "linear_attention" : "full_attention");
    if (!has_tensor(f, b + "ffn_gate_inp.weight")) dense_layers.push_back(l);
  }
  j["layer_types"] = types;
  if (!dense_layers.empty()) j["mlp_only_layers"] = dense_layers;
}

}  // namespace

json gguf_config_json(const GgufFile& f) {
  const Meta m(f);
  const std::string arch = m.str("general.architecture").value_or("");
  if (arch.empty()) fail("{}: metadata general.architecture is missing", f.label());
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3" && arch != "qwen3moe" && arch != "olmoe" &&
      arch != "qwen3next")
    fail("{}: general.architecture \"{}\" is not supported (supported: llama, qwen2, qwen3, qwen3moe, olmoe, "
         "qwen3next)", f.label(), arch);
  const std::string A = arch + ".";
  json j;
  j["hidden_size"] = m.req_int(A + "embedding_length");
  j["num_hidden_layers"] = m.req_int(A + "block_count");
  const int64_t heads = m.req_int(A + "attention.head_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = m.integer(A + "attention.head_count_kv").value_or(heads);
  const int64_t hidden = j["hidden_size"].get<int64_t>();
  const int64_t head_dim = m.integer(A + "attention.key_length").value_or(heads > 0 ? hidden / heads : 0);
  if (auto vl = m.integer(A + "attention.value_length"); vl && *vl != head_dim)
    fail("{}: attention.value_length {} differs from key_length {}; not supported", f.label(), *vl, head_dim);
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = m.integer(A + "context_length").value_or(2048);
  auto eps = m.number(A + "attention.layer_norm_rms_epsilon");
  if (!eps) fail("{}: metadata {}attention.layer_norm_rms_epsilon is missing (only RMSNorm models are supported)",
                 f.label(), A);
  j["rms_norm_eps"] = *eps;
  j["rope_theta"] = m.number(A + "rope.freq_base").value_or(10000.0);
  // (qwen3next: always, as its config's default is 0.25, not 1.)
  const auto dims = m.integer(A + "rope.dimension_count");
  if (dims && head_dim > 0 && (*dims != head_dim || arch == "qwen3next"))
    j["partial_rotary_factor"] = double(*dims) / double(head_dim);
  const std::string scaling = m.str(A + "rope.scaling.type").value_or("none");
  const double scale_linear = m.number(A + "rope.scale_linear").value_or(1.0);
  if (scaling == "linear" || (scaling == "none" && scale_linear != 1.0)) {
    j["rope_scaling"] = {{"rope_type", "linear"},
                         {"factor", scaling == "linear" ? m.number(A + "rope.scaling.factor").value_or(1.0)
                                                        : scale_linear}};
  } else if (scaling == "yarn") {
    json r = {{"rope_type", "yarn"}, {"factor", m.number(A + "rope.scaling.factor").value_or(1.0)}};
    if (auto o = m.integer(A + "rope.scaling.original_context_length")) r["original_max_position_embeddings"] = *o;
    j["rope_scaling"] = r;
  } else if (scaling != "none") {
    fail("{}: {}rope.scaling.type \"{}\" is not supported (supported: none, linear, yarn)", f.label(), A, scaling);
  }
  if (has_tensor(f, "rope_freqs.weight"))
    fail("{}: per-dimension rope frequencies (rope_freqs.weight, Llama-3.1-style rope scaling) are not supported yet",
         f.label());

  int64_t vocab = m.integer(A + "vocab_size").value_or(0);
  if (vocab == 0) {
    if (const GgufTensor* t = f.find("token_embd.weight"); t && t->ne.size() == 2) vocab = t->ne[1];
  }
  j["vocab_size"] = vocab;
  j["tie_word_embeddings"] = !has_tensor(f, "output.weight");
  if (auto id = m.integer("tokenizer.ggml.bos_token_id")) j["bos_token_id"] = *id;
  std::vector<int64_t> eos;
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (auto id = m.integer(k)) eos.push_back(*id);
  if (!eos.empty()) j["eos_token_id"] = eos;

  const auto expert_count = m.integer(A + "expert_count"), expert_used = m.integer(A + "expert_used_count");
  check_claims(f, A,
               Claims{j["num_hidden_layers"].get<int64_t>(), hidden, heads, j["num_key_value_heads"].get<int64_t>(),
                      head_dim, arch == "qwen3next" ? 2 * head_dim : head_dim,
                      m.integer(A + "attention.key_length").has_value(), m.integer(A + "vocab_size"), expert_count,
                      expert_used});
  const int64_t experts = expert_count.value_or(0);
  const int64_t used = expert_used.value_or(0);
  const auto ff = m.integer(A + "feed_forward_length");
  const auto expert_ff = m.integer(A + "expert_feed_forward_length");
  if (arch == "llama") {
    if (experts > 0) {
      j["model_type"] = "mixtral";
      j["num_local_experts"] = experts;
      j["num_experts_per_tok"] = used;
      j["intermediate_size"] = expert_ff.value_or(ff.value_or(0));
    } else {
      j["model_type"] = "llama";
      j["intermediate_size"] = ff.value_or(0);
      j["attention_bias"] = has_tensor(f, "blk.0.attn_q.bias");
      j["mlp_bias"] = has_tensor(f, "blk.0.ffn_gate.bias");
    }
  } else if (arch == "qwen2" || arch == "qwen3") {
    j["model_type"] = arch;
    j["intermediate_size"] = ff.value_or(0);
  } else if (arch == "qwen3moe") {
    j["model_type"] = "qwen3_moe";
    j["num_experts"] = experts;
    j["num_experts_per_tok"] = used;
    j["moe_intermediate_size"] = expert_ff.value_or(0);
    j["intermediate_size"] = ff.value_or(expert_ff.value_or(0));
    // llama.cpp always renormalizes Qwen3-MoE's top-k weights (as the released configs' norm_topk_prob = true).
    j["norm_topk_prob"] = m.flag(A + "expert_weights_norm").value_or(true);
    json dense_layers = json::array();
    for (int64_t l = 0; l < j["num_hidden_layers"].get<int64_t>(); ++l)
      if (!has_tensor(f, fmt::format("blk.{}.ffn_gate_inp.weight", l))) dense_layers.push_back(l);
    if (!dense_layers.empty()) j["mlp_only_layers"] = dense_layers;
  } else if (arch == "qwen3next") {
    qwen3next_config(f, m, A, j);
  } else {  // olmoe
    j["model_type"] = "olmoe";
    j["num_experts"] = experts;
    j["num_experts_per_tok"] = used;
    j["intermediate_size"] = expert_ff.value_or(ff.value_or(0));
    j["norm_topk_prob"] = m.flag(A + "expert_weights_norm").value_or(false);
    if (auto clamp = m.number(A + "attention.clamp_kqv")) j["clip_qkv"] = *clamp;
  }
  return j;
}

namespace {

struct Entry {
  const GgufTensor* t = nullptr;
  std::vector<int64_t> shape;  // Hugging Face order (row-major)
  int64_t elem_off = 0;        // first element of this view within t (expert slices)
  int64_t heads = 0;           // > 0: undo llama.cpp's q/k row permutation over this many heads
  bool dense = false;          // a non-expert matrix (may be served as bf16)
  TensorView direct;           // F32 / F16 / BF16 without permutation: a view into the file
};


class GgufSource : public TensorSource {
 public:
  GgufSource(std::shared_ptr<const GgufFile> f, const ModelConfig& c, bool dense_bf16)
      : f_(std::move(f)), dense_bf16_(dense_bf16) {
    const bool permuted = c.arch == Arch::llama || c.arch == Arch::mixtral;
    for (const GgufTensor& t : f_->tensors()) map_tensor(t, c, permuted);
  }

  const TensorView* find(const std::string& name) const override {
    auto it = map_.find(name);
    if (it == map_.end()) return nullptr;
    const Entry& e = it->second;
    if (e.direct.data != nullptr) return &e.direct;
    if (auto c = cache_.find(name); c != cache_.end()) return &c->second.view;
    return &convert(name, e);
  }
  bool contains(const std::string& name) const override { return map_.count(name) != 0; }
  bool read_ggml(const std::string& name, uint32_t& type, std::vector<int64_t>& shape,
                 std::vector<uint8_t>& bytes) const override {
    auto it = map_.find(name);
    if (it == map_.end() || it->second.shape.size() != 2) return false;
    const Entry& e = it->second;
    const auto info = quant::ggml_type_info(e.t->type);
    if (!info || e.shape[1] % info->block != 0) return false;
    type = e.t->type;
    shape = e.shape;
    const int64_t rows = e.shape[0];
    const size_t row_bytes = size_t(e.shape[1] / info->block) * size_t(info->block_bytes);
    const uint8_t* first = e.t->data + size_t(e.elem_off / info->block) * size_t(info->block_bytes);
    bytes.resize(row_bytes * size_t(rows));
    // Whole rows move under the q/k un-permutation (blocks never span rows).
    copy_rows(e, first, bytes.data(), row_bytes);
    return true;
  }

  bool low_bit(const std::string& name) const override {
    auto it = map_.find(name);
    if (it == map_.end()) return false;
    switch (GgmlType(it->second.t->type)) {
      case GgmlType::q4_0: case GgmlType::q4_1: case GgmlType::q5_0: case GgmlType::q5_1: case GgmlType::q2_k:
      case GgmlType::q3_k: case GgmlType::q4_k: case GgmlType::q5_k: case GgmlType::q6_k: return true;
      default: return false;
    }
  }
  bool block_quantized(const std::string& name) const override {
    auto it = map_.find(name);
    return it != map_.end() && (low_bit(name) || GgmlType(it->second.t->type) == GgmlType::q8_0);
  }
  std::vector<int64_t> read_f32(const std::string& name, std::vector<float>& out) const override {
    auto it = map_.find(name);
    if (it == map_.end()) fail("{}: tensor '{}' is missing", f_->label(), name);
    dequantize(it->second, out);
    return it->second.shape;
  }
  std::vector<std::string> names() const override { return order_; }
  std::string describe(const std::string& name) const override {
    auto it = map_.find(name);
    if (it == map_.end()) return f_->label();
    return fmt::format("{} (GGUF tensor {}, {})", f_->label(), it->second.t->name, quant::ggml_type_name(it->second.t->type));
  }
  void release(const std::string& prefix) const override {
    auto under = [&](const std::string& n) { return n.compare(0, prefix.size(), prefix) == 0; };
    for (auto it = cache_.begin(); it != cache_.end();) it = under(it->first) ? cache_.erase(it) : std::next(it);
    fifo_.erase(std::remove_if(fifo_.begin(), fifo_.end(), under), fifo_.end());
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    for (const auto& [name, e] : map_) {
      if (!under(name) || e.t->nbytes == 0) continue;
      const uintptr_t b = (uintptr_t(e.t->data) + page - 1) & ~(page - 1);
      const uintptr_t end = (uintptr_t(e.t->data) + e.t->nbytes) & ~(page - 1);
      if (end > b) ::madvise(reinterpret_cast<void*>(b), end - b, MADV_DONTNEED);
    }
  }

 private:
  struct Converted {
    TensorView view;
    std::vector<uint8_t> bytes;
  };

  void add(const std::string& hf, const GgufTensor& t, std::vector<int64_t> shape, int64_t elem_off, int64_t heads,
           bool dense) {
    Entry e;
    e.t = &t;
    e.shape = std::move(shape);
    e.elem_off = elem_off;
    e.heads = heads;
    e.dense = dense;
    const auto info = quant::ggml_type_info(t.type);
    if (!info) fail("{}: tensor {} has ggml type {}, which Genesis does not know", f_->label(), t.name, t.type);
    if (elem_off % info->block != 0)
      fail("{}: tensor {}: a slice starts inside a {} block", f_->label(), t.name, info->name);
    const auto type = GgmlType(t.type);
    if (heads == 0 && (type == GgmlType::f32 || type == GgmlType::f16 || type == GgmlType::bf16)) {
      const Dtype d = type == GgmlType::f32 ? Dtype::f32 : type == GgmlType::f16 ? Dtype::f16 : Dtype::bf16;
      e.direct.name = hf;
      e.direct.dtype = d;
      e.direct.shape = e.shape;
      e.direct.data = t.data + uint64_t(elem_off) * dtype_size(d);
      e.direct.nbytes = size_t(e.direct.numel()) * dtype_size(d);
    }
    order_.push_back(hf);
    map_.emplace(hf, std::move(e));
  }

  void map_tensor(const GgufTensor& t, const ModelConfig& c, bool permuted) {
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
    const std::string& n = t.name;
    if (n == "token_embd.weight") return add("model.embed_tokens.weight", t, shape, 0, 0, true);
    if (n == "output_norm.weight") return add("model.norm.weight", t, shape, 0, 0, false);
    if (n == "output.weight") return add("lm_head.weight", t, shape, 0, 0, true);
    int layer = -1, used = 0;
    if (std::sscanf(n.c_str(), "blk.%d.%n", &layer, &used) != 1 || used == 0 || layer < 0) {
      unused_.push_back(n);
      return;
    }
    const std::string rest = n.substr(size_t(used));
    const std::string p = fmt::format("model.layers.{}.", layer);
    const std::string a = p + "self_attn.";
    struct Simple {
      const char* gguf;
      const char* hf;
    };
    static const Simple kSimple[] = {
        {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
        {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_v.bias", "self_attn.v_proj.bias"},
        {"attn_output.weight", "self_attn.o_proj.weight"}, {"attn_output.bias", "self_attn.o_proj.bias"},
        {"attn_q_norm.weight", "self_attn.q_norm.weight"}, {"attn_k_norm.weight", "self_attn.k_norm.weight"},
        {"ffn_gate.weight", "mlp.gate_proj.weight"},    {"ffn_gate.bias", "mlp.gate_proj.bias"},
        {"ffn_up.weight", "mlp.up_proj.weight"},        {"ffn_up.bias", "mlp.up_proj.bias"},
        {"ffn_down.weight", "mlp.down_proj.weight"},    {"ffn_down.bias", "mlp.down_proj.bias"},
        {"ffn_gate_inp.weight", "mlp.gate.weight"},
        // qwen3next
        {"post_attention_norm.weight", "post_attention_layernorm.weight"},
        {"ssm_in.weight", "linear_attn.in_proj_qkvz.weight"}, {"ssm_ba.weight", "linear_attn.in_proj_ba.weight"},
        {"attn_qkv.weight", "linear_attn.in_proj_qkv.weight"}, {"attn_gate.weight", "linear_attn.in_proj_z.weight"},
        {"ssm_conv1d.weight", "linear_attn.conv1d.weight"},   {"ssm_dt.bias", "linear_attn.dt_bias"},
        {"ssm_a", "linear_attn.A"},                           {"ssm_a.weight", "linear_attn.A"},
        {"ssm_norm.weight", "linear_attn.norm.weight"},       {"ssm_out.weight", "linear_attn.out_proj.weight"},
        {"ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight"},
        {"ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight"},
        {"ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight"},
    };
    // The shared expert's gate: [hidden] in llama.cpp's files, a [1, hidden] matrix here.
    if (rest == "ffn_gate_inp_shexp.weight") {
      if (shape.size() == 1) shape.insert(shape.begin(), 1);
      return add(p + "mlp.shared_expert_gate.weight", t, shape, 0, 0, false);
    }
    for (const auto& s : kSimple)
      if (rest == s.gguf) return add(p + s.hf, t, shape, 0, 0, shape.size() == 2);
    if (rest == "attn_q.weight" || rest == "attn_q.bias")
      return add(a + "q_proj." + rest.substr(7), t, shape, 0, permuted ? c.num_heads : 0, shape.size() == 2);
    if (rest == "attn_k.weight" || rest == "attn_k.bias")
      return add(a + "k_proj." + rest.substr(7), t, shape, 0, permuted ? c.num_kv_heads : 0, shape.size() == 2);
    static const Simple kExperts[] = {
        {"ffn_gate_exps.weight", "gate_proj"}, {"ffn_up_exps.weight", "up_proj"}, {"ffn_down_exps.weight", "down_proj"}};
    for (const auto& s : kExperts) {
      if (rest != s.gguf) continue;
      if (shape.size() != 3)
        fail("{}: tensor {} has {} dimensions; expert tensors are [experts, rows, cols]", f_->label(), n, shape.size());
      const int64_t per = shape[1] * shape[2];
      for (int64_t e = 0; e < shape[0]; ++e)
        add(fmt::format("{}mlp.experts.{}.{}.weight", p, e, s.hf), t, {shape[1], shape[2]}, e * per, 0, false);
      return;
    }
    // Older Mixtral files: one tensor per expert, blk.N.ffn_gate.E.weight.
    int expert = -1, used2 = 0;
    char which[8] = {};
    if (std::sscanf(rest.c_str(), "ffn_%4[a-z].%d.weight%n", which, &expert, &used2) == 2 &&
        used2 == int(rest.size()) && expert >= 0) {
      const std::string w = which;
      const char* hf = w == "gate" ? "gate_proj" : w == "up" ? "up_proj" : w == "down" ? "down_proj" : nullptr;
      if (hf) return add(fmt::format("{}mlp.experts.{}.{}.weight", p, expert, hf), t, shape, 0, 0, false);
    }
    unused_.push_back(n);
  }

  // fp32 values of an entry (any storage type), un-permuted. Touches no shared state: safe from several threads.
  void dequantize(const Entry& e, std::vector<float>& vals) const {
    int64_t n = 1;
    for (auto s : e.shape) n *= s;
    vals.resize(static_cast<size_t>(n));
    const auto info = *quant::ggml_type_info(e.t->type);
    try {
      quant::ggml_dequantize(e.t->type, e.t->data + uint64_t(e.elem_off / info.block) * uint64_t(info.block_bytes),
                             vals.data(), n);
    } catch (const Error& err) {
      fail("{}: tensor {}: {}", f_->label(), e.t->name, err.what());
    }
    if (e.heads > 0) {
      std::vector<float> in = std::move(vals);
      vals.resize(in.size());
      copy_rows(e, reinterpret_cast<const uint8_t*>(in.data()), reinterpret_cast<uint8_t*>(vals.data()),
                size_t(in.size() / size_t(e.shape[0])) * 4);
    }
  }

  const TensorView& convert(const std::string& name, const Entry& e) const {
    std::vector<float> vals;
    dequantize(e, vals);
    const int64_t n = int64_t(vals.size());
    Converted cv;
    cv.view.name = name;
    cv.view.shape = e.shape;
    if (e.dense && dense_bf16_) {
      cv.bytes.resize(size_t(n) * 2);
      auto* out = reinterpret_cast<uint16_t*>(cv.bytes.data());
      for (int64_t i = 0; i < n; ++i) out[i] = quant::f32_to_bf16(vals[size_t(i)]);
      cv.view.dtype = Dtype::bf16;
    } else {
      cv.bytes.resize(size_t(n) * 4);
      std::memcpy(cv.bytes.data(), vals.data(), cv.bytes.size());
      cv.view.dtype = Dtype::f32;
    }
    cv.view.data = cv.bytes.data();
    cv.view.nbytes = cv.bytes.size();
    fifo_.push_back(name);
    while (fifo_.size() > kGgufViewsKept) {
      cache_.erase(fifo_.front());
      fifo_.pop_front();
    }
    return cache_.emplace(name, std::move(cv)).first->second.view;
  }

  // The entry's rows (row_bytes each) from `src` to `dst` in Hugging Face order. llama.cpp wrote row (h, i, s) =
  // HF row (h, s, i) for i < head_dim/2, s in {0, 1}; entries without a permutation are copied as they are.
  void copy_rows(const Entry& e, const uint8_t* src, uint8_t* dst, size_t row_bytes) const {
    const int64_t rows = e.shape[0];
    if (e.heads == 0) {
      std::memcpy(dst, src, row_bytes * size_t(rows));
      return;
    }
    if (rows % e.heads != 0 || (rows / e.heads) % 2 != 0)
      fail("{}: tensor {} has {} rows, not {} heads of an even size", f_->label(), e.t->name, rows, e.heads);
    const int64_t hd = rows / e.heads, half = hd / 2;
    for (int64_t h = 0; h < e.heads; ++h)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t i = 0; i < half; ++i)
          std::memcpy(dst + size_t(h * hd + s * half + i) * row_bytes, src + size_t(h * hd + 2 * i + s) * row_bytes,
                      row_bytes);
  }

  std::shared_ptr<const GgufFile> f_;
  bool dense_bf16_;
  std::unordered_map<std::string, Entry> map_;
  std::vector<std::string> order_, unused_;
  mutable std::map<std::string, Converted> cache_;
  mutable std::deque<std::string> fifo_;
};

}  // namespace

std::unique_ptr<TensorSource> gguf_tensor_source(std::shared_ptr<const GgufFile> f, const ModelConfig& c,
                                                 bool dense_bf16) {
  return std::make_unique<GgufSource>(std::move(f), c, dense_bf16);
}

bool is_gguf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace genesis::runtime
