// The forward pass over a Session's KV cache. Dense products go through dense.h (fp32 OpenBLAS, or bf16 widened in
// registers); one token's MoE layer is split into (expert, row block) tasks over the thread pool, first for gate_up,
// then for down.
#include "runtime/model/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include <malloc.h>

#include "common/error.h"
#include "common/util.h"
#include "cpu/thread_pool.h"
#include "kb/kb.h"
#include "quant/ggml.h"
#include "runtime/io/gguf.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/dense.h"

namespace genesis::runtime {

namespace {
constexpr int64_t kMaxChunk = 64;  // prompt tokens run through a layer together
}

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
    for (Dense* d : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
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
  size_t nf4 = 0, bf16 = 0, f32 = 0, gq = 0;
  int64_t n_gq = 0;
  auto count = [&](const Dense& d) {
    if (d.empty()) return;
    if (d.is_gq()) ++n_gq;
    (d.is_gq() ? gq : d.is_nf4() ? nf4 : d.bf16() ? bf16 : f32) += d.bytes();
  };
  count(weights_.lm_head);
  for (const Layer& l : weights_.layers)
    for (const Dense* d : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down, &l.router}) count(*d);
  const double mib = 1024.0 * 1024.0;
  std::vector<std::string> parts;
  if (dense_nf4_) parts.push_back(fmt::format("{} NF4 ({:.0f} MiB)", dense_nf4_, double(nf4) / mib));
  if (n_gq)
    parts.push_back(fmt::format("{} kept as stored ({:.0f} MiB, ggml_gemv {})", n_gq, double(gq) / mib,
                                kernels::ggml_gemv::path_name(kernels::ggml_gemv::best_path())));
  if (bf16) parts.push_back(fmt::format("bf16 {:.0f} MiB", double(bf16) / mib));
  if (f32) parts.push_back(fmt::format("fp32 {:.0f} MiB", double(f32) / mib));
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  const Dense& e = weights_.embed;
  return s + fmt::format("; embedding {}", e.is_gq() ? quant::ggml_type_name(e.gq->type)
                                                     : e.bf16() ? std::string("bf16") : std::string("fp32"));
}

std::string Model::expert_description() const {
  if (!config_.is_moe()) return "dense model (no experts)";
  const int64_t total = config_.num_experts * int64_t(std::count(config_.layer_is_moe.begin(),
                                                                 config_.layer_is_moe.end(), true));
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
  return b;
}

Session::Session(const Model& m, int64_t context, cpu::ThreadPool* pool)
    : m_(m), c_(m.config()), pool_(pool) {
  capacity_ = context > 0 ? context : std::min(c_.max_position_embeddings, kDefaultContext);
  const size_t per_layer = size_t(capacity_ * c_.kv_dim());
  k_cache_.assign(per_layer * size_t(c_.num_layers), 0.0f);
  v_cache_.assign(per_layer * size_t(c_.num_layers), 0.0f);
  chunk_ = kMaxChunk;
  const size_t n = size_t(chunk_);
  // A MoE config's dense intermediate_size sizes nothing when no layer is dense (no tensor checked it).
  const bool any_dense = std::count(c_.layer_is_moe.begin(), c_.layer_is_moe.end(), false) > 0;
  const int64_t inter = std::max(any_dense ? c_.intermediate_size : 0, c_.moe_intermediate_size);
  x_.resize(n * size_t(c_.hidden_size));
  xn_.resize(n * size_t(c_.hidden_size));
  tmp_.resize(n * size_t(c_.hidden_size));
  q_.resize(n * size_t(c_.q_dim()));
  k_.resize(n * size_t(c_.kv_dim()));
  v_.resize(n * size_t(c_.kv_dim()));
  att_.resize(n * size_t(c_.q_dim()));
  h1_.resize(n * size_t(inter));
  h2_.resize(n * size_t(inter));
  if (c_.is_moe()) {
    moe_h_.resize(size_t(c_.top_k * 2 * c_.moe_intermediate_size));
    moe_act_.resize(size_t(c_.top_k * c_.moe_intermediate_size));
    moe_out_.resize(size_t(c_.top_k * c_.hidden_size));
  }
  scores_.resize(size_t(capacity_));
}

const RopeTable& Session::rope_for(int64_t seq_len) {
  // Only the dynamic type depends on the length; transformers recomputes it from the longest position of a call.
  const int64_t key = c_.rope.type == RopeType::dynamic ? std::max(seq_len, c_.max_position_embeddings) : 0;
  if (key != rope_len_) {
    rope_ = rope_table(c_, key);
    rope_len_ = key;
  }
  return rope_;
}

