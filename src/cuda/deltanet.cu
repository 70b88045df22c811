// Gated DeltaNet (Qwen3-Next's linear attention) on the GPU (deltanet.h): the causal conv over each segment's rows,
// then per (segment, value head) block the delta rule token by token over a [key_head_dim][value_head_dim] state held
// in shared memory, with the q/k L2 norms, beta, the decay and the gated RMSNorm of the output fused in. The same
// arithmetic as the CPU's recurrent form (runtime/model/deltanet.cpp, ops.cpp delta_rule_token), in another order of
// sums.
#include <cstdint>

#include "cuda/deltanet.h"
#include "cuda/device.h"

namespace genesis::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kMaxConvKernel = 8;

__device__ float warp_sum3(float& a, float& b, float& c) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
    c += __shfl_xor_sync(0xffffffffu, c, o);
  }
  return a;
}

// Three sums over the block (blockDim.x a multiple of 32); every thread gets them. part: 3 * 32 floats.
__device__ void block_sum3(float& a, float& b, float& c, float* part) {
  warp_sum3(a, b, c);
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  __syncthreads();  // an earlier call's readers are done with part[]
  if (lane == 0) part[wid] = a, part[32 + wid] = b, part[64 + wid] = c;
  __syncthreads();
  a = threadIdx.x < nw ? part[threadIdx.x] : 0.0f;
  b = threadIdx.x < nw ? part[32 + threadIdx.x] : 0.0f;
  c = threadIdx.x < nw ? part[64 + threadIdx.x] : 0.0f;
  if (wid == 0) warp_sum3(a, b, c);
  if (threadIdx.x == 0) part[0] = a, part[32] = b, part[64] = c;
  __syncthreads();
  a = part[0], b = part[32], c = part[64];
}

// Where conv channel ch of row t is in the projection's output: the split projection (in_proj_qkv) writes the
// channels in order; the fused in_proj_qkvz groups them per key head as [q (dk), k (dk), v (r dv), z (r dv)].
__device__ inline int64_t conv_src(const DeltaShape& s, int64_t ch) {
  if (!s.fused) return ch;
  const int64_t KD = s.nk * s.dk, r = s.nv / s.nk, group = 2 * s.dk + 2 * r * s.dv;
  if (ch < KD) return ch / s.dk * group + ch % s.dk;
  if (ch < 2 * KD) return (ch - KD) / s.dk * group + s.dk + (ch - KD) % s.dk;
  const int64_t c = ch - 2 * KD;
  return c / (r * s.dv) * group + 2 * s.dk + c % (r * s.dv);
}

// A thread per (channel, segment): the segment's rows in order through a window that starts with the conv state
// (zeros for a fresh sequence) and ends as the new state. out = silu(sum_j w[ch][j] window[j]).
__global__ void conv_kernel(const float* __restrict__ src, int64_t ld, const float* __restrict__ w,
                            float* __restrict__ out, DeltaSegments segs, int64_t layer_slot, DeltaShape s) {
  const int si = blockIdx.y;
  if (si >= segs.seg[0]) return;
  const int64_t CD = 2 * s.nk * s.dk + s.nv * s.dv, K = s.kernel;
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= CD) return;
  const int row0 = segs.seg[1 + 3 * si], rows = segs.seg[2 + 3 * si], fresh = segs.seg[3 + 3 * si];
  float* state = segs.conv[si] + layer_slot * (K - 1) * CD;
  float win[kMaxConvKernel], wk[kMaxConvKernel];
  for (int j = 0; j < K; ++j) wk[j] = w[ch * K + j];
  for (int j = 0; j < K - 1; ++j) win[j] = fresh ? 0.0f : state[j * CD + ch];
  const int64_t at = conv_src(s, ch);
  for (int t = 0; t < rows; ++t) {
    const float x = src[int64_t(row0 + t) * ld + at];
    float acc = 0.0f;
    for (int j = 0; j < K - 1; ++j) acc += wk[j] * win[j];
    acc += wk[K - 1] * x;
    out[int64_t(row0 + t) * CD + ch] = acc / (1.0f + __expf(-acc));
    for (int j = 0; j + 1 < K - 1; ++j) win[j] = win[j + 1];
    if (K > 1) win[K - 2] = x;
  }
  for (int j = 0; j < K - 1; ++j) state[j * CD + ch] = win[j];
}

