// Loading a Model and choosing its kernels (which family serves each matrix, which genome): everything decided
// once, before any step runs. The step itself is forward.cpp (with attention.cpp and moe.cpp).
#include <algorithm>
#include <filesystem>
#include <map>

#include <malloc.h>

#include "common/error.h"
#include "kb/kb.h"
#include "quant/ggml.h"
#include "runtime/io/gguf.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/forward.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/linear_policy.h"

namespace genesis::runtime {

Model::Model(ModelConfig c, Weights w) : config_(std::move(c)), weights_(std::move(w)) {}

std::unique_ptr<Model> Model::from_source(ModelConfig c, const TensorSource& src, const LoadOptions& opt,
                                          const std::string& origin, std::shared_ptr<const GgufFile> gguf) {
  if (!opt.gpu && (opt.gpu_defer != 0 || opt.gpu_prefill_rows != 0 || opt.gpu_expert_budget != 0))
    fail("{} is an option of the hybrid mode: add --gpu",
         opt.gpu_defer != 0 ? "--gpu-defer" : opt.gpu_prefill_rows != 0 ? "--gpu-prefill-rows" : "--gpu-experts");
  Weights w = load_weights(c, src, opt, origin);
  std::unique_ptr<Model> m(new Model(std::move(c), std::move(w)));
  m->kv_cache_ = opt.kv_cache;
  if (m->config_.is_moe() && opt.experts == ExpertMode::nf4_kernel) {
    // The blocksize is known once the experts are loaded (a bitsandbytes checkpoint brings its own): bind the packed
    // experts to their kernel sets now.
    m->kernels_ = make_expert_kernels(m->config_, opt.kernel_path(), m->weights_.nf4_blocksize, kb_path_of(opt));
    for (Layer& l : m->weights_.layers)
      for (Expert& e : l.experts) {
        for (auto [x, set] : {std::pair{&e.gate_up, m->kernels_.gate_up_set}, std::pair{&e.down, m->kernels_.down_set}})
          if (!x->op && x->packed) x->op = kernels::nf4_gemv::make_linear(std::move(x->packed), set);
      }
  }
  if (opt.gpu) m->gpu_ = make_gpu_model(m->config_, m->weights_, opt, std::move(gguf));
  return m;
}

std::unique_ptr<Model> Model::from_gguf(std::shared_ptr<const GgufFile> f, const LoadOptions& opt) {
  ModelConfig c = parse_config(gguf_config_json(*f), f->label());
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);  // see load() below
  // Quantized non-expert matrices become bf16 unless the caller wants fp32 (LoadOptions::keep_bf16 = false).
  std::unique_ptr<TensorSource> src = gguf_tensor_source(f, c, opt.keep_bf16);
  return from_source(std::move(c), *src, opt, f->label(), f);
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opt) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(dir)) {
    if (!is_gguf_file(dir))
      fail("{} is a file but not a GGUF file (no GGUF magic); a model is a GGUF file or a Hugging Face directory",
           dir);
    return from_gguf(GgufFile::open(dir), opt);
  }
  if (!fs::exists(dir)) fail("{} does not exist (expected a Hugging Face model directory or a GGUF file)", dir);
  if (!fs::is_directory(dir)) fail("{} is not a directory or a regular file", dir);
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(config_path)) fail("{} has no config.json (is it a Hugging Face model directory?)", dir);
  ModelConfig c = load_config(config_path);
  // Loading interleaves short-lived per-expert buffers (~1 MB) with the packed weights that stay. glibc's adaptive
  // mmap threshold would put both in one heap, whose holes then cannot be given back: measured on a 40-layer
  // Qwen3-30B-A3B, peak RSS 1.24x the weights held with it, 1.03x with large blocks always mapped.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  // The mapping lives only while the weights are read: everything the forward pass needs is copied (fp32) or
  // repacked (NF4) out of it.
  std::unique_ptr<TensorSource> src = open_safetensors(dir);
  return from_source(std::move(c), *src, opt, config_path);
}

std::string Model::dense_description() const {
  // Matrices grouped by what holds them (Linear::describe(): format and kernel), in order of first appearance.
  std::vector<std::pair<std::string, std::pair<int64_t, size_t>>> groups;
  auto count = [&](const Dense& d) {
    if (d.empty()) return;
    const std::string what = d.op->describe();
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == what; });
    if (it == groups.end()) it = groups.insert(groups.end(), {what, {0, 0}});
    ++it->second.first;
    it->second.second += d.bytes();
  };
  for (const Layer& l : weights_.layers)
    for (const Dense* d : l.matrices()) count(*d);
  count(weights_.lm_head);
  std::string s;
  for (const auto& [what, n] : groups)
    s += fmt::format("{}{} {} ({:.0f} MiB)", s.empty() ? "" : ", ", n.first,
                     what, double(n.second) / 1048576.0);
  return s + fmt::format("; embedding {}", weights_.embed.op->describe());
}

std::string Model::expert_description() const {
  if (!config_.is_moe()) return "dense model (no experts)";
  const int64_t total = config_.num_experts * config_.moe_layers();
  std::string kept;  // what serves the experts kept as the file stores them
  for (const Layer& l : weights_.layers)
    for (const Expert& e : l.experts)
      if (kept.empty() && e.gate_up.op && e.gate_up.op->format() != "NF4" && weights_.experts_kept > 0)
        kept = e.gate_up.op->describe() + "; down " + e.down.op->describe();
  if (weights_.experts_kept == total) return fmt::format("experts kept as the GGUF file stores them: {}", kept);
  if (weights_.experts_kept > 0)
    return fmt::format("{} of {} experts kept as stored ({}), the rest NF4", weights_.experts_kept, total, kept);
  switch (weights_.expert_mode) {
    case ExpertMode::f32: return "fp32 experts (OpenBLAS sgemv)";
    case ExpertMode::nf4_reference:
      return fmt::format("NF4 experts (blocksize {}), reference path: dequantize rows + fp32 dot",
                         weights_.nf4_blocksize);
    case ExpertMode::nf4_kernel:
      return fmt::format("NF4 experts (blocksize {}), kernel {} ({})", weights_.nf4_blocksize, kernels_.id,
                         kernels_.source);
  }
  return "?";
}

double Model::expert_bytes_per_token() const {
  double b = 0;
  for (const Layer& l : weights_.layers)
    if (l.moe && !l.experts.empty())
      b += double(config_.top_k) * double(l.experts[0].gate_up.bytes() + l.experts[0].down.bytes());
  return b;
}

double Model::bytes_per_token() const {
  double b = double(weights_.dense_bytes());
  // The embedding is read one row per token, not whole.
  b -= double(weights_.embed.bytes());
  if (weights_.lm_head.empty()) b += double(weights_.embed.bytes());  // tied: read whole as the output layer
  else b += double(config_.hidden_size) * 4;
  for (const Layer& l : weights_.layers) {
    if (!l.moe || l.experts.empty()) continue;
    const Expert& e = l.experts[0];
    b += double(config_.top_k) * double(e.gate_up.bytes() + e.down.bytes());
  }
  // A Gated DeltaNet layer reads and writes its fp32 recurrent state once per token (2 MB per layer on Qwen3-Next:
  // 72 MB for its 36 linear layers, beyond the caches).
  const double state = double(config_.linear_num_value_heads * config_.linear_key_head_dim *
                              config_.linear_value_head_dim) * 4.0;
  b += 2.0 * state * double(config_.layers_of(MixerKind::gated_deltanet));
  return b;
}

}  // namespace genesis::runtime