void Session::parallel(int64_t tasks, const std::function<void(int64_t)>& fn) {
  if (!pool_ || pool_->size() == 1 || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  pool_->run([&](int tid, int nthreads) {
    for (int64_t t = tid; t < tasks; t += nthreads) fn(t);
  });
}

void Session::forward(std::span<const int32_t> tokens, float* logits, bool all_logits) {
  if (tokens.empty()) return;
  const int64_t total = int64_t(tokens.size());
  if (pos_ + total > capacity_)
    fail("{} tokens at position {} exceed the context of {} tokens (max_position_embeddings {})", total, pos_,
         capacity_, c_.max_position_embeddings);
  for (int32_t t : tokens)
    if (t < 0 || t >= c_.vocab_size) fail("token id {} is outside the vocabulary [0, {})", t, c_.vocab_size);
  const int64_t H = c_.hidden_size;
  rope_for(pos_ + total);
  for (int64_t done = 0; done < total; done += chunk_) {
    const int64_t n = std::min(chunk_, total - done);
    const Dense& emb = m_.weights().embed;
    for (int64_t t = 0; t < n; ++t)
      emb.row_f32(tokens[size_t(done + t)], &x_[size_t(t * H)]);
    for (int64_t li = 0; li < c_.num_layers; ++li) run_layer(li, n, pos_);
    pos_ += n;
    if (logits && all_logits)
      for (int64_t t = 0; t < n; ++t) output_logits(&x_[size_t(t * H)], logits + (done + t) * c_.vocab_size);
    else if (logits && done + n == total)
      output_logits(&x_[size_t((n - 1) * H)], logits);
  }
}

std::vector<float> Session::forward_all(std::span<const int32_t> tokens) {
  std::vector<float> out(tokens.size() * size_t(c_.vocab_size));
  forward(tokens, out.data(), true);
  return out;
}

void Session::output_logits(const float* x, float* logits) {
  const int64_t H = c_.hidden_size;
  std::vector<float> xn(static_cast<size_t>(H));
  rms_norm(x, m_.weights().final_norm.data(), xn.data(), H, c_.rms_norm_eps);
  const Dense& out = m_.weights().output();
  dense_product(out, xn.data(), logits, 1, pool_);
}

void Session::run_layer(int64_t li, int64_t n, int64_t pos0) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t H = c_.hidden_size;
  for (int64_t t = 0; t < n; ++t)
    rms_norm(&x_[size_t(t * H)], l.input_norm.data(), &xn_[size_t(t * H)], H, c_.rms_norm_eps);
  attention(li, n, pos0);
  for (int64_t t = 0; t < n; ++t)
    rms_norm(&x_[size_t(t * H)], l.post_norm.data(), &xn_[size_t(t * H)], H, c_.rms_norm_eps);
  mlp(li, n);
}

void Session::attention(int64_t li, int64_t n, int64_t pos0) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t H = c_.hidden_size, hd = c_.head_dim, nh = c_.num_heads, nkv = c_.num_kv_heads;
  const int64_t qd = c_.q_dim(), kvd = c_.kv_dim();
  dense_product(l.q, xn_.data(), q_.data(), n, pool_);
  dense_product(l.k, xn_.data(), k_.data(), n, pool_);
  dense_product(l.v, xn_.data(), v_.data(), n, pool_);
  const double t0 = now_seconds();
  float* kc = &k_cache_[size_t(li * capacity_ * kvd)];
  float* vc = &v_cache_[size_t(li * capacity_ * kvd)];
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int64_t group = nh / nkv;
  for (int64_t t = 0; t < n; ++t) {
    float* q = &q_[size_t(t * qd)];
    float* k = &k_[size_t(t * kvd)];
    float* v = &v_[size_t(t * kvd)];
    // OLMoE: norm over the whole projection, then clip; Qwen3: norm over each head's head_dim.
    if (c_.qk_norm == QkNorm::whole) {
      rms_norm(q, l.q_norm.data(), q, qd, c_.rms_norm_eps);
      rms_norm(k, l.k_norm.data(), k, kvd, c_.rms_norm_eps);
    } else if (c_.qk_norm == QkNorm::per_head) {
      for (int64_t h = 0; h < nh; ++h) rms_norm(q + h * hd, l.q_norm.data(), q + h * hd, hd, c_.rms_norm_eps);
      for (int64_t h = 0; h < nkv; ++h) rms_norm(k + h * hd, l.k_norm.data(), k + h * hd, hd, c_.rms_norm_eps);
    }
    if (c_.clip_qkv > 0) {
      const float cl = float(c_.clip_qkv);
      for (float* p : {q, k, v}) {
        const int64_t len = p == q ? qd : kvd;
        for (int64_t i = 0; i < len; ++i) p[i] = std::clamp(p[i], -cl, cl);
      }
    }
    const int64_t pos = pos0 + t;
    apply_rope(q, nh, hd, c_.rotary_dim(), pos, rope_);
    apply_rope(k, nkv, hd, c_.rotary_dim(), pos, rope_);
    std::memcpy(kc + pos * kvd, k, size_t(kvd) * 4);
    std::memcpy(vc + pos * kvd, v, size_t(kvd) * 4);
  }
  // Each (token, head) attends to cached positions [first, pos]; heads are independent tasks.
  parallel(n * nh, [&](int64_t task) {
    const int64_t t = task / nh, h = task % nh, pos = pos0 + t, kvh = h / group;
    const int64_t first = c_.sliding_window > 0 ? std::max<int64_t>(0, pos - c_.sliding_window + 1) : 0;
    const float* q = &q_[size_t(t * qd + h * hd)];
    std::vector<float> s(size_t(pos - first + 1));
    for (int64_t j = first; j <= pos; ++j) {
      const float* kj = kc + j * kvd + kvh * hd;
      float d = 0.0f;
      for (int64_t i = 0; i < hd; ++i) d += q[i] * kj[i];
      s[size_t(j - first)] = d * scale;
    }
    softmax(s.data(), int64_t(s.size()));
    float* o = &att_[size_t(t * qd + h * hd)];
    std::fill(o, o + hd, 0.0f);
    for (int64_t j = first; j <= pos; ++j) {
      const float p = s[size_t(j - first)];
      const float* vj = vc + j * kvd + kvh * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] += p * vj[i];
    }
  });
  stats_.attention_s += now_seconds() - t0;
  dense_product(l.o, att_.data(), tmp_.data(), n, pool_);
  for (int64_t i = 0; i < n * H; ++i) x_[size_t(i)] += tmp_[size_t(i)];
}

