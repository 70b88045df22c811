// A loaded model (config + weights; model.cpp) and a Session: the scratch of a step and the state of one or more
// sequences (SequenceState: position, KV cache of the attention layers, Gated DeltaNet conv and recurrent state), with
// a step that reads top to bottom: norm -> mixer (attention or Gated DeltaNet) -> norm -> router -> experts (or dense
// MLP) -> residual. A step runs a batch of rows: a prompt's tokens in chunks (prefill), one token (decode), or rows
// of several sequences at once (continuous batching: each sequence's rows are consecutive positions of it). Norms,
// dense products and the MoE run over all rows of a step; attention and the delta rule run each sequence's rows
// against its own state. Attention is attention.cpp, Gated DeltaNet deltanet.cpp, the MoE layer moe.cpp (rows grouped
// by expert, so each routed expert's weights are read once per step, whichever sequences its rows belong to).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cpu/thread_pool.h"
#include "runtime/model/config.h"
#include "runtime/model/expert_pack.h"
#include "runtime/model/gpu.h"
#include "runtime/model/ops.h"
#include "runtime/model/profile.h"
#include "runtime/model/stages.h"
#include "runtime/model/weights.h"
#include "runtime/tensor.h"

namespace genesis::runtime {

class GgufFile;

class Model {
 public:
  // Loads DIR/config.json and DIR's safetensors, or a GGUF file when `path` is one (gguf_model.h). Throws
  // genesis::Error naming the file / tensor on bad input.
  static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& opt);
  // From an opened GGUF file (load_model shares it with the tokenizer).
  static std::unique_ptr<Model> from_gguf(std::shared_ptr<const GgufFile> f, const LoadOptions& opt);
  // From any TensorSource (tests build one in memory). `origin` names the config in messages.
  // `gguf`: the file the source reads (the hybrid mode's prefill streams its expert blocks to the GPU), or null.
  static std::unique_ptr<Model> from_source(ModelConfig c, const TensorSource& src, const LoadOptions& opt,
                                            const std::string& origin,
                                            std::shared_ptr<const GgufFile> gguf = nullptr);

  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const ExpertKernels& expert_kernels() const { return kernels_; }  // nf4_kernel mode only
  std::string expert_description() const;  // what serves the experts, for reports
  std::string dense_description() const;   // how the non-expert matrices are held, for reports
  // Bytes one decode step moves: all dense weights + top_k experts per MoE layer + each Gated DeltaNet layer's
  // recurrent state read and written.
  double bytes_per_token() const;
  // Bytes of the top_k routed experts of every MoE layer (what the CPU reads per token in the hybrid mode).
  double expert_bytes_per_token() const;
  // The device copy of the non-expert weights when loaded with LoadOptions::gpu (gpu.h), else null.
  const GpuModel* gpu() const { return gpu_.get(); }
  // The KV cache type its Sessions take unless told otherwise (LoadOptions::kv_cache).
  KvType kv_cache() const { return kv_cache_; }

 private:
  Model(ModelConfig c, Weights w);
  ModelConfig config_;
  KvType kv_cache_ = KvType::f16;
  Weights weights_;
  ExpertKernels kernels_;
  std::shared_ptr<const GpuModel> gpu_;
};

// What one sequence carries from a step to the next, self-contained: its position, the KV cache of its attention
// layers (none for Gated DeltaNet layers), and for each Gated DeltaNet layer the conv state (the last kernel - 1
// conv inputs) and the recurrent state (per value head a [key_head_dim, value_head_dim] fp32 matrix).
struct SequenceState {
  SequenceState() = default;
  // host_kv = false: the attention layers' KV cache lives on the GPU (GpuState), none is allocated here; host_linear
  // = false: so do the Gated DeltaNet layers' conv and recurrent states (conv and recurrent stay empty).
  SequenceState(const ModelConfig& c, int64_t capacity, bool host_kv = true, KvType kv = KvType::f32,
                bool host_linear = true);
  void reset();  // position 0, conv and recurrent states zeroed (KV entries are written before they are read)

