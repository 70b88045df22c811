// The hybrid step's GPU kernels (kernels.h). Plain CUDA C++: memory-bound products and small element-wise ops, each
// written for clarity first; the decode step's GPU part is small next to the CPU's routed experts.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/kernels.h"

namespace genesis::cuda {

namespace {

constexpr int kWarp = 32;

template <class T>
__device__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum / max over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T part[32];
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  __syncthreads();  // an earlier call's readers are done with part[]
  if (lane == 0) part[wid] = v;
  __syncthreads();
  v = threadIdx.x < nw ? part[threadIdx.x] : T(0);
  if (wid == 0) v = warp_sum(v);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  v = warp_max(v);
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  v = threadIdx.x < nw ? part[threadIdx.x] : -INFINITY;
  if (wid == 0) v = warp_max(v);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

__device__ inline void load8(const float* w, float* f) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(w));
  const float4 b = __ldg(reinterpret_cast<const float4*>(w) + 1);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

__device__ inline void load8(const uint16_t* w, float* f) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(w));
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

__device__ inline float load1(const float* w) { return __ldg(w); }
__device__ inline float load1(const uint16_t* w) { return __uint_as_float(uint32_t(__ldg(w)) << 16); }

// y = W x for up to three matrices over one x: block b belongs to the matrix whose block range holds it; in it a
// warp per output row r, lane l taking columns [8 l + 256 i, +8) (16-byte loads) or l + 32 i (cols % 8 != 0).
struct ManyArgs {
  const void* w[3];
  const float* bias[3];
  float* y[3];
  int64_t rows[3], ldy[3];
  unsigned first_block[4];
  int count;
  uint32_t type[3];  // block_gemv_many_kernel: each matrix's ggml type and bytes per row
  int64_t row_bytes[3];
};

// acc[t] += wf[0..8) . x[t][c, c + 8) for the t < n rows of x (row stride cols).
template <int NR>
__device__ __forceinline__ void dot8_rows(const float* wf, const float* __restrict__ x, int64_t cols, int64_t c, int n,
                                          float* acc) {
#pragma unroll
  for (int t = 0; t < NR; ++t) {
    if (t < n) {
      float xf[8];
      load8(x + int64_t(t) * cols + c, xf);
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) s += wf[i] * xf[i];
      acc[t] += s;
    }
  }
}

// Output row r of matrix j: each x row's sum over the warp (plus the bias), written by lane 0.
template <int NR>
__device__ __forceinline__ void store_row(const ManyArgs& a, int j, int64_t r, int lane, int n, const float* acc) {
#pragma unroll
  for (int t = 0; t < NR; ++t) {
    if (t < n) {
      const float s = warp_sum(acc[t]);
      if (lane == 0) a.y[j][int64_t(t) * a.ldy[j] + r] = s + (a.bias[j] ? a.bias[j][r] : 0.0f);
    }
  }
}

template <class WT, int NR>
__global__ void gemv_many_kernel(ManyArgs a, const float* __restrict__ x, int n, int64_t cols) {
  int j = 0;
  while (j + 1 < a.count && blockIdx.x >= a.first_block[j + 1]) ++j;
  const WT* W = static_cast<const WT*>(a.w[j]);
  const int lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x - a.first_block[j]) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (r >= a.rows[j]) return;
  float acc[NR];
#pragma unroll
  for (int t = 0; t < NR; ++t) acc[t] = 0.0f;
  const WT* w = W + r * cols;
  if (cols % 8 == 0) {
#pragma unroll 4
    for (int64_t c = int64_t(lane) * 8; c < cols; c += 8 * kWarp) {
      float wf[8];
      load8(w + c, wf);
      dot8_rows<NR>(wf, x, cols, c, n, acc);
    }
  } else {
    for (int64_t c = lane; c < cols; c += kWarp) {
      const float wv = load1(w + c);
#pragma unroll
      for (int t = 0; t < NR; ++t)
        if (t < n) acc[t] += wv * __ldg(x + int64_t(t) * cols + c);
    }
  }
  store_row<NR>(a, j, r, lane, n, acc);
}

__global__ void stamp_kernel(int64_t* slots, int64_t i) {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  slots[i] = int64_t(t);
}

__global__ void add_rms_norm_kernel(float* __restrict__ x, const float* __restrict__ a, const float* __restrict__ b,
                                    const float* __restrict__ w, float* __restrict__ xn, float* __restrict__ xn2,
                                    int64_t H, float eps) {
  float* xr = x + int64_t(blockIdx.x) * H;
  const float* ar = a ? a + int64_t(blockIdx.x) * H : nullptr;
  const float* br = b ? b + int64_t(blockIdx.x) * H : nullptr;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    float v = xr[i];
    if (ar || br) {
      const float d = (ar ? ar[i] : 0.0f) + (br ? br[i] : 0.0f);
      v += d;
      xr[i] = v;
    }
    ss += double(v) * double(v);
  }
  ss = block_sum(ss);
  const float inv = float(1.0 / sqrt(ss / double(H) + double(eps)));
  float* o = xn + int64_t(blockIdx.x) * H;
  float* o2 = xn2 ? xn2 + int64_t(blockIdx.x) * H : nullptr;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    const float y = w[i] * (xr[i] * inv);
    o[i] = y;
    if (o2) o2[i] = y;
  }
}

// add_rms_norm_kernel's form for rows of H = 4 R blockDim.x floats (16-byte aligned): each thread holds its R float4
// of the row in registers from the sum to the scaling (one pass over x, a and b; loads issued together), the same
// double sum of squares.
template <int R>
__global__ void add_rms_norm_reg_kernel(float* __restrict__ x, const float* __restrict__ a, const float* __restrict__ b,
                                        const float* __restrict__ w, float* __restrict__ xn, float* __restrict__ xn2,
                                        int64_t H, float eps) {
  const int64_t row = blockIdx.x;
  float4* xr = reinterpret_cast<float4*>(x + row * H);
  const float4* ar = a ? reinterpret_cast<const float4*>(a + row * H) : nullptr;
  const float4* br = b ? reinterpret_cast<const float4*>(b + row * H) : nullptr;
  float4 v[R];
#pragma unroll
  for (int r = 0; r < R; ++r) v[r] = xr[threadIdx.x + r * blockDim.x];
  if (ar || br) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = threadIdx.x + r * blockDim.x;
      const float4 p = ar ? ar[i] : make_float4(0.f, 0.f, 0.f, 0.f), q = br ? br[i] : make_float4(0.f, 0.f, 0.f, 0.f);
      v[r].x += p.x + q.x, v[r].y += p.y + q.y, v[r].z += p.z + q.z, v[r].w += p.w + q.w;
      xr[i] = v[r];
    }
  }
  double ss = 0.0;
