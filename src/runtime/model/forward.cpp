// The step over a Session's sequence state: embedding, the layers (attention.cpp or deltanet.cpp; moe.cpp or the
// dense MLP), the output.
// Dense products go through dense.h; every op ends with a lap of the profile clock (profile.h).
#include "runtime/model/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "runtime/model/dense.h"

namespace genesis::runtime {

namespace {
// Prompt rows run through a layer together. Larger chunks read each routed expert's weights for more rows (256
// rows x top-8 of 128 experts: 16 rows per expert on average, one 16-row kernel pass) at the price of scratch.
constexpr int64_t kMaxChunk = 256;
}  // namespace

SequenceState::SequenceState(const ModelConfig& c, int64_t cap) : capacity(cap) {
  slot.resize(size_t(c.num_layers));
  int32_t attn = 0, lin = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    slot[size_t(l)] = c.layers[size_t(l)].mixer == MixerKind::gated_deltanet ? lin++ : attn++;
  kv_per_layer = capacity * c.kv_dim();
  k_cache.assign(size_t(kv_per_layer) * size_t(attn), 0.0f);
  v_cache.assign(size_t(kv_per_layer) * size_t(attn), 0.0f);
  if (lin > 0) {
    conv_per_layer = (c.linear_conv_kernel - 1) * c.linear_conv_dim();
    recurrent_per_layer = c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim;
    conv.assign(size_t(conv_per_layer) * size_t(lin), 0.0f);
    recurrent.assign(size_t(recurrent_per_layer) * size_t(lin), 0.0f);
  }
}

void SequenceState::reset() {
  pos = 0;
  std::fill(conv.begin(), conv.end(), 0.0f);
  std::fill(recurrent.begin(), recurrent.end(), 0.0f);
}

Session::Session(const Model& m, int64_t context, cpu::ThreadPool* pool)
    : m_(m), c_(m.config()), pool_(pool), clock_(prof_, pool) {
  use_blas_single_threaded();
  seq_ = SequenceState(c_, context > 0 ? context : std::min(c_.max_position_embeddings, kDefaultContext));
  chunk_ = kMaxChunk;
  const size_t n = size_t(chunk_);
  // A MoE config's dense intermediate_size sizes nothing when no layer is dense (no tensor checked it).
  const bool any_dense = c_.moe_layers() < c_.num_layers;
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

void Session::forward(std::span<const int32_t> tokens, float* logits, bool all_logits) {
  if (tokens.empty()) return;
  const int64_t total = int64_t(tokens.size());
  if (seq_.pos + total > seq_.capacity)
    fail("{} tokens at position {} exceed the context of {} tokens (max_position_embeddings {})", total, seq_.pos,
         seq_.capacity, c_.max_position_embeddings);
  for (int32_t t : tokens)
    if (t < 0 || t >= c_.vocab_size) fail("token id {} is outside the vocabulary [0, {})", t, c_.vocab_size);
  const int64_t H = c_.hidden_size;
  clock_.start();
  rope_for(seq_.pos + total);
  for (int64_t done = 0; done < total; done += chunk_) {
    const int64_t n = std::min(chunk_, total - done);
    const Dense& emb = m_.weights().embed;
    for (int64_t t = 0; t < n; ++t)
      emb.row_f32(tokens[size_t(done + t)], &x_[size_t(t * H)]);
    clock_.lap(Op::elementwise);
    for (int64_t li = 0; li < c_.num_layers; ++li) run_layer(li, n, seq_.pos);
    seq_.pos += n;
    if (logits && all_logits)
      for (int64_t t = 0; t < n; ++t) output_logits(&x_[size_t(t * H)], logits + (done + t) * c_.vocab_size);
    else if (logits && done + n == total)
      output_logits(&x_[size_t((n - 1) * H)], logits);
    clock_.lap(Op::logits);
  }
  prof_.tokens += total;
  ++prof_.steps;
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
  clock_.lap(Op::elementwise);
  switch (c_.layers[size_t(li)].mixer) {
    case MixerKind::attention:
    case MixerKind::gated_attention: attention(li, n, pos0); break;
    case MixerKind::gated_deltanet: deltanet(li, n); break;
  }
  for (int64_t t = 0; t < n; ++t)
    rms_norm(&x_[size_t(t * H)], l.post_norm.data(), &xn_[size_t(t * H)], H, c_.rms_norm_eps);
  clock_.lap(Op::elementwise);
  mlp(li, n);
}

void Session::mlp(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t H = c_.hidden_size;
  if (c_.layers[size_t(li)].mlp == MlpKind::dense) {
    const int64_t I = c_.intermediate_size;
    const DenseJob gate_up[] = {{&l.gate, h1_.data()}, {&l.up, h2_.data()}};
    dense_products(gate_up, xn_.data(), n, pool_);
    clock_.lap(Op::dense);
    swiglu(h1_.data(), h2_.data(), h1_.data(), n * I);
    clock_.lap(Op::elementwise);
    dense_product(l.down, h1_.data(), tmp_.data(), n, pool_);
    clock_.lap(Op::dense);
  } else {
    moe(l, n);
    if (c_.layers[size_t(li)].mlp == MlpKind::moe_shared) shared_expert(l, n);
  }
  for (int64_t i = 0; i < n * H; ++i) x_[size_t(i)] += tmp_[size_t(i)];
  clock_.lap(Op::elementwise);
}

}  // namespace genesis::runtime