  int64_t pos = 0;
  int64_t capacity = 0;     // KV positions
  std::vector<int32_t> slot;  // [layers]: the layer's index among the layers of its mixer's kind
  KvType kv = KvType::f32;
  // [attention layers][kv heads][capacity][head_dim]: k_cache / v_cache with KvType::f32, k_half / v_half (IEEE
  // binary16 bits) with KvType::f16; the other pair stays empty.
  std::vector<float> k_cache, v_cache;
  std::vector<uint16_t> k_half, v_half;
  std::vector<float> conv;              // [linear layers][kernel - 1][conv dim]
  std::vector<float> recurrent;         // [linear layers][value heads][key_head_dim][value_head_dim]
  int64_t kv_per_layer = 0, conv_per_layer = 0, recurrent_per_layer = 0;
  bool in_use = false;  // a slot of the Session's

  float* k_layer(int64_t li) { return &k_cache[size_t(slot[size_t(li)]) * size_t(kv_per_layer)]; }
  float* v_layer(int64_t li) { return &v_cache[size_t(slot[size_t(li)]) * size_t(kv_per_layer)]; }
  uint16_t* k_layer_half(int64_t li) { return &k_half[size_t(slot[size_t(li)]) * size_t(kv_per_layer)]; }
  uint16_t* v_layer_half(int64_t li) { return &v_half[size_t(slot[size_t(li)]) * size_t(kv_per_layer)]; }
  float* conv_layer(int64_t li) { return &conv[size_t(slot[size_t(li)]) * size_t(conv_per_layer)]; }
  float* recurrent_layer(int64_t li) { return &recurrent[size_t(slot[size_t(li)]) * size_t(recurrent_per_layer)]; }
};

// The rows of one sequence within a step: `tokens` at positions position(seq).. of sequence `seq`.
struct SequenceRows {
  int32_t seq = 0;
  std::span<const int32_t> tokens;
  float* logits = nullptr;  // the last row's logits (vocab floats), or every row's with all_logits; null: none
  bool all_logits = false;
};

class Session {
 public:
  // context: the KV cache's capacity in tokens (<= 0: min(max_position_embeddings, kDefaultContext), so that a
  // config claiming millions of positions does not size gigabytes of cache). pool may be null.
  // kv: the KV cache's element type (unset: the model's, LoadOptions::kv_cache).
  static constexpr int64_t kDefaultContext = 4096;
  Session(const Model& m, int64_t context, cpu::ThreadPool* pool, std::optional<KvType> kv = std::nullopt);

  int64_t position() const { return position(0); }
  int64_t context() const { return capacity_; }
  KvType kv_type() const { return kv_; }
  void reset() { reset(0); }
  const SequenceState& state(int32_t seq = 0) const { return this->seq(seq); }

  // Sequences (slots): add_sequence() returns a free slot (reusing a removed one's memory) starting at position 0;
  // remove_sequence() frees it. Ids are small integers; a bad id is a genesis::Error.
  int32_t add_sequence();
  void remove_sequence(int32_t seq);
  void reset(int32_t seq);
  int64_t position(int32_t seq) const;
  int64_t sequences_in_use() const;

  // One step over rows of several sequences (each at most once, at most chunk() rows in all): every sequence's
  // tokens run at its next positions and its logits are written as asked. The same results as stepping each
  // sequence alone, up to the order of float sums. Throws genesis::Error (before changing any state) for a bad
  // sequence, a token outside the vocabulary, too many rows, or a sequence whose context would overflow.
  // Dynamic rope past max_position_embeddings scales by the longest sequence of the step (transformers scales by the
  // longest position of a call), so only there a sequence's logits depend on its companions.
  void step(std::span<const SequenceRows> batch);

  // Gated DeltaNet prefill: the delta rule over a step's rows in the chunked form (chunks of kDeltaChunk rows: the
  // within-chunk part as small matrix products; default) or token by token as decode runs it. Same result up to fp32
  // summation order; tests compare the two.
  static constexpr int64_t kDeltaChunk = 64;
  void set_chunked_delta(bool on) { chunked_delta_ = on; }
  // Decode layers as one region of stages (run_layer_staged) or a region per product and attention: the same bits
  // either way (tests compare the two). By default stages from kStagedThreads threads (GENESIS_STAGES=1 always, 0
  // never): on 2 cores, where a region costs 0.22 us, the two measured alike (the 8-stream SmolLM2 step 15.5-15.9
  // against 15.5-15.6 ms); on the 16-core host a region costs about 2 us, 151 of them a SmolLM2 token.
  void set_staged(bool on) { staged_ = on ? 1 : 0; }
  static constexpr int kStagedThreads = 8;