#pragma unroll
  for (int r = 0; r < R; ++r)
    ss += double(v[r].x) * double(v[r].x) + double(v[r].y) * double(v[r].y) + double(v[r].z) * double(v[r].z) +
          double(v[r].w) * double(v[r].w);
  ss = block_sum(ss);
  const float inv = float(1.0 / sqrt(ss / double(H) + double(eps)));
  float4* o = reinterpret_cast<float4*>(xn + row * H);
  float4* o2 = xn2 ? reinterpret_cast<float4*>(xn2 + row * H) : nullptr;
  const float4* w4 = reinterpret_cast<const float4*>(w);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = threadIdx.x + r * blockDim.x;
    const float4 g = w4[i];
    const float4 y = make_float4(g.x * (v[r].x * inv), g.y * (v[r].y * inv), g.z * (v[r].z * inv), g.w * (v[r].w * inv));
    o[i] = y;
    if (o2) o2[i] = y;
  }
}

__global__ void rms_norm_vectors_kernel(float* __restrict__ v, int64_t dim, const float* __restrict__ w, float eps) {
  float* p = v + int64_t(blockIdx.x) * dim;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += double(p[i]) * double(p[i]);
  ss = block_sum(ss);
  const float inv = float(1.0 / sqrt(ss / double(dim) + double(eps)));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) p[i] = w[i] * (p[i] * inv);
}

__global__ void clip_kernel(float* v, int64_t count, float c) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) v[i] = fminf(fmaxf(v[i], -c), c);
}

__global__ void split_gated_q_kernel(const float* __restrict__ qg, float* __restrict__ q, int64_t hd) {
  // block (head, row)
  const int64_t h = blockIdx.x, t = blockIdx.y, heads = gridDim.x;
  const float* src = qg + (t * heads + h) * 2 * hd;
  float* dst = q + (t * heads + h) * hd;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) dst[d] = src[d];
}

// One head's vector vec[hd] in place, by the whole block (all its threads call it): the QK-norm (nw given), the clip,
// the rotary embedding at `pos`. The vector may be in global or shared memory.
__device__ void prep_rope(float* vec, const float* __restrict__ nw, const QkPrep& prep, int hd, int rotary_dim,
                          int32_t pos, const float* __restrict__ inv_freq, float scaling) {
  if (nw) {
    double ss = 0.0;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) ss += double(vec[d]) * double(vec[d]);
    ss = block_sum(ss);
    const float inv = float(1.0 / sqrt(ss / double(hd) + double(prep.eps)));
    for (int d = threadIdx.x; d < hd; d += blockDim.x) vec[d] = nw[d] * (vec[d] * inv);
  }
  if (prep.clip > 0.0f)
    for (int d = threadIdx.x; d < hd; d += blockDim.x) vec[d] = fminf(fmaxf(vec[d], -prep.clip), prep.clip);
  __syncthreads();
  const int half = rotary_dim / 2;
  for (int d = threadIdx.x; d < half; d += blockDim.x) {
    const float a = float(pos) * inv_freq[d];
    double sd, cd;
    sincos(double(a), &sd, &cd);
    const float c = float(cd) * scaling, s = float(sd) * scaling;
    const float x1 = vec[d], x2 = vec[d + half];
    vec[d] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    vec[d + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

// Block (vector, row): vectors [0, heads) are q's heads, [heads, heads + kv_heads) k's (which also store k and v).
__global__ void rope_store_kernel(float* __restrict__ q, float* __restrict__ k, const float* __restrict__ v,
                                  int heads, int kv_heads, int hd, int rotary_dim, const float* __restrict__ inv_freq,
                                  float scaling, QkPrep prep, KvRows kv) {
  const int i = blockIdx.x;
  const int64_t t = blockIdx.y;
  const bool is_q = i < heads;
  float* vec = is_q ? q + (t * heads + i) * hd : k + (t * kv_heads + (i - heads)) * hd;
  const int32_t pos = kv.pos[t];
  prep_rope(vec, is_q ? prep.q_norm : prep.k_norm, prep, hd, rotary_dim, pos, inv_freq, scaling);
  if (is_q) return;
  __syncthreads();
  const int kvh = i - heads;
  float* kc = kv.k[t] + kv.layer_off + (int64_t(kvh) * kv.capacity + pos) * hd;
  float* vc = kv.v[t] + kv.layer_off + (int64_t(kvh) * kv.capacity + pos) * hd;
  const float* vv = v + (t * kv_heads + kvh) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    kc[d] = vec[d];
    vc[d] = prep.clip > 0.0f ? fminf(fmaxf(vv[d], -prep.clip), prep.clip) : vv[d];
  }
}

struct RopeFuse {  // attention_kernel<true>'s inputs for the query's and the new key's preparation
  const float* k = nullptr;
  const float* v = nullptr;
  const float* inv_freq = nullptr;
  float scaling = 1.0f;
  int rotary_dim = 0;
  QkPrep prep;
  int* counters = nullptr;  // [rows][heads], 0 between launches: the split blocks merge themselves (no merge kernel)
};

constexpr int kAttnThreads = 256;  // 8 warps
constexpr int kAttnTile = 256;     // keys scored per round of the online softmax
constexpr int kLaneDims = 8;       // head dims per lane: d = lane + 32 i (head_dim <= 256)

// Block (head, row, split): the row's query head against its KV head's keys [first, pos] (with splits > 1 the
// split's share of them), online softmax over tiles. Each warp takes every 8th key of a tile, for the scores (its
// lanes over the head dims, then a warp sum) and for the weighted values (each lane accumulating its dims); the warps'
// partial values are summed at the end. With splits > 1 the block writes its running max, sum and unnormalized values
// to `partial` [row][head][split][2 + hd] for attention_merge_kernel.
// One (row, head)'s `splits` partial softmaxes [split][max, sum, hd values] merged (each rescaled to the largest
// running max), times sigmoid(gate[d]) when given, into o[hd], by the whole block. The partials are read through L2
// (__ldcg): other blocks of the same kernel may have written them (attention_kernel's last split block).
__device__ void merge_partials(const float* base, float* o_row, int hd, int splits, const float* __restrict__ g) {
  float M = -INFINITY;
  for (int z = 0; z < splits; ++z) M = fmaxf(M, __ldcg(base + z * (2 + hd)));
  float L = 0.0f;
  for (int z = 0; z < splits; ++z) {
    const float lz = __ldcg(base + z * (2 + hd) + 1);
    if (lz > 0.0f) L += lz * expf(__ldcg(base + z * (2 + hd)) - M);
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int z = 0; z < splits; ++z) {
      const float* p = base + z * (2 + hd);
      if (__ldcg(p + 1) > 0.0f) o += __ldcg(p + 2 + d) * expf(__ldcg(p) - M);
    }
    o /= L;
    if (g) o *= 1.0f / (1.0f + expf(-g[d]));
    o_row[d] = o;
  }
}