// A block per (value head, segment); threads (column c < dv, part p < P) with P = columns' threads: thread (c, p)
// owns the state's rows i = p, p + P, ... of column c. Shared memory: the state [dk][dv], q and k [dk], per-part
// partial sums [2][P][dv], the reduction scratch.
__global__ void rule_kernel(const float* __restrict__ conv, const float* __restrict__ ba, const float* __restrict__ z,
                            int64_t ld_z, const float* __restrict__ a_neg, const float* __restrict__ dt_bias,
                            const float* __restrict__ norm_w, float eps, float* __restrict__ core, DeltaSegments segs,
                            int64_t layer_slot, DeltaShape s, int parts) {
  const int si = blockIdx.y;
  if (si >= segs.seg[0]) return;
  extern __shared__ float sm[];
  const int dk = int(s.dk), dv = int(s.dv), nv = int(s.nv), r = int(s.nv / s.nk);
  const int h = blockIdx.x, kh = h / r, j = h % r;
  const int64_t KD = s.nk * s.dk, CD = 2 * KD + s.nv * s.dv, VD = s.nv * s.dv;
  float* S = sm;
  float* q = S + dk * dv;
  float* k = q + dk;
  float* sk = k + dk;             // [parts][dv]
  float* sq = sk + parts * dv;    // [parts][dv]
  float* part = sq + parts * dv;  // 96 floats
  const int tid = threadIdx.x, c = tid % dv, p = tid / dv;
  const bool active = p < parts;
  const int row0 = segs.seg[1 + 3 * si], rows = segs.seg[2 + 3 * si], fresh = segs.seg[3 + 3 * si];
  float* g = segs.rec[si] + (layer_slot * nv + h) * int64_t(dk) * dv;
  for (int e = tid; e < dk * dv; e += blockDim.x) S[e] = fresh ? 0.0f : g[e];
  const float qscale = rsqrtf(float(dk));
  for (int t = 0; t < rows; ++t) {
    const int64_t row = row0 + t;
    const float* cr = conv + row * CD;
    float qq = 0.0f, kk = 0.0f, qk = 0.0f;
    for (int i = tid; i < dk; i += blockDim.x) {
      const float a = cr[kh * dk + i], b = cr[KD + kh * dk + i];
      q[i] = a, k[i] = b;
      qq += a * a, kk += b * b, qk += a * b;
    }
    block_sum3(qq, kk, qk, part);  // also the barrier after q and k are written
    // The CPU's l2_normalize: x * (1 / sqrt(sum x^2 + 1e-6)) (times 1 / sqrt(dk) for q).
    const float iq = 1.0f / sqrtf(qq + 1e-6f) * qscale, ik = 1.0f / sqrtf(kk + 1e-6f);
    const float b = ba[row * 2 * nv + kh * 2 * r + j], a = ba[row * 2 * nv + kh * 2 * r + r + j] + dt_bias[h];
    const float beta = 1.0f / (1.0f + expf(-b));
    const float decay = expf(a_neg[h] * (a > 20.0f ? a : log1pf(expf(a))));
    if (active) {
      float ak = 0.0f, aq = 0.0f;
      for (int i = p; i < dk; i += parts) {
        const float v = S[i * dv + c];
        ak += v * k[i], aq += v * q[i];
      }
      sk[p * dv + c] = ak, sq[p * dv + c] = aq;
    }
    __syncthreads();
    // With the old state S and d the decay: delta = beta (v - d S^T k), o = d S^T q + (q . k) delta (normalized q, k).
    float o = 0.0f, delta = 0.0f;
    if (active && p == 0) {
      float ak = 0.0f, aq = 0.0f;
      for (int pp = 0; pp < parts; ++pp) ak += sk[pp * dv + c], aq += sq[pp * dv + c];
      const float v = cr[2 * KD + h * dv + c];
      delta = beta * (v - decay * ak * ik);
      o = decay * aq * iq + qk * iq * ik * delta;
      sk[c] = delta;  // its own entry (part 0): the other parts read it after the barrier
    }
    float oo = o * o, unused1 = 0.0f, unused2 = 0.0f;
    block_sum3(oo, unused1, unused2, part);  // also the barrier after delta is written
    if (active) {
      const float d = sk[c];
      for (int i = p; i < dk; i += parts) S[i * dv + c] = decay * S[i * dv + c] + k[i] * ik * d;
    }
    if (active && p == 0) {
      // rmsnorm(o) * w * silu(z): the CPU's rms_norm then swiglu(z, o).
      const float zv = z[row * ld_z + (s.fused ? int64_t(kh) * (2 * dk + 2 * r * dv) + 2 * dk + r * dv + j * dv
                                               : int64_t(h) * dv) + c];
      const float y = o * (1.0f / sqrtf(oo / float(dv) + eps)) * norm_w[c];
      core[row * VD + h * dv + c] = y * (zv / (1.0f + expf(-zv)));
    }
    __syncthreads();  // q, k, sk and the state before the next row
  }
  for (int e = tid; e < dk * dv; e += blockDim.x) g[e] = S[e];
}