  // Runs tokens at positions position()..; writes the last token's logits (vocab floats) when logits != null, or
  // every token's (tokens.size() x vocab) when all_logits. Throws genesis::Error for a token id outside the
  // vocabulary or when the context would overflow.
  void forward(std::span<const int32_t> tokens, float* logits, bool all_logits = false);
  // Logits of every token (tokens.size() x vocab), for checks against a reference.
  std::vector<float> forward_all(std::span<const int32_t> tokens);
  int64_t vocab_size() const { return c_.vocab_size; }

  // Time per op class since the session was made (profile.h); callers take differences around what they time.
  const Profile& profile() const { return prof_; }
  // How often each routed expert was chosen since the session was made: [layer * experts + expert] (zeros for
  // dense layers; empty for a dense model). Written to an --expert-usage file (expert_usage.h).
  const std::vector<uint64_t>& expert_usage() const { return expert_use_; }
  // Rows run through a layer together in prefill (at most; the last chunk of a prompt may be shorter).
  int64_t chunk() const { return chunk_; }

 private:
  SequenceState& seq(int32_t id);
  const SequenceState& seq(int32_t id) const;
  void run_layer(int64_t li, int64_t n);
  void attention(int64_t li, int64_t n);  // attention.cpp
  // attention.cpp, its parts: row t's QK norm, rope and KV append; the plan of a step's attention (att_blocks_,
  // att_rows_, att_spans_; it reads only the segments, not q, k or v); a decode task (row, KV head, span) with the
  // merge of its (row, KV head) when it is the last; how many such tasks there are.
  void attention_row(int64_t li, int64_t t);
  void attention_plan(int64_t li);
  void attention_span(int64_t task);
  int64_t attention_span_tasks() const { return int64_t(att_rows_.size()) * c_.num_kv_heads * att_spans_; }
  // A decode layer (rows of fewer than 16 per sequence, attention mixer, a pool of several threads) as one region of
  // stages (stages.h): q/k/v, the rows' preparation, attention, o, the residual add and norm, and a dense MLP's
  // gate+up and down with the last residual add and the next layer's norm (a MoE layer's experts keep their regions
  // after it; its router product is a stage). The same bits as run_layer's separate regions. When: set_staged().
  bool staged_layer(int64_t li, int64_t n) const;
  static int stages_setting();  // GENESIS_STAGES: 1, 0, or -1 (unset: by the pool's size)
  void run_layer_staged(int64_t li, int64_t n);
  void residual_norm_row(int64_t t, const float* norm);  // add_residual_norm's row t
  void deltanet(int64_t li, int64_t n);   // deltanet.cpp
  // deltanet.cpp: one value head's state over rows [row0, row0 + n) of one sequence.
  // qs, ks: the head's L2-normalized q and k of rows row0.. (row stride key_head_dim).
  void delta_rule_recurrent(float* S, int64_t h, int64_t row0, int64_t n, const float* qs, const float* ks);
  void delta_rule_chunked(float* S, int64_t h, int64_t row0, int64_t n, const float* qs, const float* ks);
  // moe.cpp, Qwen3-Next's shared expert before the routed experts' region: each row's gate (shared_gate_), SwiGLU of
  // its gate and up products (shared_h1_, from the router's region) and the down input prepared (shared_act_).
  void shared_expert_input(const Layer& l, int64_t n);
  void mlp(int64_t li, int64_t n);  // xn_ rows -> tmp_ rows (the residual add is run_layer's)
  // x_ += tmp_ row by row, then xn_ = rms_norm(x_, norm) in the same pass (the next sublayer's input; none for a
  // null norm): one region where a batched step had two (on 16 threads a region costs more than 8 rows of either).
  void add_residual_norm(int64_t n, const float* norm);
  // gpu_step.cpp: the step of the hybrid mode (the same rows and results as the CPU step's, up to float rounding).
  void gpu_step(std::span<const SequenceRows> batch, int64_t total, int64_t longest);
  void moe(const Layer& l, int64_t n);  // moe.cpp: xn_ rows -> tmp_ rows
  // moe.cpp: the part after the router product: top-k of router_logits_ rows, and the experts of ranks
  // [rank0, rank1) of each row's top-k (all: 0, top_k) over xn_, their weighted sum -> dst [n][hidden].
  // shared: the layer's shared expert joins (its down product's tasks in the experts' region, its output scaled by
  // sigmoid(shared_gate_) added to each row's sum after the routed experts); shared_expert_input() ran before.
  void routed_experts(const Layer& l, int64_t n, int64_t rank0, int64_t rank1, float* dst, bool shared = false);
  // moe.cpp: its routing part: the (row, expert) pairs of those ranks sorted by expert: pair_row_, pair_weight_,
  // row_pairs_ ([rows][ranks] -> pair) and expert_start_ ([experts + 1]); counts the choices of layer `li`.
  void route_pairs(int64_t li, int64_t n, int64_t rank0, int64_t rank1);
  // moe.cpp: the products of the routed pairs (route_pairs' K = rank1 - rank0 ranks) on the CPU, their weighted sum
  // -> dst; pairs with pair_elsewhere_[p] >= 0 (run by the GPU) are left out of both.
  void cpu_experts(const Layer& l, int64_t n, int64_t K, float* dst, bool shared = false);
  void output_rows(std::span<const std::pair<int64_t, float*>> rows);  // (row of x_, destination) pairs
  const RopeTable& rope_for(int64_t seq_len);
  template <class F>
  void parallel_for(int64_t tasks, F&& fn);
  // fn(row) for rows [0, n): element-wise work per row (norms, rope, residual adds). From kParallelRows rows (a
  // prefill chunk, or a batched decode step of several sequences) the rows are spread over the pool (one region);
  // fewer run on the caller (a region would cost more than the work). On the H200 host's 16 threads the SmolLM2-shaped
  // 8-row decode step spent 1.29 of its 5.92 ms in element-wise work on the caller alone (1 row: 0.19 of 1.88).
  template <class F>
  void for_rows(int64_t n, F&& fn);
  static constexpr int64_t kParallelRows = 4;