template <bool kFused>
__global__ void attention_kernel(const float* __restrict__ q, float* __restrict__ out, int heads, int kv_heads, int hd,
                                 KvRows kv, int64_t window, float scale, const float* __restrict__ gate,
                                 float* __restrict__ partial, int splits, RopeFuse rf) {
  extern __shared__ float sm[];
  float* ps = sm;               // [kAttnTile] scores, then probabilities
  float* red = sm + kAttnTile;  // [warps][hd] the warps' weighted values
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int kvh = h / (heads / kv_heads);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, nwarps = blockDim.x / kWarp;
  const int64_t qd = int64_t(heads) * hd;
  const int64_t pos = kv.pos[t];
  const int64_t first = window > 0 ? (pos - window + 1 > 0 ? pos - window + 1 : 0) : 0;
  const float* K = kv.k[t] + kv.layer_off + int64_t(kvh) * kv.capacity * hd;
  const float* V = kv.v[t] + kv.layer_off + int64_t(kvh) * kv.capacity * hd;
  int64_t lo = first, hi = pos + 1;
  if (splits > 1) {
    const int64_t span = (hi - lo + splits - 1) / splits;
    lo = first + int64_t(blockIdx.z) * span;
    hi = lo + span < hi ? lo + span : hi;
  }
  // Fused (rope_attention): the block prepares its query head itself, and the block whose span holds the row's own
  // position prepares the new key and value too (into shared memory: that key is read from there, never from the
  // cache); the first query head of each KV group writes them to the cache for the steps after.
  float* qs = red + nwarps * hd;  // [hd] the query head, then [hd] the new key, [hd] the new value
  float* kn = qs + hd;
  float* vn = kn + hd;
  const bool has_new = kFused && lo <= pos && pos < hi;  // the same for the whole block
  if constexpr (kFused) {
    for (int d = tid; d < hd; d += blockDim.x) qs[d] = q[t * qd + int64_t(h) * hd + d];
    __syncthreads();
    prep_rope(qs, rf.prep.q_norm, rf.prep, hd, rf.rotary_dim, int32_t(pos), rf.inv_freq, rf.scaling);
    if (has_new) {
      const int64_t at = (t * kv_heads + kvh) * hd;
      for (int d = tid; d < hd; d += blockDim.x) {
        kn[d] = rf.k[at + d];
        vn[d] = rf.prep.clip > 0.0f ? fminf(fmaxf(rf.v[at + d], -rf.prep.clip), rf.prep.clip) : rf.v[at + d];
      }
      __syncthreads();
      prep_rope(kn, rf.prep.k_norm, rf.prep, hd, rf.rotary_dim, int32_t(pos), rf.inv_freq, rf.scaling);
      __syncthreads();
      if (h % (heads / kv_heads) == 0) {
        float* kc = kv.k[t] + kv.layer_off + (int64_t(kvh) * kv.capacity + pos) * hd;
        float* vc = kv.v[t] + kv.layer_off + (int64_t(kvh) * kv.capacity + pos) * hd;
        for (int d = tid; d < hd; d += blockDim.x) kc[d] = kn[d], vc[d] = vn[d];
      }
    }
    __syncthreads();
  }
  float qr[kLaneDims], acc[kLaneDims];
#pragma unroll
  for (int i = 0; i < kLaneDims; ++i) {
    const int d = lane + kWarp * i;
    qr[i] = d < hd ? (kFused ? qs[d] : q[t * qd + int64_t(h) * hd + d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = lo; j0 < hi; j0 += kAttnTile) {
    const int cnt = int(hi - j0 < kAttnTile ? hi - j0 : kAttnTile);
#pragma unroll 4
    for (int jj = warp; jj < cnt; jj += nwarps) {
      const float* kr = has_new && j0 + jj == pos ? kn : K + (j0 + jj) * hd;
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < kLaneDims; ++i) {
        const int d = lane + kWarp * i;
        if (d < hd) s += qr[i] * kr[d];
      }
      s = warp_sum(s);
      if (lane == 0) ps[jj] = s * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int jj = tid; jj < cnt; jj += blockDim.x) mx = fmaxf(mx, ps[jj]);
    mx = block_max(mx);
    const float m_new = fmaxf(m, mx);
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    float sum = 0.0f;
    for (int jj = tid; jj < cnt; jj += blockDim.x) {
      const float e = expf(ps[jj] - m_new);
      ps[jj] = e;
      sum += e;
    }
    sum = block_sum(sum);  // its barriers also publish ps[]
    l = l * corr + sum;
#pragma unroll
    for (int i = 0; i < kLaneDims; ++i) acc[i] *= corr;
#pragma unroll 4
    for (int jj = warp; jj < cnt; jj += nwarps) {
      const float p = ps[jj];
      const float* vr = has_new && j0 + jj == pos ? vn : V + (j0 + jj) * hd;
#pragma unroll
      for (int i = 0; i < kLaneDims; ++i) {
        const int d = lane + kWarp * i;
        if (d < hd) acc[i] += p * vr[d];
      }
    }
    m = m_new;
    __syncthreads();  // ps[] is rewritten by the next tile
  }
#pragma unroll
  for (int i = 0; i < kLaneDims; ++i) {
    const int d = lane + kWarp * i;
    if (d < hd) red[warp * hd + d] = acc[i];
  }
  __syncthreads();
  if (splits > 1) {
    float* part = partial + ((t * heads + h) * splits + blockIdx.z) * (2 + hd);
    if (tid == 0) part[0] = m, part[1] = l;
    for (int d = tid; d < hd; d += blockDim.x) {
      float o = 0.0f;
      for (int w = 0; w < nwarps; ++w) o += red[w * hd + d];
      part[2 + d] = o;
    }
    if constexpr (kFused) {
      // The last of the (row, head)'s split blocks to finish merges them (no merge kernel): each block's partial is
      // made visible before its count, and the last one puts the counter back to 0 for the next launch.
      if (rf.counters) {
        __shared__ bool last;
        __threadfence();
        __syncthreads();
        if (tid == 0) last = atomicAdd(rf.counters + t * heads + h, 1) == splits - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
        merge_partials(partial + (t * heads + h) * splits * (2 + hd), out + t * qd + int64_t(h) * hd, hd, splits,
                       gate ? gate + (t * heads + h) * 2 * hd + hd : nullptr);
        if (tid == 0) rf.counters[t * heads + h] = 0;
      }
    }
    return;
  }
  for (int d = tid; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < nwarps; ++w) o += red[w * hd + d];
    o /= l;
    if (gate) {
      const float g = gate[(t * heads + h) * 2 * hd + hd + d];
      o *= 1.0f / (1.0f + expf(-g));
    }
    out[t * qd + int64_t(h) * hd + d] = o;
  }
}

