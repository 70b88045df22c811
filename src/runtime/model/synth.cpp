// Random-weight checkpoints at real shapes; see synth.h.
#include "runtime/model/synth.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/progress.h"
#include "common/util.h"
#include "quant/nf4.h"
#include "runtime/io/bnb.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/config.h"

namespace genesis::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The architecture table of ARCHITECTURE.md as Hugging Face config.json files.
json preset_config(const std::string& name) {
  if (name == "qwen3-30b-a3b" || name == "qwen3-next-shapes") {
    const bool next = name == "qwen3-next-shapes";
    return {{"architectures", {"Qwen3MoeForCausalLM"}},
            {"model_type", "qwen3_moe"},
            {"hidden_size", 2048},
            {"num_hidden_layers", 48},
            {"num_attention_heads", next ? 16 : 32},
            {"num_key_value_heads", next ? 2 : 4},
            {"head_dim", next ? 256 : 128},
            {"intermediate_size", 6144},
            {"moe_intermediate_size", next ? 512 : 768},
            {"num_experts", next ? 512 : 128},
            {"num_experts_per_tok", next ? 10 : 8},
            {"norm_topk_prob", true},
            {"decoder_sparse_step", 1},
            {"mlp_only_layers", json::array()},
            {"vocab_size", 151936},
            {"max_position_embeddings", 40960},
            {"rope_theta", 1000000.0},
            {"rms_norm_eps", 1e-6},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"bos_token_id", 151643},
            {"eos_token_id", 151645}};
  }
  if (name == "qwen3-next-80b-a3b")  // the released Qwen3-Next-80B-A3B-Instruct config.json
    return {{"architectures", {"Qwen3NextForCausalLM"}},
            {"model_type", "qwen3_next"},
            {"hidden_size", 2048},
            {"num_hidden_layers", 48},
            {"num_attention_heads", 16},
            {"num_key_value_heads", 2},
            {"head_dim", 256},
            {"intermediate_size", 5120},
            {"moe_intermediate_size", 512},
            {"shared_expert_intermediate_size", 512},
            {"num_experts", 512},
            {"num_experts_per_tok", 10},
            {"norm_topk_prob", true},
            {"decoder_sparse_step", 1},
            {"mlp_only_layers", json::array()},
            {"full_attention_interval", 4},
            {"linear_conv_kernel_dim", 4},
            {"linear_key_head_dim", 128},
            {"linear_value_head_dim", 128},
            {"linear_num_key_heads", 16},
            {"linear_num_value_heads", 32},
            {"partial_rotary_factor", 0.25},
            {"vocab_size", 151936},
            {"max_position_embeddings", 262144},
            {"rope_theta", 10000000.0},
            {"rms_norm_eps", 1e-6},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"bos_token_id", 151643},
            {"eos_token_id", 151645}};
  if (name == "olmoe")
    return {{"architectures", {"OlmoeForCausalLM"}},
            {"model_type", "olmoe"},
            {"hidden_size", 2048},
            {"num_hidden_layers", 16},
            {"num_attention_heads", 16},
            {"num_key_value_heads", 16},
            {"intermediate_size", 1024},
            {"num_experts", 64},
            {"num_experts_per_tok", 8},
            {"norm_topk_prob", false},
            {"vocab_size", 50304},
            {"max_position_embeddings", 4096},
            {"rope_theta", 10000.0},
            {"rms_norm_eps", 1e-5},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"bos_token_id", nullptr},
            {"eos_token_id", 50279}};
  if (name == "mixtral")
    return {{"architectures", {"MixtralForCausalLM"}},
            {"model_type", "mixtral"},
            {"hidden_size", 4096},
            {"num_hidden_layers", 32},
            {"num_attention_heads", 32},
            {"num_key_value_heads", 8},
            {"intermediate_size", 14336},
            {"num_local_experts", 8},
            {"num_experts_per_tok", 2},
            {"vocab_size", 32000},
            {"max_position_embeddings", 32768},
            {"rope_theta", 1000000.0},
            {"rms_norm_eps", 1e-5},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"bos_token_id", 1},
            {"eos_token_id", 2}};
  std::string names;
  for (const auto& p : synth_presets()) names += (names.empty() ? "" : ", ") + p.name;
  fail("unknown preset '{}' (possible: {})", name, names);
}

// xorshift64*: fast, seeded, good enough for weights that only need plausible magnitudes.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  // Roughly N(0, 1): the sum of four uniforms, centred and scaled (Irwin-Hall).
  float normal() {
    const uint64_t r = next();
    float sum = 0;
    for (int i = 0; i < 4; ++i) sum += float((r >> (16 * i)) & 0xFFFF) / 65535.0f;
    return (sum - 2.0f) * 1.7320508f;
  }
};

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

struct Tensor {
  enum Kind { dense, norm, expert } kind;
  std::string name;
  int64_t rows = 0, cols = 0;  // norm: cols only
  float value = 1.0f;          // norm: every element
};

}  // namespace