  const Model& m_;
  const ModelConfig& c_;
  cpu::ThreadPool* pool_;
  int64_t capacity_ = 0;
  KvType kv_ = KvType::f16;
  std::vector<SequenceState> seqs_;
  // The step's rows: a segment is the consecutive rows of one sequence (first row, rows, first position).
  struct Segment {
    int32_t seq;
    int64_t row0, n, pos0;
  };
  std::vector<Segment> segs_;
  std::vector<float> logit_x_, logit_y_;  // output rows gathered for one product: [16][hidden], [16][vocab]
  // Scratch for up to `chunk_` tokens at once.
  int64_t chunk_ = 0;
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, h1_, h2_;
  std::vector<float> att_part_;  // decode attention: per (row, KV head, span, head) max, sum and weighted values
  // A sequence's cache of one layer, fp32 or binary16 (the other pair null).
  struct AttCache {
    const float *kc, *vc;
    const uint16_t *kh, *vh;
  };
  struct AttBlock {
    int64_t t0, t1, pos0;  // rows [t0, t1) at positions pos0..
    AttCache c;
  };
  struct AttRow {
    int64_t t, pos;
    AttCache c;
  };
  std::vector<AttBlock> att_blocks_;  // attention_plan(): prefill blocks
  std::vector<AttRow> att_rows_;      // attention_plan(): decode rows
  int64_t att_spans_ = 0;             // attention_plan(): spans per (decode row, KV head)
  Stages stages_;                     // run_layer_staged()
  std::vector<float> qg_, gate_;  // gated attention: q_proj's rows (query and gate per head), the gates
  // Gated DeltaNet scratch: projections, conv window and output, per (row, value head) q, k, v, beta, decay, output.
  std::vector<float> qkvz_, ba_, conv_in_, conv_out_, z_, beta_, decay_, core_;
  bool chunked_delta_ = true;
  int staged_ = stages_setting();  // 1 stages, 0 regions, -1 by the pool's size
  std::vector<float> shared_h1_, shared_h2_, shared_out_, shared_gate_;  // moe_shared
  RopeTable rope_;
  int64_t rope_len_ = -1;
  std::vector<float> rope_cs_;  // [rows of the step][rotary_dim]: each row's cosines, then sines (rope_cos_sin)

