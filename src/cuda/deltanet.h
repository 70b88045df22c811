// Gated DeltaNet layers (Qwen3-Next's linear attention) on the GPU, for the hybrid mode: the conv and the delta rule of
// a step's rows, each sequence's rows in order over its own conv and recurrent state (device memory). The projections
// before and after (in_proj_qkvz or in_proj_qkv + in_proj_z, in_proj_ba, out_proj) are ordinary products
// (kernels.h). As the CPU's layer (runtime/model/deltanet.cpp) computes it, in its recurrent form:
//   conv channels (q of every key head, then k, then v of every value head) through a depthwise causal conv1d + SiLU;
//   q and k L2-normalized (q also times 1 / sqrt(dk)); beta = sigmoid(b), d = exp(-exp(A_log) softplus(a + dt_bias));
//   per value head: delta = beta (v - d S^T k), o = d S^T q + (q . k) delta, S <- d S + k delta^T;
//   out = rmsnorm(o) * norm_w * silu(z).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace genesis::cuda {

struct DeltaShape {
  int64_t nk = 0, nv = 0;  // key heads, value heads (a multiple of nk: value head h reads key head h / (nv / nk))
  int64_t dk = 0, dv = 0;  // key and value head dims
  int64_t kernel = 0;      // conv kernel
  bool fused = false;      // the projection is in_proj_qkvz (grouped per key head) rather than in_proj_qkv + in_proj_z
};

// The step's segments (one per sequence), in device memory so that a recorded graph replays them: seg = [count, then
// per segment its first row, its rows and 1 where its sequence starts fresh (position 0: zero states)]; conv[i] and
// rec[i] the base of segment i's sequence's states, [DeltaNet layers][kernel - 1][conv channels] and [DeltaNet
// layers][value heads][dk][dv].
struct DeltaSegments {
  const int32_t* seg = nullptr;
  float* const* conv = nullptr;
  float* const* rec = nullptr;
};

// Empty when the device can run the shape; else why not (the caller keeps the layers on the CPU). Also raises the
// delta rule kernel's shared-memory limit: call it before any launch (and not while a graph is captured).
std::string deltanet_unsupported(const DeltaShape& s, int device);

// out[t][ch] (conv channels, SiLU-ed) for the segments' rows, and each segment's new conv state. src[t * ld + ...]:
// the projection's rows (in_proj_qkvz's, or in_proj_qkv's). Grids cover max_segments segments (the rows of the step);
// the count in seg decides.
void deltanet_conv(const float* src, int64_t ld, const float* w, float* out, const DeltaSegments& segs,
                   int64_t max_segments, int64_t layer_slot, const DeltaShape& s, cudaStream_t st);

// core[t][h * dv + c] = the gated, normalized output of value head h for the segments' rows, and each segment's new
// recurrent state. conv: deltanet_conv's out; ba [t][2 nv] (per key head: its value heads' b, then their a); z at
// z[t * ld_z + ...] (in_proj_qkvz's rows when fused, else in_proj_z's); a_neg = -exp(A_log), dt_bias [nv]; norm_w [dv].
void deltanet_rule(const float* conv, const float* ba, const float* z, int64_t ld_z, const float* a_neg,
                   const float* dt_bias, const float* norm_w, float eps, float* core, const DeltaSegments& segs,
                   int64_t max_segments, int64_t layer_slot, const DeltaShape& s, cudaStream_t st);

}  // namespace genesis::cuda