void Session::mlp(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t H = c_.hidden_size;
  if (!l.moe) {
    const int64_t I = c_.intermediate_size;
    dense_product(l.gate, xn_.data(), h1_.data(), n, pool_);
    dense_product(l.up, xn_.data(), h2_.data(), n, pool_);
    swiglu(h1_.data(), h2_.data(), h1_.data(), n * I);
    dense_product(l.down, h1_.data(), tmp_.data(), n, pool_);
  } else {
    for (int64_t t = 0; t < n; ++t) moe_token(l, &xn_[size_t(t * H)], &tmp_[size_t(t * H)]);
  }
  for (int64_t i = 0; i < n * H; ++i) x_[size_t(i)] += tmp_[size_t(i)];
}

void Session::moe_token(const Layer& l, const float* x, float* out) {
  const int64_t H = c_.hidden_size, I = c_.moe_intermediate_size, E = c_.num_experts, K = c_.top_k;
  std::vector<float> router_logits(static_cast<size_t>(E));
  dense_product(l.router, x, router_logits.data(), 1, pool_);
  const auto chosen = route_top_k(router_logits.data(), E, K, c_.norm_topk_prob);
  const double t0 = now_seconds();
  const ExpertMode mode = m_.weights().expert_mode;
  const ExpertKernels& ks = m_.expert_kernels();
  const bool kernel = mode == ExpertMode::nf4_kernel;
  // Phase 1: gate_up rows of every chosen expert, (expert, row block) tasks. The kernels' activation conversion
  // (int8 / bf16 blocks) happens once for the shared input, not once per task.
  if (kernel) ks.gate_up->prepare(x, H, prep_x_);
  const int64_t nb1 = (2 * I + kExpertRowBlock - 1) / kExpertRowBlock;
  parallel(K * nb1, [&](int64_t task) {
    const int64_t j = task / nb1, b = task % nb1;
    const Expert& e = l.experts[size_t(chosen[size_t(j)].first)];
    expert_rows(e.gate_up, mode, ks.gate_up.get(), x, &moe_h_[size_t(j * 2 * I)], b * kExpertRowBlock,
                std::min(2 * I, (b + 1) * kExpertRowBlock), kernel ? &prep_x_ : nullptr);
  });
  // SwiGLU, and each expert's down-projection input converted once (one task per expert).
  if (prep_act_.size() < size_t(K)) prep_act_.resize(size_t(K));
  parallel(K, [&](int64_t j) {
    swiglu(&moe_h_[size_t(j * 2 * I)], &moe_h_[size_t(j * 2 * I + I)], &moe_act_[size_t(j * I)], I);
    if (kernel) ks.down->prepare(&moe_act_[size_t(j * I)], I, prep_act_[size_t(j)]);
  });
  // Phase 2: down rows.
  const int64_t nb2 = (H + kExpertRowBlock - 1) / kExpertRowBlock;
  parallel(K * nb2, [&](int64_t task) {
    const int64_t j = task / nb2, b = task % nb2;
    const Expert& e = l.experts[size_t(chosen[size_t(j)].first)];
    expert_rows(e.down, mode, ks.down.get(), &moe_act_[size_t(j * I)], &moe_out_[size_t(j * H)],
                b * kExpertRowBlock, std::min(H, (b + 1) * kExpertRowBlock), kernel ? &prep_act_[size_t(j)] : nullptr);
  });
  std::fill(out, out + H, 0.0f);
  for (int64_t j = 0; j < K; ++j) {
    const float w = chosen[size_t(j)].second;
    const float* y = &moe_out_[size_t(j * H)];
    for (int64_t i = 0; i < H; ++i) out[i] += w * y[i];
  }
  stats_.expert_s += now_seconds() - t0;
}

}  // namespace genesis::runtime