// Block (head, row): the splits' partial softmaxes merged (merge_partials).
__global__ void attention_merge_kernel(const float* __restrict__ partial, float* __restrict__ out, int heads, int hd,
                                       int splits, const float* __restrict__ gate) {
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  merge_partials(partial + (t * heads + h) * splits * (2 + hd), out + t * int64_t(heads) * hd + int64_t(h) * hd, hd,
                 splits, gate ? gate + (t * heads + h) * 2 * hd + hd : nullptr);
}

__global__ void swiglu_kernel(const float* g, const float* u, float* out, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) {
    const float x = g[i];
    out[i] = (x / (1.0f + expf(-x))) * u[i];
  }
}

__global__ void scale_rows_sigmoid_kernel(float* x, const float* gate, int64_t H) {
  const float g = 1.0f / (1.0f + expf(-gate[blockIdx.x]));
  float* r = x + int64_t(blockIdx.x) * H;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) r[i] *= g;
}

__global__ void gather_rows_kernel(const float* src, const int32_t* rows, float* dst, int64_t H) {
  const float* s = src + int64_t(rows[blockIdx.x]) * H;
  float* d = dst + int64_t(blockIdx.x) * H;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) d[i] = s[i];
}

unsigned blocks_for(int64_t count, int threads) { return unsigned((count + threads - 1) / threads); }

__device__ inline uint16_t to_bf16(float f) {
  const uint32_t b = __float_as_uint(f);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu)) return uint16_t((b >> 16) | 0x40u);  // quiet NaN
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);  // round to nearest even
}

__device__ inline float half_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(uint16_t(p[0] | (uint16_t(p[1]) << 8))));
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (12 packed bytes).
__device__ inline void k_scale_min(int j, const uint8_t* q, float& sc, float& m) {
  if (j < 4) {
    sc = float(q[j] & 63), m = float(q[j + 4] & 63);
  } else {
    sc = float((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = float((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

enum : uint32_t { kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14 };

// v as bf16 into hi[i] and, with lo, v - bf16(v) as bf16 into lo[i].
__device__ inline void put_split(float v, uint16_t* hi, uint16_t* lo, int64_t i) {
  const uint16_t h = to_bf16(v);
  hi[i] = h;
  if (lo) lo[i] = to_bf16(v - __uint_as_float(uint32_t(h) << 16));
}

__global__ void to_bf16_kernel(const float* x, uint16_t* y, uint16_t* lo, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) put_split(x[i], y, lo, i);
}

__global__ void swiglu_halves_bf16_kernel(const float* y, int64_t I, uint16_t* out, uint16_t* lo, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t t = i / I, c = i % I;
  const float g = y[t * 2 * I + c];
  put_split((g / (1.0f + expf(-g))) * y[t * 2 * I + I + c], out, lo, i);
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t rows, int64_t ldy, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) y[(i / rows) * ldy + i % rows] += bias[i % rows];
}

__global__ void gather_rows_bf16_kernel(const float* src, const int32_t* rows, uint16_t* dst, uint16_t* lo,
                                        int64_t H) {
  const int32_t r = rows[blockIdx.x];
  uint16_t* d = dst + int64_t(blockIdx.x) * H;
  uint16_t* l = lo ? lo + int64_t(blockIdx.x) * H : nullptr;
  if (r < 0) {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) d[i] = 0;
    if (l)
      for (int64_t i = threadIdx.x; i < H; i += blockDim.x) l[i] = 0;
    return;
  }
  const float* s = src + int64_t(r) * H;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) put_split(s[i], d, l, i);
}

__global__ void combine_pairs_kernel(const float* y, const int32_t* row_pairs, const float* weight, int64_t k,
                                     int64_t H, float* out, bool accumulate) {
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    float s = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t p = row_pairs[t * k + j];
      if (p >= 0) s += weight[p] * y[int64_t(p) * H + i];
    }
    out[t * H + i] = accumulate ? out[t * H + i] + s : s;
  }
}

// Eight consecutive weights k .. k + 7 (k a multiple of 8) of a row of GGUF blocks, as dequant_kernel computes them.
__device__ inline void dequant8(uint32_t type, const uint8_t* __restrict__ row, int64_t k, float* w) {
  if (type == kQ4_K || type == kQ5_K) {
    const bool five = type == kQ5_K;
    const uint8_t* p = row + (k / 256) * (five ? 176 : 144);
    const int i = int(k % 256), c = i / 64, l0 = i % 64, hi = l0 >= 32, l = l0 % 32;
    float sc, m;
    k_scale_min(2 * c + hi, p + 4, sc, m);
    const float d = half_at(p) * sc, mn = half_at(p + 2) * m;
    const uint8_t* q = p + (five ? 48 : 16) + 32 * c + l;
    const uint8_t* qh = p + 16 + l;
    const uint8_t u = uint8_t((hi ? 2 : 1) << (2 * c));
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int v = (hi ? q[j] >> 4 : q[j] & 0xF) + (five && (qh[j] & u) ? 16 : 0);
      w[j] = d * float(v) - mn;
    }
    return;
  }
  if (type == kQ6_K) {
    const uint8_t* p = row + (k / 256) * 210;
    const int i = int(k % 256), h = i / 128, quarter = (i % 128) / 32, l = i % 32;
    const uint8_t* ql = p + 64 * h + l + (quarter & 1) * 32;
    const uint8_t* qh = p + 128 + 32 * h + l;
    const float d = half_at(p + 208) * float(reinterpret_cast<const int8_t*>(p + 192)[8 * h + l / 16 + 2 * quarter]);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int lo = quarter < 2 ? ql[j] & 0xF : ql[j] >> 4;
      w[j] = d * float((lo | (((qh[j] >> (2 * quarter)) & 3) << 4)) - 32);
    }
    return;
  }
  const int o = int(k % 32);
  if (type == kQ8_0) {
    const uint8_t* p = row + (k / 32) * 34;
    const float d = half_at(p);
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = d * float(int8_t(p[2 + o + j]));
    return;
  }
  // Q4_0, Q4_1, Q5_0, Q5_1: weight j < 16 from the low nibble of qs[j], j >= 16 from the high nibble of qs[j - 16].
  const bool one = type == kQ4_1 || type == kQ5_1, five = type == kQ5_0 || type == kQ5_1;
  const int bytes = type == kQ4_0 ? 18 : type == kQ4_1 ? 20 : type == kQ5_0 ? 22 : 24;
  const uint8_t* p = row + (k / 32) * bytes;
  const float d = half_at(p), m = one ? half_at(p + 2) : 0.0f;
  const uint8_t* hp = p + (one ? 4 : 2);
  const uint32_t qh = five ? uint32_t(hp[0]) | (uint32_t(hp[1]) << 8) | (uint32_t(hp[2]) << 16) | (uint32_t(hp[3]) << 24)
                           : 0u;
  const uint8_t* qs = hp + (five ? 4 : 0);
  const int shift = o >= 16 ? 4 : 0, base = o % 16;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    int v = (qs[base + j] >> shift) & 0xF;
    if (five) v |= int((qh >> (o + j)) & 1u) << 4;
    w[j] = one ? float(v) * d + m : float(v - (five ? 16 : 8)) * d;
  }
}