  // MoE scratch (moe.cpp). A pair is one (row, chosen expert); pairs are sorted by expert, and a unit is up to
  // unit_rows_ consecutive pairs of one expert that share one pass over its weights.
  static constexpr int32_t kMaxUnitRows = kernels::nf4_gemv::kMaxTokens;  // rows sharing one pass over an expert
  // Where AMX tiles serve the many-row products (kernels/amx), an expert's rows of a step stay one unit (up to this
  // many): its weights are widened to bf16 once for all of them.
  static constexpr int32_t kAmxUnitRows = 256;
  int32_t unit_rows_ = kMaxUnitRows;
  struct MoeUnit {
    int32_t expert, p0, rows;
  };
  std::vector<float> router_logits_;                     // [rows][experts]
  std::vector<int32_t> pair_row_, row_pairs_;            // [pairs] -> row; [rows][top_k] -> pair
  std::vector<float> pair_weight_;                       // [pairs]
  std::vector<int32_t> expert_start_, next_pair_, chosen_e_;  // counting sort of the pairs by expert
  std::vector<float> chosen_w_;
  std::vector<int32_t> pair_elsewhere_;  // [pairs]: >= 0 where the GPU runs the pair (empty: the CPU runs all)
  std::vector<uint64_t> expert_use_;     // [layers][experts]: times chosen
  std::vector<MoeUnit> units_;
  std::vector<float> moe_x_, moe_h_, moe_act_, moe_out_;  // [pairs][hidden], [pairs][2 inter], [pairs][inter], [pairs][hidden]
  // Prepared activations of a unit's x and of its down input (kernels/linear.h), kept across steps; unit_prep_[u] is
  // the unit whose prepared x unit u reads (decode shares one conversion among units of one activation kind).
  struct UnitActivations {
    std::string kind;
    std::unique_ptr<kernels::LinearActivations> a;
  };
  std::vector<UnitActivations> prep_x_, prep_act_;  // [units]
  UnitActivations shared_act_;                      // the shared expert's down input (moe_shared)
  std::vector<int32_t> unit_prep_;                  // [units]
  std::unique_ptr<std::atomic<int32_t>[]> unit_left_;    // [units] gate_up row blocks not yet done
  std::unique_ptr<std::atomic<int32_t>[]> down_ready_;   // [units] 1 once the unit's down input is prepared
  std::unique_ptr<std::atomic<int32_t>[]> col_left_;     // [down column blocks] units whose block is not yet done
  size_t col_left_size_ = 0;
  size_t unit_left_size_ = 0;
  std::unique_ptr<std::atomic<int32_t>[]> span_left_;    // [decode rows x KV heads] attention spans not yet done
  size_t span_left_size_ = 0;
  std::unique_ptr<std::atomic<int32_t>[]> row_ready_;  // [rows] a batched decode step's attention inputs prepared
  size_t row_ready_size_ = 0;
  std::unique_ptr<std::atomic<int32_t>[]> group_left_;   // [segments x key heads] Gated DeltaNet value heads not yet done
  size_t group_left_size_ = 0;

  Profile prof_;
  ProfileClock clock_;
  std::unique_ptr<GpuState, GpuStateDeleter> gpu_;  // the hybrid mode's device side, when the model has one
};

template <class F>
void Session::parallel_for(int64_t tasks, F&& fn) {
  if (pool_) {
    pool_->parallel_for(tasks, fn);
    return;
  }
  for (int64_t t = 0; t < tasks; ++t) fn(t);
}

template <class F>
void Session::for_rows(int64_t n, F&& fn) {
  if (n >= kParallelRows) {
    parallel_for(n, fn);
    return;
  }
  for (int64_t t = 0; t < n; ++t) fn(t);
}

}  // namespace genesis::runtime