int rule_parts(const DeltaShape& s) { return s.dv >= 256 ? 1 : int(256 / s.dv); }
int rule_threads(const DeltaShape& s) { return (rule_parts(s) * int(s.dv) + kWarp - 1) / kWarp * kWarp; }
size_t rule_smem(const DeltaShape& s) {
  return size_t(s.dk * s.dv + 2 * s.dk + 2 * rule_parts(s) * s.dv + 96) * sizeof(float);
}

}  // namespace

std::string deltanet_unsupported(const DeltaShape& s, int device) {
  if (s.nk <= 0 || s.nv % s.nk != 0) return "value heads are not a multiple of key heads";
  if (s.kernel < 1 || s.kernel > kMaxConvKernel) return "a conv kernel outside 1..8";
  if (s.dv > 1024) return "value_head_dim exceeds 1024";
  int optin = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device); e != cudaSuccess)
    return std::string("cudaDeviceGetAttribute: ") + cudaGetErrorString(e);
  if (rule_smem(s) > size_t(optin))
    return "the recurrent state of a head (" + std::to_string(s.dk * s.dv * 4) + " bytes) exceeds the " +
           std::to_string(optin) + " bytes of shared memory a block may have";
  // At each model load (the device's maximum, whatever the shape): the opt-in beyond 48 KB, set before any launch
  // (and not while a graph is captured). A failure (no kernel image for this device, say) keeps the layers on the CPU.
  if (cudaError_t e = cudaFuncSetAttribute(rule_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
      e != cudaSuccess)
    return std::string("cudaFuncSetAttribute (the delta rule's shared memory): ") + cudaGetErrorString(e);
  return {};
}

void deltanet_conv(const float* src, int64_t ld, const float* w, float* out, const DeltaSegments& segs,
                   int64_t max_segments, int64_t layer_slot, const DeltaShape& s, cudaStream_t st) {
  const int64_t CD = 2 * s.nk * s.dk + s.nv * s.dv;
  if (max_segments <= 0) return;
  conv_kernel<<<dim3(unsigned((CD + 127) / 128), unsigned(max_segments)), 128, 0, st>>>(src, ld, w, out, segs,
                                                                                         layer_slot, s);
}

void deltanet_rule(const float* conv, const float* ba, const float* z, int64_t ld_z, const float* a_neg,
                   const float* dt_bias, const float* norm_w, float eps, float* core, const DeltaSegments& segs,
                   int64_t max_segments, int64_t layer_slot, const DeltaShape& s, cudaStream_t st) {
  if (max_segments <= 0) return;
  rule_kernel<<<dim3(unsigned(s.nv), unsigned(max_segments)), rule_threads(s), rule_smem(s), st>>>(
      conv, ba, z, ld_z, a_neg, dt_bias, norm_w, eps, core, segs, layer_slot, s, rule_parts(s));
}

}  // namespace genesis::cuda