// Grid (ranges of 8-weight groups, list entries): thread i writes weights [8 i, 8 i + 8) of entry j's matrix (rows of
// `cols` weights, `row_bytes` of blocks each, at arena + slots[j] * slot_bytes + offset) as bf16 into
// dst + j * stride: 16-byte stores side by side across a warp.
__global__ void dequant_slots_kernel(uint32_t type, const uint8_t* __restrict__ arena, int64_t slot_bytes,
                                     int64_t offset, int64_t row_bytes, int64_t cols, const int32_t* __restrict__ slots,
                                     int64_t groups, uint16_t* __restrict__ dst, int64_t stride) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= groups) return;
  const int64_t w0 = i * 8, r = w0 / cols;
  float v[8];
  dequant8(type, arena + int64_t(slots[blockIdx.y]) * slot_bytes + offset + r * row_bytes, w0 - r * cols, v);
  uint32_t u[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) u[q] = uint32_t(to_bf16(v[2 * q])) | (uint32_t(to_bf16(v[2 * q + 1])) << 16);
  *reinterpret_cast<uint4*>(dst + int64_t(blockIdx.y) * stride + w0) = make_uint4(u[0], u[1], u[2], u[3]);
}

struct ExpertArgs {
  const uint8_t* arena;
  int64_t slot_bytes, rows, cols;
  ExpertMatrix a, b;  // gate and up (kGateUp), or down (a)
  const ExpertUnit* units;
  const float* x;
  const int32_t* x_row;  // null: pair q reads x row q
  float* y;              // y[q * rows + r]
};

// Grid (row blocks, units); a warp per output row r of one unit's slot: with kGateUp the gate's and the up's row r,
// written as silu(gate) * up. R >= every unit's rows (R = 1 for decode keeps the registers, so the occupancy, low).
template <bool kGateUp, int R>
__global__ void expert_kernel(ExpertArgs a) {
  const ExpertUnit u = a.units[blockIdx.y];
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= a.rows) return;
  const uint8_t* slot = a.arena + int64_t(u.slot) * a.slot_bytes;
  const uint8_t* wa = slot + a.a.offset + r * a.a.row_bytes;
  const uint8_t* wb = slot + a.b.offset + r * a.b.row_bytes;
  const float* xr[R];
#pragma unroll
  for (int j = 0; j < R; ++j)
    xr[j] = a.x + int64_t(j < u.rows ? (a.x_row ? a.x_row[u.q0 + j] : u.q0 + j) : 0) * a.cols;
  float acc[R] = {}, acc2[R] = {};
  for (int64_t k = int64_t(lane) * 8; k < a.cols; k += 256) {
    float va[8], vb[8];
    dequant8(a.a.type, wa, k, va);
    if (kGateUp) dequant8(a.b.type, wb, k, vb);
#pragma unroll
    for (int j = 0; j < R; ++j) {
      if (j >= u.rows) break;
      const float4 x0 = __ldg(reinterpret_cast<const float4*>(xr[j] + k));
      const float4 x1 = __ldg(reinterpret_cast<const float4*>(xr[j] + k + 4));
      acc[j] += va[0] * x0.x + va[1] * x0.y + va[2] * x0.z + va[3] * x0.w + va[4] * x1.x + va[5] * x1.y +
                va[6] * x1.z + va[7] * x1.w;
      if (kGateUp)
        acc2[j] += vb[0] * x0.x + vb[1] * x0.y + vb[2] * x0.z + vb[3] * x0.w + vb[4] * x1.x + vb[5] * x1.y +
                   vb[6] * x1.z + vb[7] * x1.w;
    }
  }
#pragma unroll
  for (int j = 0; j < R; ++j) {
    if (j >= u.rows) break;
    float v = warp_sum(acc[j]);
    if (kGateUp) v = v / (1.0f + expf(-v)) * warp_sum(acc2[j]);
    if (lane == 0) a.y[int64_t(u.q0 + j) * a.rows + r] = v;
  }
}

// gemv_many_kernel over matrices held as GGUF blocks: a warp per output row, lane l dequantizing weights
// [8 l + 256 i, +8) of it in registers (dequant8: the file's values, fp32) against up to NR rows of x.
template <int NR>
__global__ void block_gemv_many_kernel(ManyArgs a, const float* __restrict__ x, int n, int64_t cols) {
  int j = 0;
  while (j + 1 < a.count && blockIdx.x >= a.first_block[j + 1]) ++j;
  const int lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x - a.first_block[j]) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (r >= a.rows[j]) return;
  const uint32_t type = a.type[j];
  const uint8_t* w = static_cast<const uint8_t*>(a.w[j]) + r * a.row_bytes[j];
  float acc[NR];
#pragma unroll
  for (int t = 0; t < NR; ++t) acc[t] = 0.0f;
#pragma unroll 2
  for (int64_t c = int64_t(lane) * 8; c < cols; c += 8 * kWarp) {
    float wf[8];
    dequant8(type, w, c, wf);
    dot8_rows<NR>(wf, x, cols, c, n, acc);
  }
  store_row<NR>(a, j, r, lane, n, acc);
}

__global__ void copy_mapped_kernel(const uint8_t* src, uint8_t* dst, size_t bytes) {
  const size_t stride = size_t(gridDim.x) * blockDim.x, i0 = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if ((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) % 16 == 0) {
    const size_t n16 = bytes / 16;
    for (size_t i = i0; i < n16; i += stride)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    for (size_t i = n16 * 16 + i0; i < bytes; i += stride) dst[i] = src[i];
  } else {
    for (size_t i = i0; i < bytes; i += stride) dst[i] = src[i];
  }
}