std::vector<SynthPreset> synth_presets() {
  return {{"qwen3-30b-a3b", "Qwen3-30B-A3B: 48 layers, 128 experts top-8, expert inter 768 (~17 GB of NF4 experts)"},
          {"qwen3-next-80b-a3b",
           "Qwen3-Next-80B-A3B: 48 layers (3 of 4 Gated DeltaNet, 1 of 4 gated attention), 512 experts top-10 "
           "(inter 512) + a shared expert (~40 GB of NF4 experts; --layers for less)"},
          {"qwen3-next-shapes",
           "Qwen3-Next-80B-A3B's MoE shapes (512 experts top-10, inter 512, 16/2 heads x 256) on qwen3_moe layers "
           "(plain GQA attention everywhere, no shared expert)"},
          {"olmoe", "OLMoE-1B-7B: 16 layers, 64 experts top-8, expert inter 1024"},
          {"mixtral", "Mixtral-8x7B: 32 layers, 8 experts top-2, expert inter 14336"}};
}

SynthResult synth_model(const SynthOptions& opt) {
  const double t0 = now_seconds();
  json cfg = preset_config(opt.preset);
  if (opt.layers < 0 || opt.layers > cfg["num_hidden_layers"].get<int64_t>())
    fail("--layers {}: the {} preset has 1..{} layers", opt.layers, opt.preset, cfg["num_hidden_layers"].get<int64_t>());
  if (opt.layers > 0) cfg["num_hidden_layers"] = opt.layers;
  quant::check_nf4_blocksize(opt.blocksize);
  const bool mixtral = opt.preset == "mixtral";
  const std::string dtype = "bfloat16";
  cfg["torch_dtype"] = dtype;
  // Experts are bitsandbytes NF4; every other linear layer stays bf16 (skipped by the quantizer).
  cfg["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                {"load_in_4bit", true},
                                {"bnb_4bit_quant_type", "nf4"},
                                {"bnb_4bit_use_double_quant", opt.double_quant},
                                {"bnb_4bit_compute_dtype", dtype},
                                {"bnb_4bit_blocksize", opt.blocksize},
                                {"llm_int8_skip_modules", {"lm_head", "self_attn", "linear_attn", "shared_expert",
                                                           mixtral ? "block_sparse_moe.gate" : "mlp.gate"}}};
  const ModelConfig c = parse_config(cfg, opt.preset + " preset");
  if (c.hidden_size % opt.blocksize || c.moe_intermediate_size % opt.blocksize)
    fail("blocksize {} does not divide hidden {} and expert inter {}", opt.blocksize, c.hidden_size,
         c.moe_intermediate_size);

  if (opt.out.empty()) fail("--out is required");
  if (fs::exists(opt.out) && !(fs::is_directory(opt.out) && fs::is_empty(opt.out)))
    fail("{} exists and is not an empty directory; choose a new --out", opt.out);
  fs::create_directories(opt.out);

  // Every tensor in write order, with its safetensors specs.
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.moe_intermediate_size, E = c.num_experts;
  std::vector<Tensor> ts;
  std::vector<TensorSpec> specs;
  auto add_dense = [&](const std::string& n, int64_t r, int64_t k) {
    ts.push_back({Tensor::dense, n, r, k});
    specs.push_back({n, Dtype::bf16, {r, k}});
  };
  // Norms of 1 as applied: Qwen3-Next's RMSNorm weights are applied as 1 + w (stored 0), its gated norm as is.
  const float norm_one = c.norm_add_one ? 0.0f : 1.0f;
  auto add_norm = [&](const std::string& n, int64_t k, float value) {
    ts.push_back({Tensor::norm, n, 1, k, value});
    specs.push_back({n, Dtype::bf16, {k}});
  };
  uint64_t expert_bytes = 0;
  auto add_expert = [&](const std::string& n, int64_t r, int64_t k) {
    ts.push_back({Tensor::expert, n, r, k});
    for (auto& s : bnb_nf4_specs(n, r, k, opt.blocksize, opt.double_quant, dtype)) {
      expert_bytes += s.nbytes();
      specs.push_back(s);
    }
  };
  add_dense("model.embed_tokens.weight", V, H);
  for (int64_t li = 0; li < c.num_layers; ++li) {
    const std::string p = fmt::format("model.layers.{}.", li);
    add_norm(p + "input_layernorm.weight", H, norm_one);
    add_norm(p + "post_attention_layernorm.weight", H, norm_one);
    const MixerKind mixer = c.layers[size_t(li)].mixer;
    if (mixer == MixerKind::gated_deltanet) {
      const std::string a = p + "linear_attn.";
      const int64_t nv = c.linear_num_value_heads, CD = c.linear_conv_dim(), K = c.linear_conv_kernel;
      add_dense(a + "in_proj_qkvz.weight", 2 * c.linear_key_dim() + 2 * c.linear_value_dim(), H);
      add_dense(a + "in_proj_ba.weight", 2 * nv, H);
      ts.push_back({Tensor::dense, a + "conv1d.weight", CD, K});  // [CD, 1, K] holds the same values as [CD, K]
      specs.push_back({a + "conv1d.weight", Dtype::bf16, {CD, 1, K}});
      add_norm(a + "dt_bias", nv, 0.0f);
      add_norm(a + "A_log", nv, 0.0f);  // decays exp(-softplus(a))
      add_norm(a + "norm.weight", c.linear_value_head_dim, 1.0f);
      add_dense(a + "out_proj.weight", H, c.linear_value_dim());
    } else {
      const int64_t qrows = mixer == MixerKind::gated_attention ? 2 * c.q_dim() : c.q_dim();
      add_dense(p + "self_attn.q_proj.weight", qrows, H);
      add_dense(p + "self_attn.k_proj.weight", c.kv_dim(), H);
      add_dense(p + "self_attn.v_proj.weight", c.kv_dim(), H);
      add_dense(p + "self_attn.o_proj.weight", H, c.q_dim());
      if (c.qk_norm == QkNorm::per_head) {
        add_norm(p + "self_attn.q_norm.weight", c.head_dim, norm_one);
        add_norm(p + "self_attn.k_norm.weight", c.head_dim, norm_one);
      } else if (c.qk_norm == QkNorm::whole) {
        add_norm(p + "self_attn.q_norm.weight", c.q_dim(), norm_one);
        add_norm(p + "self_attn.k_norm.weight", c.kv_dim(), norm_one);
      }
    }
    const std::string m = p + (mixtral ? "block_sparse_moe." : "mlp.");
    if (c.layers[size_t(li)].mlp == MlpKind::moe_shared) {
      const int64_t SI = c.shared_expert_intermediate_size;
      add_dense(m + "shared_expert.gate_proj.weight", SI, H);
      add_dense(m + "shared_expert.up_proj.weight", SI, H);
      add_dense(m + "shared_expert.down_proj.weight", H, SI);
      add_dense(m + "shared_expert_gate.weight", 1, H);
    }
    add_dense(m + "gate.weight", E, H);
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = fmt::format("{}experts.{}.", m, e);
      add_expert(x + (mixtral ? "w1" : "gate_proj") + ".weight", I, H);
      add_expert(x + (mixtral ? "w3" : "up_proj") + ".weight", I, H);
      add_expert(x + (mixtral ? "w2" : "down_proj") + ".weight", H, I);
    }
  }
  add_norm("model.norm.weight", H, norm_one);
  add_dense("lm_head.weight", V, H);

  uint64_t total = 0;
  for (const auto& s : specs) total += s.nbytes();
  {
    std::ofstream f(fs::path(opt.out) / "config.json");
    f << cfg.dump(2) << "\n";
    std::ofstream g(fs::path(opt.out) / "generation_config.json");
    g << json{{"bos_token_id", cfg["bos_token_id"]}, {"eos_token_id", cfg["eos_token_id"]}, {"do_sample", false}}.dump(2)
      << "\n";
    if (!f || !g) fail("cannot write config.json in {}", opt.out);
  }
  ShardedSafetensorsWriter w(opt.out, specs, opt.shard_bytes, {{"format", "pt"}, {"genesis_synth", opt.preset}});
  Progress bar(fmt::format("synth {}", opt.preset), double(total), "B", opt.progress);
  Rng rng(opt.seed);
  std::vector<uint16_t> buf;
  const float scale = 0.02f;
  for (const Tensor& t : ts) {
    bar.set_detail(t.name);
    if (t.kind == Tensor::norm) {
      buf.assign(size_t(t.cols), to_bf16(t.value));
      w.write(t.name, buf.data(), buf.size() * 2);
    } else if (t.kind == Tensor::dense) {
      const int64_t chunk_rows = std::max<int64_t>(1, (int64_t(1) << 22) / t.cols);
      for (int64_t r = 0; r < t.rows; r += chunk_rows) {
        const int64_t n = std::min(chunk_rows, t.rows - r);
        buf.resize(size_t(n * t.cols));
        for (auto& v : buf) v = to_bf16(scale * rng.normal());
        w.write(t.name, buf.data(), buf.size() * 2);
        bar.add(double(buf.size() * 2));
      }
      continue;
    } else {
      // Random codes with per-block absmax near what N(0, 0.02) weights would give (the largest of 64 draws).
      quant::Nf4Matrix q;
      q.rows = t.rows, q.cols = t.cols, q.blocksize = opt.blocksize;
      q.packed.resize(size_t((q.numel() + 1) / 2));
      for (size_t i = 0; i < q.packed.size(); i += 8) {
        const uint64_t r = rng.next();
        std::memcpy(&q.packed[i], &r, std::min<size_t>(8, q.packed.size() - i));
      }
      q.absmax.resize(size_t(q.num_blocks()));
      for (auto& a : q.absmax) a = scale * (2.5f + 0.3f * rng.normal());
      write_bnb_nf4(w, t.name, q, opt.double_quant, dtype);
    }
    bar.set(double(w.bytes_written()));
  }
  w.finish();
  bar.set(double(total));
  bar.finish();
  SynthResult res;
  res.summary = c.summary();
  res.bytes = w.bytes_written();
  res.expert_bytes = expert_bytes;
  res.shards = w.num_shards();
  res.seconds = now_seconds() - t0;
  return res;
}

}  // namespace genesis::runtime
