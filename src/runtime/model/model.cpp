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

namespace genesis::runtime {

Model::Model(ModelConfig c, Weights w) : config_(std::move(c)), weights_(std::move(w)) {}

std::unique_ptr<Model> Model::from_source(ModelConfig c, const TensorSource& src, const LoadOptions& opt,
                                          const std::string& origin) {
  Weights w = load_weights(c, src, opt, origin);
  std::unique_ptr<Model> m(new Model(std::move(c), std::move(w)));
  const std::string kb_path = !opt.use_kb ? "" : opt.kb_path.empty() ? kb::default_path() : opt.kb_path;
  if (m->config_.is_moe() && opt.experts == ExpertMode::nf4_kernel)
    m->kernels_ = make_expert_kernels(m->config_, opt.kernel_path(), m->weights_.nf4_blocksize, kb_path);
  // NF4 non-expert matrices: kernels per shape (the knowledge base's genome for one token when it has one).
  std::vector<Dense*> nf4;
  for (Layer& l : m->weights_.layers)
    for (Dense* d : l.matrices())
      if (d->is_nf4()) nf4.push_back(d);
  if (m->weights_.lm_head.is_nf4()) nf4.push_back(&m->weights_.lm_head);
  std::map<std::pair<int64_t, int64_t>, DenseKernels> by_shape;
  for (Dense* d : nf4) {
    auto it = by_shape.find({d->rows, d->cols});
    if (it == by_shape.end())
      it = by_shape.emplace(std::pair{d->rows, d->cols},
                            make_dense_kernels(d->rows, d->cols, opt.kernel_path(), opt.nf4_blocksize, kb_path))
               .first;
    d->kernel1 = it->second.one;
    d->kernel8 = it->second.eight;
  }
  m->dense_nf4_ = int64_t(nf4.size());
  return m;
}

std::unique_ptr<Model> Model::from_gguf(std::shared_ptr<const GgufFile> f, const LoadOptions& opt) {
  ModelConfig c = parse_config(gguf_config_json(*f), f->label());
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);  // see load() below
  // Quantized non-expert matrices become bf16 unless the caller wants fp32 (LoadOptions::keep_bf16 = false).
  std::unique_ptr<TensorSource> src = gguf_tensor_source(f, c, opt.keep_bf16);
  return from_source(std::move(c), *src, opt, f->label());
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
  size_t nf4 = 0, bf16 = 0, f32 = 0, gq = 0, q8 = 0;
  int64_t n_gq = 0, n_q8 = 0;
  auto count = [&](const Dense& d) {
    if (d.empty()) return;
    if (d.is_gq()) ++n_gq;
    if (d.is_q8()) ++n_q8;
    (d.is_gq() ? gq : d.is_q8() ? q8 : d.is_nf4() ? nf4 : d.bf16() ? bf16 : f32) += d.bytes();
  };
  count(weights_.lm_head);
  for (const Layer& l : weights_.layers)
    for (const Dense* d : l.matrices()) count(*d);
  const double mib = 1024.0 * 1024.0;
  std::vector<std::string> parts;
  if (dense_nf4_) parts.push_back(fmt::format("{} NF4 ({:.0f} MiB)", dense_nf4_, double(nf4) / mib));
  if (n_gq)
    parts.push_back(fmt::format("{} kept as stored ({:.0f} MiB, ggml_gemv {})", n_gq, double(gq) / mib,
                                kernels::ggml_gemv::path_name(kernels::ggml_gemv::best_path())));
  if (n_q8)
    parts.push_back(fmt::format("{} int8 blocks ({:.0f} MiB, q8_gemv {})", n_q8, double(q8) / mib,
                                kernels::q8_gemv::path_name(kernels::q8_gemv::best_path())));
  if (bf16) parts.push_back(fmt::format("bf16 {:.0f} MiB", double(bf16) / mib));
  if (f32) parts.push_back(fmt::format("fp32 {:.0f} MiB", double(f32) / mib));
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  const Dense& e = weights_.embed;
  return s + fmt::format("; embedding {}", e.is_gq()   ? quant::ggml_type_name(e.gq->type)
                                          : e.is_q8() ? std::string("int8 blocks")
                                          : e.bf16()  ? std::string("bf16")
                                                      : std::string("fp32"));
}

std::string Model::expert_description() const {
  if (!config_.is_moe()) return "dense model (no experts)";
  const int64_t total = config_.num_experts * config_.moe_layers();
  if (weights_.experts_kept == total)
    return fmt::format("experts kept as the GGUF file stores them, ggml_gemv {}",
                       kernels::ggml_gemv::path_name(kernels::ggml_gemv::best_path()));
  if (weights_.experts_kept > 0)
    return fmt::format("{} of {} experts kept as stored (ggml_gemv), the rest NF4", weights_.experts_kept, total);
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

double Model::bytes_per_token() const {
  double b = double(weights_.dense_bytes());
  // The embedding is read one row per token, not whole.
  b -= double(weights_.embed.bytes());
  if (weights_.lm_head.empty()) b += double(weights_.embed.bytes());  // tied: read whole as the output layer
  else b += double(config_.hidden_size) * 4;
  for (const Layer& l : weights_.layers) {
    if (!l.moe || l.experts.empty()) continue;
    const Expert& e = l.experts[0];
    b += double(config_.top_k) * double(e.gate_up.bytes(weights_.expert_mode) + e.down.bytes(weights_.expert_mode));
  }
  // A Gated DeltaNet layer reads and writes its fp32 recurrent state once per token (2 MB per layer on Qwen3-Next:
  // 72 MB for its 36 linear layers, beyond the caches).
  const double state = double(config_.linear_num_value_heads * config_.linear_key_head_dim *
                              config_.linear_value_head_dim) * 4.0;
  b += 2.0 * state * double(config_.layers_of(MixerKind::gated_deltanet));
  return b;
}

}  // namespace genesis::runtime