// restore_records(): a block per row at a time (grid-stride), a thread per stored byte; the map in shared memory.
__global__ void restore_records_kernel(RecordRows r, int64_t rows, uint8_t* arena, int64_t slot_bytes) {
  extern __shared__ int32_t map[];
  const int sb = r.stored_bytes;
  for (int i = threadIdx.x; i < 10 * sb; i += blockDim.x) map[i] = r.map[i];
  __syncthreads();
  const int32_t* bits = map + 2 * sb;
  const int64_t row_stored = (r.units - 1) * sb + r.last_bytes;
  for (int64_t gr = blockIdx.x; gr < rows; gr += gridDim.x) {
    const int64_t e = gr / r.rows, row = gr % r.rows;
    const uint8_t* rec = r.rec + e * r.expert_bytes + row * r.units * r.record_bytes;
    uint8_t* dst = arena + e * slot_bytes +
                   (row < r.split ? r.first + row * r.row_bytes : r.second + (row - r.split) * r.row_bytes);
    for (int64_t o = threadIdx.x; o < row_stored; o += blockDim.x) {
      const int u = int(o / sb), b = int(o % sb);
      const uint8_t* ru = rec + int64_t(u) * r.record_bytes;
      const int32_t op = map[2 * b], x = map[2 * b + 1];
      int v;
      if ((op & 3) == 0) {
        v = ru[(op >> 2) & 0x3FFF];
      } else if ((op & 3) == 1) {
        const int a = (op >> 2) & 0x3FFF, c = (op >> 16) & 0x3FFF;
        v = ((ru[a >> 1] >> ((a & 1) * 4)) & 0xF) | (((ru[c >> 1] >> ((c & 1) * 4)) & 0xF) << 4);
      } else {
        v = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int k = bits[8 * b + i] & 0xFFFF;
          v |= ((ru[k >> 3] >> (k & 7)) & 1) << i;
        }
      }
      dst[o] = uint8_t(v ^ x);
    }
  }
}

}  // namespace

void gemv(const DeviceMatrix& W, const float* x, float* y, int64_t n, int64_t ldy, cudaStream_t s) {
  const GemvJob job{W, y, ldy};
  gemv_many(&job, 1, x, n, s);
}

void gemv_many(const GemvJob* jobs, int count, const float* x, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  const bool blocks = count >= 1 && jobs[0].w.type != 0;
  bool same = count >= 1 && count <= 3;
  for (int j = 1; j < count && same; ++j)
    same = jobs[j].w.cols == jobs[0].w.cols && (jobs[j].w.type != 0) == blocks &&
           (blocks || jobs[j].w.bf16 == jobs[0].w.bf16);
  if (!same) {
    for (int j = 0; j < count; ++j) gemv(jobs[j].w, x, jobs[j].y, n, jobs[j].ldy, s);
    return;
  }
  constexpr int kThreads = 256, kRowsPerBlock = kThreads / kWarp;
  ManyArgs a{};
  a.count = count;
  a.first_block[0] = 0;
  for (int j = 0; j < count; ++j) {
    a.w[j] = jobs[j].w.w, a.bias[j] = jobs[j].w.bias, a.y[j] = jobs[j].y;
    a.rows[j] = jobs[j].w.rows, a.ldy[j] = jobs[j].ldy;
    a.type[j] = jobs[j].w.type, a.row_bytes[j] = jobs[j].w.row_bytes;
    a.first_block[j + 1] = a.first_block[j] + unsigned((jobs[j].w.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  }
  if (a.first_block[count] == 0) return;
  const int64_t cols = jobs[0].w.cols;
  for (int64_t t0 = 0; t0 < n; t0 += 8) {
    const int nt = int(n - t0 < 8 ? n - t0 : 8);
    ManyArgs at = a;
    for (int j = 0; j < count; ++j) at.y[j] = a.y[j] + t0 * a.ldy[j];
    const float* xt = x + t0 * cols;
    const dim3 grid(a.first_block[count]);
#define GENESIS_MANY(WT)                                                                             \
  if (nt == 1) gemv_many_kernel<WT, 1><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);                  \
  else if (nt == 2) gemv_many_kernel<WT, 2><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);             \
  else if (nt <= 4) gemv_many_kernel<WT, 4><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);             \
  else gemv_many_kernel<WT, 8><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);
    if (blocks) {
      if (nt == 1) block_gemv_many_kernel<1><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);
      else if (nt == 2) block_gemv_many_kernel<2><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);
      else if (nt <= 4) block_gemv_many_kernel<4><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);
      else block_gemv_many_kernel<8><<<grid, kThreads, 0, s>>>(at, xt, nt, cols);
    } else if (jobs[0].w.bf16) {
      GENESIS_MANY(uint16_t)
    } else {
      GENESIS_MANY(float)
    }
#undef GENESIS_MANY
  }
}

void stamp(int64_t* slots, int64_t i, cudaStream_t s) { stamp_kernel<<<1, 1, 0, s>>>(slots, i); }

void add_rms_norm(float* x, const float* a, const float* b, const float* w, float* xn, int64_t n, int64_t H, float eps,
                  cudaStream_t s, float* xn_copy) {
  if (n <= 0) return;
  static const bool plain = [] {
    const char* e = std::getenv("GENESIS_CUDA_NORM");
    return e && std::string(e) == "plain";
  }();
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const bool aligned = ((addr(x) | addr(a) | addr(b) | addr(w) | addr(xn) | addr(xn_copy)) % 16) == 0;
  // Rows in registers: R float4 a thread, R = 2 where the row allows it (2048 floats: 256 threads), else 1 or 4.
  for (const int R : {2, 1, 4}) {
    const int64_t th = H / (4 * R);
    if (plain || !aligned || H % (4 * R) != 0 || th % kWarp != 0 || th > 1024) continue;
    const unsigned g = unsigned(n), t = unsigned(th);
    if (R == 1) add_rms_norm_reg_kernel<1><<<g, t, 0, s>>>(x, a, b, w, xn, xn_copy, H, eps);
    if (R == 2) add_rms_norm_reg_kernel<2><<<g, t, 0, s>>>(x, a, b, w, xn, xn_copy, H, eps);
    if (R == 4) add_rms_norm_reg_kernel<4><<<g, t, 0, s>>>(x, a, b, w, xn, xn_copy, H, eps);
    return;
  }
  add_rms_norm_kernel<<<unsigned(n), 256, 0, s>>>(x, a, b, w, xn, xn_copy, H, eps);
}

void rms_norm_vectors(float* v, int64_t count, int64_t dim, const float* w, float eps, cudaStream_t s) {
  if (count > 0) rms_norm_vectors_kernel<<<unsigned(count), 128, 0, s>>>(v, dim, w, eps);
}

void clip(float* v, int64_t count, float c, cudaStream_t s) {
  if (count > 0) clip_kernel<<<blocks_for(count, 256), 256, 0, s>>>(v, count, c);
}

void split_gated_q(const float* qg, float* q, int64_t n, int64_t heads, int64_t hd, cudaStream_t s) {
  if (n > 0) split_gated_q_kernel<<<dim3(unsigned(heads), unsigned(n)), 128, 0, s>>>(qg, q, hd);
}

