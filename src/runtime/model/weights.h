// The model's weights in memory, with their shapes, loaded from any TensorSource (safetensors, or a test's in-memory
// source). Non-expert matrices are fp32 (exact; bf16/f16 checkpoints are widened at load). Expert matrices are
// either fp32 (ExpertMode::f32, the exact reference of a checkpoint) or NF4 (quantized at load the bitsandbytes way,
// or taken as stored when the checkpoint is bitsandbytes NF4), run through the NF4 kernels or their reference.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/ggml_gemv/ggml_gemv.h"
#include "kernels/linear.h"
#include "kernels/nf4_gemv/nf4_gemv.h"
#include "kernels/q8_gemv/q8_gemv.h"
#include "quant/nf4.h"
#include "runtime/model/config.h"
#include "runtime/tensor.h"

namespace genesis::runtime {

enum class ExpertMode {
  f32,            // experts kept in fp32 (exact; memory heavy)
  nf4_reference,  // NF4, multiplied by dequantizing rows on the fly + fp32 dot products (the kernels' reference)
  nf4_kernel,     // NF4, packed once for a kernel path, run by nf4_gemv kernels
};
const char* expert_mode_name(ExpertMode m);
// The command line's --experts: "nf4" (kernels), "nf4-reference", "f32". Throws genesis::Error for anything else.
ExpertMode expert_mode_from_name(const std::string& name);
struct LoadOptions;
// --experts with "stored" too (a GGUF's experts as the file stores them, on kq_gemv; NF4 kernels for the rest).
void set_expert_mode(const std::string& name, LoadOptions& opt);

// Which non-expert matrices (attention, dense MLP, untied output) become NF4 for the JIT kernels (nf4_kernel expert
// mode only; the embedding and the router stay as they are).
enum class DenseNf4 {
  off,
  low_bit,  // those the file stores in 6 bits or fewer per weight (GGUF Q4_0 ... Q6_K): no precision the file kept
  all,      // every eligible matrix (bf16 / fp32 checkpoints too)
};
const char* dense_nf4_name(DenseNf4 d);

// The element type of a Session's KV cache on the CPU (the attention layers' keys and values; the hybrid mode keeps
// its cache on the GPU).
enum class KvType {
  f16,  // IEEE binary16, as llama.cpp's default: half the bytes that decode attention reads and half the memory;
        // each key and value rounded to nearest (2^-11 relative) and saturated at +-65504
  f32,  // exact: the checks against transformers' logits use it
};
const char* kv_type_name(KvType t);
// "f16" or "f32"; throws genesis::Error naming the choices otherwise.
KvType parse_kv_type(const std::string& name);

struct LoadOptions {
  ExpertMode experts = ExpertMode::nf4_kernel;
  int nf4_blocksize = quant::kNf4DefaultBlocksize;  // when quantizing fp32/bf16 experts at load
  // nf4_kernel: the kernel path; unset = the fastest this CPU runs (kernels::nf4_gemv::best_path()).
  std::optional<kernels::nf4_gemv::Path> path;
  // nf4_kernel: the knowledge base to take tuned genomes from ("" = kb::default_path()); use_kb = false: baselines.
  std::string kb_path;
  bool use_kb = true;
  bool show_progress = false;
  int load_threads = 0;  // workers converting experts at load (0: as many as the process has cores)
  // Non-expert matrices stored as bf16 stay bf16 (products widen them to fp32 in registers); false widens them to
  // fp32 at load. fp32 and fp16 checkpoints are held in fp32 either way. GGUF: quantized non-expert matrices are
  // dequantized to bf16 when true (rounded: about 2^-9 relative, far below their 4-8 bit step), to fp32 when false.
  bool keep_bf16 = true;
  // The KV cache of this model's Sessions (Session's constructor may choose another).
  KvType kv_cache = KvType::f16;
  // Off by default: re-quantizing a GGUF's 4-6 bit matrices to NF4 costs quality that the experts' re-quantization
  // (where the bytes are) justifies and the small attention matrices do not always (SmolLM2-135M Q4_1: perplexity
  // 18.31 with bf16, 24.60 with NF4, on the same text).
  DenseNf4 dense_nf4 = DenseNf4::off;
  // Matrices a GGUF stores in a block format ggml_gemv multiplies (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)
  // stay in it and run with fp32 activations (--keep-quant): the embedding, the non-expert matrices (over
  // dense_nf4) and, in nf4_kernel / nf4_reference expert modes, the experts (instead of NF4).
  bool keep_quant = false;
  // Matrices a GGUF stores in a block format of 8 bits or fewer (Q4_0 ... Q8_0) are held as int8 blocks (q8_gemv,
  // 1.125 bytes per weight) instead of bf16 (2): the embedding, attention, dense MLP and output (`--dense q8`). The
  // second rounding is at most 1/254 of each 32-weight block's largest weight.
  bool dense_q8 = false;
  // GGUF: matrices stored in a block format kq_gemv runs (Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1) stay as stored on its
  // JIT kernels with int8 activations: the non-expert ones (dense_stored; other block formats then become int8
  // blocks as with dense_q8) and the experts (experts_stored, nf4_kernel mode; experts in other formats become NF4).
  bool dense_stored = false;
  bool experts_stored = false;
  // The hybrid mode (gpu.h): everything but the routed experts on CUDA device `gpu_device`.
  bool gpu = false;
  int gpu_device = 0;
  // Expert deferral (KTransformers): the gpu_defer lowest-ranked of each row's top-k experts of a MoE layer are added
  // to the residual one MoE layer later, so the CPU computes them while the GPU runs the next layer's attention. Not
  // the model's function: its effect on the logits is measured (README). 0 = off (exact).
  int gpu_defer = 0;
  // Prefill steps in which one sequence brings at least this many rows run a GGUF's routed experts on the GPU, their
  // blocks streamed from host memory per layer (through two pinned staging buffers of a layer's expert tensors) and
  // multiplied by cuBLAS (0: never; the CPU runs them). 0 here; the commands default to 256 with --gpu when no expert
  // is held in VRAM (cli/command.h; the README has the measurements).
  int gpu_prefill_rows = 0;
  // Routed experts held in the GPU's memory as the GGUF file stores their blocks, within this many bytes (-1: all,
  // 0: none): the most used (expert_usage's counts) or, without counts, spread evenly over the layers. A step's pairs
  // routed to them run there while the CPU runs the rest (expert_usage.h).
  int64_t gpu_expert_budget = 0;
  // A file of expert counts (expert_usage.h) that --gpu-experts places by; the commands add their run's counts to it.
  std::string expert_usage;
  kernels::nf4_gemv::Path kernel_path() const { return path ? *path : kernels::nf4_gemv::best_path(); }
};

// The command line's --dense: "q8" (a GGUF's 4-8 bit matrices as int8 blocks, the rest bf16), "bf16" (bf16 where the
// file has bf16 or a quantized format, else fp32),
// "f32" (all fp32: a GGUF exactly as dequantized), "nf4" (the low-bit matrices of a GGUF NF4, the rest bf16),
// "nf4-all" (every eligible matrix NF4). Throws genesis::Error for anything else.
void set_dense_mode(const std::string& mode, LoadOptions& opt);

// A non-expert matrix [rows, cols] (attention, dense MLP, router, embedding, output) with an optional bias [rows]:
// whatever family the policy chose (linear_policy.h) behind the Linear seam (kernels/linear.h), so the step never
// asks which format it is. rows / cols repeat the Linear's for the callers' convenience.
struct Dense {
  int64_t rows = 0, cols = 0;
  std::shared_ptr<const kernels::Linear> op;  // null: absent (a tied output)
  std::vector<float> bias;                    // empty = none
  Dense() = default;
  explicit Dense(std::shared_ptr<const kernels::Linear> l, std::vector<float> b = {})
      : rows(l->rows()), cols(l->cols()), op(std::move(l)), bias(std::move(b)) {}
  bool empty() const { return !op; }
  std::string format() const { return op ? op->format() : "none"; }
  size_t bytes() const { return (op ? op->bytes() : 0) + bias.size() * 4; }
  void row_f32(int64_t r, float* out) const { op->row_f32(r, out); }  // one row widened to fp32 (embedding lookup)
};

// One expert projection [rows, cols] behind the Linear seam: fp32 (ExpertMode::f32), NF4 on the reference product
// (nf4_reference) or on the JIT kernels (nf4_kernel), or as the GGUF file stores it (keep_quant).
struct ExpertMatrix {
  int64_t rows = 0, cols = 0;
  std::shared_ptr<const kernels::Linear> op;
  // nf4_kernel: the packed weights, until the model binds them to its kernel set (op is null until then).
  std::shared_ptr<const kernels::nf4_gemv::PackedWeights> packed;
  size_t bytes() const { return op ? op->bytes() : packed ? packed->bytes() : 0; }  // bytes one product reads
};

struct Expert {
  ExpertMatrix gate_up;  // [2 * inter, hidden]: gate rows first, then up rows
  ExpertMatrix down;     // [hidden, inter]
};

// A MoE layer's experts in kq_gemv's record layout (a GGUF's experts as stored), all in one anonymous mapping:
// every expert's gate_up records one after another, then every expert's down records, then 64 bytes of slack. The
// CPU's kernels read them there; the GPU's prefill copies the whole layer straight from it (pinned in place), one pass
// over the memory bus. `placed` counts the experts whose matrices live here: an expert in other formats than the
// first one's keeps its own records, and the arena is then incomplete (the GPU's prefill does not use it).
struct ExpertArena {
  struct Part {
    uint32_t type = 0;  // GGML type
    int64_t rows = 0, cols = 0;
    size_t offset = 0;        // of expert 0's records in the mapping
    size_t expert_bytes = 0;  // records per expert
  };
  ExpertArena(int64_t experts, Part gate_up, Part down);  // maps the memory (throws genesis::Error when it cannot)
  ~ExpertArena();
  ExpertArena(const ExpertArena&) = delete;
  ExpertArena& operator=(const ExpertArena&) = delete;
  uint8_t* data = nullptr;
  size_t bytes = 0;  // records of every expert (the slack after them not counted)
  int64_t experts = 0;
  Part gate_up, down;
  std::atomic<int64_t> placed{0};
  bool complete() const { return placed.load() == experts; }
};

struct Layer {
  std::vector<float> input_norm;  // [hidden] (Qwen3-Next: 1 + w, as applied)
  // Attention. Gated attention: q is [2 * q_dim, hidden], per head the query rows then the gate rows.
  Dense q, k, v, o;               // [q_dim, hidden], [kv_dim, hidden] x2, [hidden, q_dim]
  std::vector<float> q_norm;      // [head_dim] (per head) or [q_dim] (whole); empty = no QK-norm
  std::vector<float> k_norm;      // [head_dim] or [kv_dim]
  std::vector<float> post_norm;   // [hidden]
  // Gated DeltaNet (Qwen3-Next linear attention), as the checkpoint lays them out: in_proj_qkvz's rows per key head
  // [q (dk), k (dk), v (r * dv), z (r * dv)] with r = value heads / key heads; in_proj_ba's per key head
  // [b (r), a (r)].
  Dense in_qkvz;                  // [2 * key_dim + 2 * value_dim, hidden]
  // Or split (newer llama.cpp GGUF files: attn_qkv, attn_gate): rows in the conv channels' order [q, k, v], and z.
  Dense in_qkv;                   // [2 * key_dim + value_dim, hidden]
  Dense in_z;                     // [value_dim, hidden]
  Dense in_ba;                    // [2 * value heads, hidden]
  std::vector<float> conv_w;      // [conv_dim][kernel]: channels q (key_dim), k (key_dim), v (value_dim)
  std::vector<float> dt_bias;     // [value heads]
  std::vector<float> a_neg;       // [value heads]: -exp(A_log)
  std::vector<float> gated_norm;  // [value_head_dim] (applied as is: no 1 + w)
  Dense out_proj;                 // [hidden, value_dim]
  // Dense MLP (when !moe)
  Dense gate, up, down;  // [inter, hidden] x2, [hidden, inter]
  // MoE (when moe)
  bool moe = false;
  Dense router;                // [n_experts, hidden]
  std::vector<Expert> experts; // [n_experts]
  std::shared_ptr<ExpertArena> expert_arena;  // where the experts' kq_gemv records live (GGUF experts as stored)
  // Shared expert (MlpKind::moe_shared): a SwiGLU MLP over every row, scaled by sigmoid(shared_gate . x).
  Dense shared_gate_proj, shared_up, shared_down;  // [shared inter, hidden] x2, [hidden, shared inter]
  Dense shared_gate;                               // [1, hidden]

