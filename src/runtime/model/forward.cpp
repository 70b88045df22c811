// The step over a Session's sequences: embedding, the layers (attention.cpp or deltanet.cpp; moe.cpp or the dense
// MLP), the output.
// Sequences (slots) are added and removed between steps; a step's rows are segments, one per sequence.
// Dense products go through dense.h; every op ends with a lap of the profile clock (profile.h).
#include "runtime/model/forward.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
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

SequenceState::SequenceState(const ModelConfig& c, int64_t cap, bool host_kv, KvType t, bool host_linear)
    : capacity(cap), kv(t) {
  slot.resize(size_t(c.num_layers));
  int32_t attn = 0, lin = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    slot[size_t(l)] = c.layers[size_t(l)].mixer == MixerKind::gated_deltanet ? lin++ : attn++;
  kv_per_layer = host_kv ? capacity * c.kv_dim() : 0;
  const size_t kv_size = size_t(kv_per_layer) * size_t(attn);
  if (kv == KvType::f16) {
    k_half.assign(kv_size, 0);
    v_half.assign(kv_size, 0);
  } else {
    k_cache.assign(kv_size, 0.0f);
    v_cache.assign(kv_size, 0.0f);
  }
  if (lin > 0 && host_linear) {
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

Session::Session(const Model& m, int64_t context, cpu::ThreadPool* pool, std::optional<KvType> kv)
    : m_(m), c_(m.config()), pool_(pool), kv_(kv.value_or(m.kv_cache())), clock_(prof_, pool) {
  use_blas_single_threaded();
  capacity_ = context > 0 ? context : std::min(c_.max_position_embeddings, kDefaultContext);
  // The hybrid mode's prefill streams each layer's experts to the GPU once per step, and AMX tiles widen a matrix's
  // weights to bf16 once per product (an expert's: once per unit of rows): longer steps read them for more rows
  // (llama.cpp's default batch is 512 too). Only where the model's matrices take the tiles (kq_gemv on AMX).
  bool expert_tiles = false, dense_tiles = false;
  for (const Layer& l : m.weights().layers) {
    if (!l.experts.empty() && l.experts[0].gate_up.op) expert_tiles |= l.experts[0].gate_up.op->tile_rows() > 0;
    for (const Dense* d : {&l.q, &l.o, &l.in_qkvz, &l.in_qkv, &l.out_proj, &l.gate})
      if (d->op) dense_tiles |= d->op->tile_rows() > 0;
  }
  chunk_ = m.gpu() || expert_tiles || dense_tiles ? 2 * kMaxChunk : kMaxChunk;
  unit_rows_ = expert_tiles ? kAmxUnitRows : kMaxUnitRows;
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
  if (m.gpu()) {
    gpu_ = make_gpu_state(*m.gpu(), c_, capacity_, chunk_);
    // Workers stay awake through the GPU's part of a layer (~0.1 ms) instead of sleeping and paying a wake-up at
    // every layer's experts; they still sleep 0.5 ms after a step ends.
    constexpr long kHybridSpinNs = 500'000;
    if (pool_ && pool_->spin_ns() > 0 && pool_->spin_ns() < kHybridSpinNs) pool_->set_spin_ns(kHybridSpinNs);
  }
  if (add_sequence() != 0) fail("Session: sequence 0 was not the first slot");
}

int32_t Session::add_sequence() {
  size_t id = 0;
  while (id < seqs_.size() && seqs_[id].in_use) ++id;
  if (id == seqs_.size()) seqs_.emplace_back();
  SequenceState& s = seqs_[id];
  if (s.capacity != capacity_ || s.slot.empty())
    s = SequenceState(c_, capacity_, m_.gpu() == nullptr, kv_, !(m_.gpu() && gpu_holds_deltanet(*m_.gpu())));
  s.reset();
  if (gpu_) gpu_reserve_sequence(*gpu_, int32_t(id));
  s.in_use = true;
  return int32_t(id);
}

SequenceState& Session::seq(int32_t id) {
  if (id < 0 || size_t(id) >= seqs_.size() || !seqs_[size_t(id)].in_use)
    fail("sequence {} is not one of this session's ({} slots)", id, seqs_.size());
  return seqs_[size_t(id)];
}

const SequenceState& Session::seq(int32_t id) const { return const_cast<Session*>(this)->seq(id); }

void Session::remove_sequence(int32_t id) { seq(id).in_use = false; }
void Session::reset(int32_t id) { seq(id).reset(); }
int64_t Session::position(int32_t id) const { return seq(id).pos; }

int64_t Session::sequences_in_use() const {
  return std::count_if(seqs_.begin(), seqs_.end(), [](const SequenceState& s) { return s.in_use; });
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
  const int64_t total = int64_t(tokens.size());
  const SequenceState& s = seq(0);
  if (s.pos + total > capacity_)
    fail("{} tokens at position {} exceed the context of {} tokens (max_position_embeddings {})", total, s.pos,
         capacity_, c_.max_position_embeddings);
  for (int32_t t : tokens)
    if (t < 0 || t >= c_.vocab_size) fail("token id {} is outside the vocabulary [0, {})", t, c_.vocab_size);
  for (int64_t done = 0; done < total; done += chunk_) {
    const int64_t n = std::min(chunk_, total - done);
    SequenceRows r{0, tokens.subspan(size_t(done), size_t(n)), nullptr, false};
    if (logits && all_logits) {
      r.logits = logits + done * c_.vocab_size;
      r.all_logits = true;
    } else if (logits && done + n == total) {
      r.logits = logits;
    }
    step({&r, 1});
  }
}

void Session::step(std::span<const SequenceRows> batch) {
  // Check everything before any state changes.
  int64_t total = 0, longest = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceRows& b = batch[i];
    const SequenceState& s = seq(b.seq);
    for (size_t j = 0; j < i; ++j)
      if (batch[j].seq == b.seq) fail("sequence {} appears twice in one step", b.seq);
    const int64_t n = int64_t(b.tokens.size());
    if (s.pos + n > capacity_)
      fail("{} tokens at position {} exceed the context of {} tokens (max_position_embeddings {})", n, s.pos,
           capacity_, c_.max_position_embeddings);
    for (int32_t t : b.tokens)
      if (t < 0 || t >= c_.vocab_size) fail("token id {} is outside the vocabulary [0, {})", t, c_.vocab_size);
    total += n;
    longest = std::max(longest, s.pos + n);
  }
  if (total > chunk_) fail("a step of {} rows exceeds the session's {} rows per step", total, chunk_);
  if (total == 0) return;
  if (gpu_) {
    gpu_step(batch, total, longest);
    return;
  }
  const int64_t H = c_.hidden_size;
  clock_.start();
  rope_for(longest);
  segs_.clear();
  int64_t row = 0;
  for (const SequenceRows& b : batch) {
    if (b.tokens.empty()) continue;
    segs_.push_back({b.seq, row, int64_t(b.tokens.size()), seq(b.seq).pos});
    const Dense& emb = m_.weights().embed;
    for (int32_t t : b.tokens) emb.row_f32(t, &x_[size_t(row++ * H)]);
  }
  // Each row's rotary angles, once per step for all the attention layers.
  if (c_.layers_of(MixerKind::attention) + c_.layers_of(MixerKind::gated_attention) > 0) {
    const int64_t rd = c_.rotary_dim();
    if (rope_cs_.size() < size_t(total * rd)) rope_cs_.resize(size_t(chunk_ * rd));
    for_rows(total, [&](int64_t t) {
      const Segment* sg = &segs_.front();
      while (t >= sg->row0 + sg->n) ++sg;  // segments are in row order
      rope_cos_sin(sg->pos0 + (t - sg->row0), rd, rope_, &rope_cs_[size_t(t * rd)]);
    });
  }
  clock_.lap(Op::elementwise);
  for (int64_t li = 0; li < c_.num_layers; ++li) run_layer(li, total);
  std::vector<std::pair<int64_t, float*>> out;
  row = 0;
  for (const SequenceRows& b : batch) {
    const int64_t n = int64_t(b.tokens.size());
    if (n == 0) continue;
    seqs_[size_t(b.seq)].pos += n;
    if (b.logits && b.all_logits)
      for (int64_t t = 0; t < n; ++t) out.emplace_back(row + t, b.logits + t * c_.vocab_size);
    else if (b.logits)
      out.emplace_back(row + n - 1, b.logits);
    row += n;
  }
  output_rows(out);
  clock_.lap(Op::logits);
  prof_.tokens += total;
  ++prof_.steps;
}

std::vector<float> Session::forward_all(std::span<const int32_t> tokens) {
  std::vector<float> out(tokens.size() * size_t(c_.vocab_size));
  forward(tokens, out.data(), true);
  return out;
}

void Session::output_rows(std::span<const std::pair<int64_t, float*>> rows) {
  // Up to 16 rows per product, so the output matrix is read once for all of them (decode of several sequences).
  constexpr size_t kGroup = 16;
  const int64_t H = c_.hidden_size, V = c_.vocab_size;
  const Dense& out = m_.weights().output();
  for (size_t g0 = 0; g0 < rows.size(); g0 += kGroup) {
    const size_t g = std::min(kGroup, rows.size() - g0);
    if (logit_x_.size() < g * size_t(H)) logit_x_.resize(kGroup * size_t(H));
    for (size_t i = 0; i < g; ++i)
      rms_norm(&x_[size_t(rows[g0 + i].first * H)], m_.weights().final_norm.data(), &logit_x_[i * size_t(H)], H,
               c_.rms_norm_eps);
    // Destinations one after the other (every row's logits) take the product directly.
    bool contiguous = true;
    for (size_t i = 1; i < g; ++i) contiguous &= rows[g0 + i].second == rows[g0].second + int64_t(i) * V;
    if (contiguous) {
      dense_product(out, logit_x_.data(), rows[g0].second, int64_t(g), pool_);
      continue;
    }
    if (logit_y_.size() < g * size_t(V)) logit_y_.resize(kGroup * size_t(V));
    dense_product(out, logit_x_.data(), logit_y_.data(), int64_t(g), pool_);
    for (size_t i = 0; i < g; ++i)
      std::memcpy(rows[g0 + i].second, &logit_y_[i * size_t(V)], size_t(V) * sizeof(float));
  }
}

void Session::run_layer(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t H = c_.hidden_size;
  if (li == 0) {  // later layers' input norms ran with the residual add before them
    for_rows(n, [&](int64_t t) {
      rms_norm(&x_[size_t(t * H)], l.input_norm.data(), &xn_[size_t(t * H)], H, c_.rms_norm_eps);
    });
    clock_.lap(Op::elementwise);
  }
  if (staged_layer(li, n)) return run_layer_staged(li, n);
  switch (c_.layers[size_t(li)].mixer) {
    case MixerKind::attention:
    case MixerKind::gated_attention: attention(li, n); break;
    case MixerKind::gated_deltanet: deltanet(li, n); break;
  }
  add_residual_norm(n, l.post_norm.data());
  mlp(li, n);
  add_residual_norm(n, li + 1 < c_.num_layers ? m_.weights().layers[size_t(li + 1)].input_norm.data() : nullptr);
}

void Session::residual_norm_row(int64_t t, const float* norm) {
  const int64_t H = c_.hidden_size;
  float* x = &x_[size_t(t * H)];
  const float* d = &tmp_[size_t(t * H)];
  for (int64_t i = 0; i < H; ++i) x[i] += d[i];
  if (norm) rms_norm(x, norm, &xn_[size_t(t * H)], H, c_.rms_norm_eps);
}

void Session::add_residual_norm(int64_t n, const float* norm) {
  for_rows(n, [&](int64_t t) { residual_norm_row(t, norm); });
  clock_.lap(Op::elementwise);
}

int Session::stages_setting() {
  static const int on = [] {
    const char* e = std::getenv("GENESIS_STAGES");
    return e ? (std::string(e) == "0" ? 0 : 1) : -1;
  }();
  return on;
}

bool Session::staged_layer(int64_t li, int64_t n) const {
  if (!pool_ || pool_->size() < 2 || n >= kernels::kGemmRows) return false;
  if (staged_ == 0 || (staged_ < 0 && pool_->size() < kStagedThreads)) return false;
  // gated attention and Gated DeltaNet keep their regions; fewer than 16 rows in all: every segment takes the
  // attention's decode path (att_rows_)
  return c_.layers[size_t(li)].mixer == MixerKind::attention;
}

void Session::run_layer_staged(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int nt = pool_->size();
  Stages& st = stages_;
  st.clear();  // stages a throw left behind (their functions are gone)
  // q, k, v over xn_ (ready: its activations prepared on the caller, as dense_products does)
  const DenseJob qkv[] = {{&l.q, q_.data()}, {&l.k, k_.data()}, {&l.v, v_.data()}};
  DenseStage qkv_st(qkv, xn_.data(), n, nt);
  qkv_st.shape();
  qkv_st.add_to(st, Op::dense);
  // each row's QK norm, rope and KV append, then the (row, KV head, span) tasks; o's activations shaped after them
  attention_plan(li);
  // fewer than kGemmRows rows: no segment reaches attention's GEMM blocks (att_blocks_), which no stage runs
  if (!att_blocks_.empty()) fail("run_layer_staged: a segment of {} rows takes attention's GEMM path", n);
  auto row = [&](int64_t t) { attention_row(li, t); };
  st.add(Op::attention, n, row);
  const DenseJob o[] = {{&l.o, tmp_.data()}};
  DenseStage o_st(o, att_.data(), n, nt);
  auto span = [&](int64_t k) { attention_span(k); };
  auto o_shape = [&] { o_st.shape(); };
  st.add(Op::attention, attention_span_tasks(), span, o_shape);
  o_st.add_to(st, Op::dense);
  // the residual add and the MLP's norm
  auto post = [&](int64_t t) { residual_norm_row(t, l.post_norm.data()); };
  const float* next = li + 1 < c_.num_layers ? m_.weights().layers[size_t(li + 1)].input_norm.data() : nullptr;
  if (c_.layers[size_t(li)].mlp == MlpKind::moe) {  // the router's product in the region too; the experts after it
    const int64_t E = c_.num_experts;
    if (router_logits_.size() < size_t(n * E)) router_logits_.resize(size_t(n * E));
    const DenseJob router[] = {{&l.router, router_logits_.data()}};
    DenseStage router_st(router, xn_.data(), n, nt);
    auto router_shape = [&] { router_st.shape(); };
    st.add(Op::elementwise, n, post, router_shape);
    router_st.add_to(st, Op::router);
    st.run(pool_, clock_);
    routed_experts(l, n, 0, c_.top_k, tmp_.data());
    add_residual_norm(n, next);
    return;
  }
  if (c_.layers[size_t(li)].mlp != MlpKind::dense) {  // Qwen3-Next's shared expert: moe() as it is
    st.add(Op::elementwise, n, post);
    st.run(pool_, clock_);
    mlp(li, n);
    add_residual_norm(n, next);
    return;
  }
  DenseStage gate_up(l.gate, l.up, xn_.data(), h1_.data(), h2_.data(), n, nt);
  auto gate_up_shape = [&] { gate_up.shape(); };
  st.add(Op::elementwise, n, post, gate_up_shape);
  const DenseJob down[] = {{&l.down, tmp_.data()}};
  DenseStage down_st(down, h1_.data(), n, nt);
  auto down_shape = [&] { down_st.shape(); };
  gate_up.add_to(st, Op::dense, down_shape);
  down_st.add_to(st, Op::dense);
  auto last = [&](int64_t t) { residual_norm_row(t, next); };
  st.add(Op::elementwise, n, last);
  st.run(pool_, clock_);
}

void Session::mlp(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  if (c_.layers[size_t(li)].mlp == MlpKind::dense) {
    dense_swiglu(l.gate, l.up, xn_.data(), h1_.data(), h2_.data(), n, pool_);  // SwiGLU in the products' region
    clock_.lap(Op::dense);
    dense_product(l.down, h1_.data(), tmp_.data(), n, pool_);
    clock_.lap(Op::dense);
  } else {
    moe(l, n);
  }
}

}  // namespace genesis::runtime