void rope_store(float* q, float* k, const float* v, int64_t n, int64_t heads, int64_t kv_heads, int64_t hd,
                int64_t rotary_dim, const float* inv_freq, float scaling, const QkPrep& prep, const KvRows& kv,
                cudaStream_t s) {
  if (n > 0)
    rope_store_kernel<<<dim3(unsigned(heads + kv_heads), unsigned(n)), 128, 0, s>>>(
        q, k, v, int(heads), int(kv_heads), int(hd), int(rotary_dim), inv_freq, scaling, prep, kv);
}

void attention(const float* q, float* out, int64_t n, int64_t heads, int64_t kv_heads, int64_t hd, const KvRows& kv,
               int64_t window, float scale, const float* gate, cudaStream_t s, float* partial, int splits) {
  if (n <= 0) return;
  if (!partial) splits = 1;
  const size_t shared = size_t(kAttnTile + (kAttnThreads / kWarp) * hd) * sizeof(float);
  attention_kernel<false><<<dim3(unsigned(heads), unsigned(n), unsigned(splits)), kAttnThreads, shared, s>>>(
      q, out, int(heads), int(kv_heads), int(hd), kv, window, scale, gate, partial, splits, RopeFuse{});
  if (splits > 1)
    attention_merge_kernel<<<dim3(unsigned(heads), unsigned(n)), 128, 0, s>>>(partial, out, int(heads), int(hd),
                                                                              splits, gate);
}

void rope_attention(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t heads,
                    int64_t kv_heads, int64_t hd, int64_t rotary_dim, const float* inv_freq, float scaling,
                    const QkPrep& prep, const KvRows& kv, int64_t window, float scale, const float* gate, cudaStream_t s,
                    float* partial, int splits, int* counters) {
  if (n <= 0) return;
  if (!partial) splits = 1;
  const RopeFuse rf{k, v, inv_freq, scaling, int(rotary_dim), prep, splits > 1 ? counters : nullptr};
  const size_t shared = size_t(kAttnTile + (kAttnThreads / kWarp) * hd + 3 * hd) * sizeof(float);
  attention_kernel<true><<<dim3(unsigned(heads), unsigned(n), unsigned(splits)), kAttnThreads, shared, s>>>(
      q, out, int(heads), int(kv_heads), int(hd), kv, window, scale, gate, partial, splits, rf);
  if (splits > 1 && !counters)
    attention_merge_kernel<<<dim3(unsigned(heads), unsigned(n)), 128, 0, s>>>(partial, out, int(heads), int(hd),
                                                                              splits, gate);
}

void swiglu(const float* g, const float* u, float* out, int64_t count, cudaStream_t s) {
  if (count > 0) swiglu_kernel<<<blocks_for(count, 256), 256, 0, s>>>(g, u, out, count);
}

void scale_rows_sigmoid(float* x, const float* gate, int64_t n, int64_t H, cudaStream_t s) {
  if (n > 0) scale_rows_sigmoid_kernel<<<unsigned(n), 256, 0, s>>>(x, gate, H);
}

bool can_dequantize(uint32_t t) {
  return t == kQ4_0 || t == kQ4_1 || t == kQ5_0 || t == kQ5_1 || t == kQ8_0 || t == kQ4_K || t == kQ5_K || t == kQ6_K;
}

void convert_bf16(const float* x, uint16_t* y, int64_t count, cudaStream_t s, uint16_t* lo) {
  if (count > 0) to_bf16_kernel<<<blocks_for(count, 256), 256, 0, s>>>(x, y, lo, count);
}

void swiglu_halves_bf16(const float* y, int64_t n, int64_t I, uint16_t* out, cudaStream_t s, uint16_t* lo) {
  if (n > 0 && I > 0) swiglu_halves_bf16_kernel<<<blocks_for(n * I, 256), 256, 0, s>>>(y, I, out, lo, n * I);
}

void add_bias(float* y, const float* bias, int64_t n, int64_t rows, int64_t ldy, cudaStream_t s) {
  if (n > 0 && rows > 0) add_bias_kernel<<<blocks_for(n * rows, 256), 256, 0, s>>>(y, bias, rows, ldy, n * rows);
}

void gather_rows_bf16(const float* src, const int32_t* rows, uint16_t* dst, int64_t m, int64_t H, cudaStream_t s,
                      uint16_t* lo) {
  if (m > 0) gather_rows_bf16_kernel<<<unsigned(m), 256, 0, s>>>(src, rows, dst, lo, H);
}

void combine_pairs(const float* y, const int32_t* row_pairs, const float* weight, int64_t n, int64_t k, int64_t H,
                   float* out, cudaStream_t s, bool accumulate) {
  if (n > 0) combine_pairs_kernel<<<unsigned(n), 256, 0, s>>>(y, row_pairs, weight, k, H, out, accumulate);
}

// Block t: row t's router logits [E] -> softmax, the top k (larger probability first, the lower id on ties: the
// host's route_top_k order), renormalized when asked; then the pair lists the expert kernels and combine_pairs read
// (pair q = t * k + j, a unit of one row each) and the chosen ids for the host's usage counts. Picked experts are
// flagged (never chosen twice, whatever the values: -inf or NaN logits included); every rank gets a valid id.
__global__ void route_top_k_kernel(const float* __restrict__ logits, int E, int k, bool renorm,
                                   const int32_t* __restrict__ slot, int32_t* __restrict__ lists, int Q,
                                   int32_t* __restrict__ chosen) {
  extern __shared__ float sp[];                          // [E] probabilities
  unsigned char* picked = reinterpret_cast<unsigned char*>(sp + E);  // [E]
  __shared__ int s_idx[32];
  __shared__ float s_val[32];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % kWarp, wid = tid / kWarp, nw = blockDim.x / kWarp;
  float mx = -INFINITY;
  for (int e = tid; e < E; e += blockDim.x) mx = fmaxf(mx, logits[t * E + e]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int e = tid; e < E; e += blockDim.x) {
    const float p = expf(logits[t * E + e] - mx);
    sp[e] = p;
    picked[e] = 0;
    sum += p;
  }
  sum = block_sum(sum);  // its barriers also publish sp[] and picked[]
  float picked_sum = 0.0f;
  int32_t* row_q = lists;
  float* q_w = reinterpret_cast<float*>(lists + Q);
  int32_t* q_row = lists + 2 * Q;
  int32_t* units = lists + 3 * Q;
  // (v, i) beats (w, j): a candidate beats none (i >= 0 > j), then the larger value, then the lower id; NaN values
  // lose to numbers and tie among themselves by id.
  auto better = [](float v, int i, float w, int j) {
    if (i < 0) return false;
    if (j < 0) return true;
    const bool vn = v != v, wn = w != w;
    if (vn != wn) return wn;
    if (!vn && v != w) return v > w;
    return i < j;
  };
  for (int j = 0; j < k; ++j) {
    float v = 0.0f;
    int idx = -1;
    for (int e = tid; e < E; e += blockDim.x)
      if (!picked[e] && better(sp[e], e, v, idx)) v = sp[e], idx = e;
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
      if (better(ov, oi, v, idx)) v = ov, idx = oi;
    }
    if (lane == 0) s_val[wid] = v, s_idx[wid] = idx;
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < nw; ++w)
        if (better(s_val[w], s_idx[w], s_val[0], s_idx[0])) s_val[0] = s_val[w], s_idx[0] = s_idx[w];
      const int e = s_idx[0] >= 0 && s_idx[0] < E ? s_idx[0] : 0;  // k <= E: always a candidate; never out of range
      const int q = int(t) * k + j;
      const float p = sp[e] / sum;
      q_w[q] = p;
      picked_sum += p;
      row_q[q] = q;
      q_row[q] = int32_t(t);
      units[3 * q] = slot[e], units[3 * q + 1] = q, units[3 * q + 2] = 1;
      if (chosen) chosen[q] = e;
      picked[e] = 1;
    }
    __syncthreads();
  }
  if (tid == 0 && renorm)
    for (int j = 0; j < k; ++j) q_w[int(t) * k + j] /= picked_sum;
}