  // The non-expert matrices, for what walks all of them (byte counts, kernel attachment, reports).
  std::vector<Dense*> matrices() {
    return {&q,      &k,      &v,    &o,  &in_qkvz, &in_qkv, &in_z,  &in_ba, &out_proj, &gate, &up, &down, &router,
            &shared_gate_proj, &shared_up, &shared_down, &shared_gate};
  }
  std::vector<const Dense*> matrices() const {
    auto m = const_cast<Layer*>(this)->matrices();
    return {m.begin(), m.end()};
  }
};

struct Weights {
  Dense embed;                 // [vocab, hidden]
  std::vector<Layer> layers;   // [num_layers]
  std::vector<float> final_norm;  // [hidden]
  Dense lm_head;               // [vocab, hidden]; empty w when tied (embed is used)
  ExpertMode expert_mode = ExpertMode::f32;
  kernels::nf4_gemv::Path path = kernels::nf4_gemv::Path::scalar;
  int nf4_blocksize = 0;
  bool experts_from_bnb = false;  // the checkpoint stored bitsandbytes NF4 experts
  int64_t experts_kept = 0;       // experts held as the GGUF file stores them (keep_quant)

  const Dense& output() const { return lm_head.empty() ? embed : lm_head; }
  size_t dense_bytes() const;   // all non-expert weights
  size_t expert_bytes() const;  // all experts, as held
};

// Reads every tensor the config calls for; throws genesis::Error naming the tensor, where it comes from, and the
// shape expected from config.json when one is missing or has another shape.
Weights load_weights(const ModelConfig& c, const TensorSource& src, const LoadOptions& opt,
                     const std::string& config_origin);

// fp32 copy of a tensor (F32, BF16, F16 accepted; anything else is an error naming the tensor).
std::vector<float> tensor_to_f32(const TensorView& t, const std::string& where);

}  // namespace genesis::runtime
