// A loaded model (config + weights) and a Session: the KV cache and scratch of one sequence, with forward() that
// reads top to bottom: norm -> attention -> norm -> router -> experts (or dense MLP) -> residual.
// Prefill runs the prompt's tokens through each layer together (dense products as matrix-matrix), decode one token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/model/config.h"
#include "runtime/model/expert_pack.h"
#include "runtime/model/ops.h"
#include "runtime/model/weights.h"
#include "runtime/tensor.h"

namespace genesis::cpu {
class ThreadPool;
}

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
  static std::unique_ptr<Model> from_source(ModelConfig c, const TensorSource& src, const LoadOptions& opt,
                                            const std::string& origin);

  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const ExpertKernels& expert_kernels() const { return kernels_; }  // nf4_kernel mode only
  std::string expert_description() const;  // what serves the experts, for reports
  std::string dense_description() const;   // how the non-expert matrices are held, for reports
  // Bytes of weights one decode step reads: all dense weights + top_k experts per MoE layer.
  double bytes_per_token() const;

 private:
  Model(ModelConfig c, Weights w);
  ModelConfig config_;
  Weights weights_;
  ExpertKernels kernels_;
  int64_t dense_nf4_ = 0;  // non-expert matrices held in NF4
};

struct ForwardStats {
  double expert_s = 0;     // time in the MoE expert products
  double attention_s = 0;  // time in attention (scores + weighted sum)
};

class Session {
 public:
  // context: the KV cache's capacity in tokens (<= 0: min(max_position_embeddings, kDefaultContext), so that a
  // config claiming millions of positions does not size gigabytes of cache). pool may be null.
  static constexpr int64_t kDefaultContext = 4096;
  Session(const Model& m, int64_t context, cpu::ThreadPool* pool);

  int64_t position() const { return pos_; }
  int64_t context() const { return capacity_; }
  void reset() { pos_ = 0; }

  // Runs tokens at positions position()..; writes the last token's logits (vocab floats) when logits != null, or
  // every token's (tokens.size() x vocab) when all_logits. Throws genesis::Error for a token id outside the
  // vocabulary or when the context would overflow.
  void forward(std::span<const int32_t> tokens, float* logits, bool all_logits = false);
  // Logits of every token (tokens.size() x vocab), for checks against a reference.
  std::vector<float> forward_all(std::span<const int32_t> tokens);
  int64_t vocab_size() const { return c_.vocab_size; }

  const ForwardStats& stats() const { return stats_; }

 private:
  void run_layer(int64_t li, int64_t n, int64_t pos0);
  void attention(int64_t li, int64_t n, int64_t pos0);
  void mlp(int64_t li, int64_t n);
  void moe_token(const Layer& l, const float* x, float* out);
  void output_logits(const float* x, float* logits);
  const RopeTable& rope_for(int64_t seq_len);
  void parallel(int64_t tasks, const std::function<void(int64_t)>& fn);

  const Model& m_;
  const ModelConfig& c_;
  cpu::ThreadPool* pool_;
  int64_t capacity_ = 0, pos_ = 0;
  std::vector<float> k_cache_, v_cache_;  // [layers][capacity][kv_dim]
  // Scratch for up to `chunk_` tokens at once.
  int64_t chunk_ = 0;
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, h1_, h2_;
  std::vector<float> moe_h_, moe_act_, moe_out_, scores_;
  kernels::nf4_gemv::PreparedActivations prep_x_;                // the MoE input, converted for gate_up
  std::vector<kernels::nf4_gemv::PreparedActivations> prep_act_;  // each chosen expert's down input
  RopeTable rope_;
  int64_t rope_len_ = -1;
  ForwardStats stats_;
};

}  // namespace genesis::runtime