constexpr int kExpertWarps = 8;

template <bool kGateUp>
void launch_expert(const ExpertArgs& a, int64_t n_units, int max_rows, cudaStream_t s) {
  const dim3 grid(unsigned((a.rows + kExpertWarps - 1) / kExpertWarps), unsigned(n_units));
  if (max_rows <= 1) expert_kernel<kGateUp, 1><<<grid, kExpertWarps * 32, 0, s>>>(a);
  else if (max_rows <= 2) expert_kernel<kGateUp, 2><<<grid, kExpertWarps * 32, 0, s>>>(a);
  else if (max_rows <= 4) expert_kernel<kGateUp, 4><<<grid, kExpertWarps * 32, 0, s>>>(a);
  else expert_kernel<kGateUp, kExpertUnitRows><<<grid, kExpertWarps * 32, 0, s>>>(a);
}

void dequantize_slots_bf16(const ExpertMatrix& m, int64_t rows, int64_t cols, const uint8_t* arena, int64_t slot_bytes,
                           const int32_t* slots, int64_t count, uint16_t* dst, int64_t stride, cudaStream_t s) {
  const int64_t groups = rows * cols / 8;
  if (groups > 0 && count > 0)
    dequant_slots_kernel<<<dim3(blocks_for(groups, 256), unsigned(count)), 256, 0, s>>>(
        m.type, arena, slot_bytes, m.offset, m.row_bytes, cols, slots, groups, dst, stride);
}

std::vector<int32_t> make_record_map(const int16_t* source, const uint8_t* invert, int stored_bytes) {
  // Per stored byte: {kind | a << 2 | b << 16, xor}: kind 0 a whole record byte a; kind 1 the low nibble from record
  // nibble a (byte a / 2, the high half when a is odd), the high from nibble b; kind 2 bit by bit (the bit table).
  // Then per stored bit: its record bit | 1 << 16 when inverted.
  std::vector<int32_t> m(size_t(stored_bytes) * 10, 0);
  for (int o = 0; o < stored_bytes; ++o) {
    const int16_t* src = source + 8 * o;
    int32_t x = 0;
    for (int i = 0; i < 8; ++i) x |= int32_t(invert[8 * o + i] & 1) << i;
    bool byte = src[0] % 8 == 0, nib = src[0] % 4 == 0 && src[4] % 4 == 0;
    for (int i = 1; i < 8; ++i) byte = byte && src[i] == src[0] + i;
    for (int i = 1; i < 4; ++i) nib = nib && src[i] == src[0] + i && src[4 + i] == src[4] + i;
    if (byte) m[size_t(2 * o)] = 0 | (src[0] / 8) << 2;
    else if (nib) m[size_t(2 * o)] = 1 | (src[0] / 4) << 2 | (src[4] / 4) << 16;
    else m[size_t(2 * o)] = 2;
    m[size_t(2 * o + 1)] = x;
    for (int i = 0; i < 8; ++i)
      m[size_t(2 * stored_bytes + 8 * o + i)] = int32_t(src[i]) | int32_t(invert[8 * o + i] & 1) << 16;
  }
  return m;
}

void copy_mapped(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (bytes == 0) return;
  const unsigned grid = unsigned(std::min<size_t>((bytes + 16 * 256 - 1) / (16 * 256), 264));
  copy_mapped_kernel<<<grid, 256, 0, s>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), bytes);
}

void restore_records(const RecordRows& r, int64_t experts, uint8_t* arena, int64_t slot_bytes, cudaStream_t s) {
  const int64_t rows = experts * r.rows;
  if (rows <= 0 || r.units <= 0) return;
  const size_t shared = size_t(r.stored_bytes) * 10 * sizeof(int32_t);
  const unsigned grid = unsigned(std::min<int64_t>(rows, 4096));
  restore_records_kernel<<<grid, 256, shared, s>>>(r, rows, arena, slot_bytes);
}

void route_top_k(const float* logits, int64_t n, int64_t E, int64_t k, bool renorm, const int32_t* slot,
                 int32_t* lists, int64_t Q, int32_t* chosen, cudaStream_t s) {
  if (n <= 0) return;
  route_top_k_kernel<<<unsigned(n), 256, size_t(E) * (sizeof(float) + 1), s>>>(logits, int(E), int(k), renorm, slot,
                                                                               lists, int(Q), chosen);
}

void expert_gate_up(const uint8_t* arena, int64_t slot_bytes, const ExpertMatrix& gate, const ExpertMatrix& up,
                    int64_t I, int64_t H, const ExpertUnit* units, int64_t n_units, int max_rows, const float* x,
                    const int32_t* x_row, float* act, cudaStream_t s) {
  if (n_units <= 0 || I <= 0) return;
  launch_expert<true>({arena, slot_bytes, I, H, gate, up, units, x, x_row, act}, n_units, max_rows, s);
}

void expert_down(const uint8_t* arena, int64_t slot_bytes, const ExpertMatrix& down, int64_t H, int64_t I,
                 const ExpertUnit* units, int64_t n_units, int max_rows, const float* act, float* y, cudaStream_t s) {
  if (n_units <= 0 || H <= 0) return;
  launch_expert<false>({arena, slot_bytes, H, I, down, down, units, act, nullptr, y}, n_units, max_rows, s);
}

void gather_rows(const float* src, const int32_t* rows, float* dst, int64_t m, int64_t H, cudaStream_t s) {
  if (m > 0) gather_rows_kernel<<<unsigned(m), 256, 0, s>>>(src, rows, dst, H);
}

}  // namespace genesis::cuda
