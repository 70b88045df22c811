// The numeric building blocks of the forward pass, in fp32: RMSNorm, rotary embeddings (NeoX layout, with the rope
// scaling types of RopeConfig), SwiGLU, softmax, fp32 dot/axpy, router top-k.
// Semantics follow transformers' modeling code; nothing here knows about layers or weights' names.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "runtime/model/config.h"

namespace genesis::runtime {

// y = x * rsqrt(mean(x^2) + eps) * w, over n elements (y may alias x).
void rms_norm(const float* x, const float* w, float* y, int64_t n, double eps);

// Inverse frequencies (rotary_dim / 2 of them) and the attention scaling that multiplies cos and sin, as
// transformers' ROPE_INIT_FUNCTIONS compute them. `seq_len` matters for the dynamic type only (the length of the
// sequence seen so far; transformers uses max(seq_len, max_position_embeddings)).
struct RopeTable {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};
RopeTable rope_table(const ModelConfig& c, int64_t seq_len);

// Rotary embeddings in two parts, so that a position's angles serve every layer: rope_cos_sin() writes cs[0, rd/2)
// the cosines and cs[rd/2, rd) the sines of position `pos`; apply_rope() rotates the first rotary_dim dims of each of
// `heads` vectors of head_dim floats by them (NeoX: pairs (i, i + rd/2)).
void rope_cos_sin(int64_t pos, int64_t rotary_dim, const RopeTable& t, float* cs);
void apply_rope(float* x, int64_t heads, int64_t head_dim, int64_t rotary_dim, const float* cs);

// out[i] = silu(gate[i]) * up[i] (out may alias either; a vector exp within 2 ulp where the CPU has AVX2 or AVX-512)
void swiglu(const float* gate, const float* up, float* out, int64_t n);
// x[i] = silu(x[i]) = x[i] / (1 + exp(-x[i])), the same vector exp.
void silu(float* x, int64_t n);

// sum_i a[i] * b[i] in fp32 (AVX-512 with 16 lanes summed at the end where the CPU has it, else 8 partial sums).
float dot_f32(const float* a, const float* b, int64_t n);
// y[i] += a * x[i]
void axpy_f32(float a, const float* x, float* y, int64_t n);

// Attention over a span of cached positions for a group of query heads that share one KV head (decode):
// s[g * cnt + j] = scale * (q[g] . k[j]) for g < G, j < cnt, where q is [G][d] and k is [cnt][d];
// k in fp32 or IEEE binary16 (the KV cache's KvType; widened as it is loaded).
void group_scores(const float* q, int64_t G, const float* k, int64_t cnt, int64_t d, float scale, float* s);
void group_scores(const float* q, int64_t G, const uint16_t* k, int64_t cnt, int64_t d, float scale, float* s);
// o[g * ldo + i] = sum_j p[g * cnt + j] * v[j * d + i] for g < G, i < d. Each key and value row is read once for
// the whole group (AVX-512 or AVX2 with FMA and F16C where the CPU has it); no BLAS call, whose per-call cost
// dominated these small products.
void group_weighted_sum(const float* p, int64_t G, const float* v, int64_t cnt, int64_t d, float* o, int64_t ldo);
void group_weighted_sum(const float* p, int64_t G, const uint16_t* v, int64_t cnt, int64_t d, float* o, int64_t ldo);
// One token of the gated delta rule on a value head's state S [dk][dv] (row-major, fp32), with the decay already
// exponentiated: S' = decay S + k delta^T where delta = beta (v - decay S^T k);
// o = S'^T q = decay S^T q + (q . k) delta.
// The state is read from memory once and written once (AVX-512 / AVX2 in column slabs that stay in L1).
void delta_rule_token(float* S, int64_t dk, int64_t dv, const float* q, const float* k, const float* v, float decay,
                      float beta, float* o);
// y[i] = x[i] as IEEE binary16, rounded to nearest even and saturated at +-65504 (a key or value past the format's
// range keeps its sign and the largest magnitude instead of becoming infinite); NaN stays NaN.
void to_f16_saturated(const float* x, uint16_t* y, int64_t n);
// y[i] = x[i] widened to fp32 (exact).
void from_f16(const uint16_t* x, float* y, int64_t n);

// x[i] = exp(x[i] - shift) for i < n (a vector exp within 2 ulp where the CPU has AVX2 or AVX-512), returning their
// sum accumulated in double.
double exp_shift_sum(float* x, int64_t n, float shift);

// In place, over n elements; computed with a max shift, in fp32 (as torch.softmax(dtype=float32)).
void softmax(float* x, int64_t n);

// Router: softmax over logits (fp32), the top-k (ties: lower expert index first, as torch.topk in practice),
// optionally renormalized to sum to 1. Returns (expert, weight) pairs, highest probability first.
std::vector<std::pair<int, float>> route_top_k(const float* logits, int64_t n_experts, int64_t k, bool renormalize);

int64_t argmax(std::span<const float> v);

// Makes OpenBLAS run every call on the calling thread. The step parallelizes over the pool, whose workers are pinned
// one per core; OpenBLAS's own threads beside them oversubscribe the cores (on a 16-core host: 39 ms of each 104 ms
// decode step spent at barriers, workers waiting for cores). Sessions call it; idempotent.
void use_blas_single_threaded();

}  // namespace genesis::runtime
