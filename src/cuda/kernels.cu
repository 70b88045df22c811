// The hybrid step's GPU kernels (kernels.h). Plain CUDA C++: memory-bound products and small element-wise ops, each
// written for clarity first; the decode step's GPU part is small next to the CPU's routed experts.
#include <cuda_bf16.h>

#include <cstdint>

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
};

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
  } else {
    for (int64_t c = lane; c < cols; c += kWarp) {
      const float wv = load1(w + c);
#pragma unroll
      for (int t = 0; t < NR; ++t)
        if (t < n) acc[t] += wv * __ldg(x + int64_t(t) * cols + c);
    }
  }
#pragma unroll
  for (int t = 0; t < NR; ++t) {
    if (t < n) {
      const float s = warp_sum(acc[t]);
      if (lane == 0) a.y[j][int64_t(t) * a.ldy[j] + r] = s + (a.bias[j] ? a.bias[j][r] : 0.0f);
    }
  }
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

// Block (vector, row): vectors [0, heads) are q's heads, [heads, heads + kv_heads) k's (which also store k and v).
__global__ void rope_store_kernel(float* __restrict__ q, float* __restrict__ k, const float* __restrict__ v,
                                  int heads, int kv_heads, int hd, int rotary_dim, const float* __restrict__ inv_freq,
                                  float scaling, QkPrep prep, KvRows kv) {
  const int i = blockIdx.x;
  const int64_t t = blockIdx.y;
  const bool is_q = i < heads;
  float* vec = is_q ? q + (t * heads + i) * hd : k + (t * kv_heads + (i - heads)) * hd;
  const float* nw = is_q ? prep.q_norm : prep.k_norm;
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
  const int32_t pos = kv.pos[t];
  for (int d = threadIdx.x; d < half; d += blockDim.x) {
    const float a = float(pos) * inv_freq[d];
    const float c = float(cos(double(a))) * scaling, s = float(sin(double(a))) * scaling;
    const float x1 = vec[d], x2 = vec[d + half];
    vec[d] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    vec[d + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
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

constexpr int kAttnThreads = 256;  // 8 warps
constexpr int kAttnTile = 256;     // keys scored per round of the online softmax
constexpr int kLaneDims = 8;       // head dims per lane: d = lane + 32 i (head_dim <= 256)

// Block (head, row): the row's query head against its KV head's keys [first, pos], online softmax over tiles. Each
// warp takes every 8th key of a tile, for the scores (its lanes over the head dims, then a warp sum) and for the
// weighted values (each lane accumulating its dims); the warps' partial values are summed at the end.
__global__ void attention_kernel(const float* __restrict__ q, float* __restrict__ out, int heads, int kv_heads, int hd,
                                 KvRows kv, int64_t window, float scale, const float* __restrict__ gate) {
  extern __shared__ float sm[];
  float* ps = sm;               // [kAttnTile] scores, then probabilities
  float* red = sm + kAttnTile;  // [warps][hd] the warps' weighted values
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int kvh = h / (heads / kv_heads);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, nwarps = blockDim.x / kWarp;
  const int64_t qd = int64_t(heads) * hd;
  float qr[kLaneDims], acc[kLaneDims];
#pragma unroll
  for (int i = 0; i < kLaneDims; ++i) {
    const int d = lane + kWarp * i;
    qr[i] = d < hd ? q[t * qd + int64_t(h) * hd + d] : 0.0f;
    acc[i] = 0.0f;
  }
  const int64_t pos = kv.pos[t];
  const int64_t first = window > 0 ? (pos - window + 1 > 0 ? pos - window + 1 : 0) : 0;
  const float* K = kv.k[t] + kv.layer_off + int64_t(kvh) * kv.capacity * hd;
  const float* V = kv.v[t] + kv.layer_off + int64_t(kvh) * kv.capacity * hd;
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = first; j0 <= pos; j0 += kAttnTile) {
    const int cnt = int(pos + 1 - j0 < kAttnTile ? pos + 1 - j0 : kAttnTile);
#pragma unroll 4
    for (int jj = warp; jj < cnt; jj += nwarps) {
      const float* kr = K + (j0 + jj) * hd;
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
      const float* vr = V + (j0 + jj) * hd;
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

}  // namespace

void gemv(const DeviceMatrix& W, const float* x, float* y, int64_t n, int64_t ldy, cudaStream_t s) {
  const GemvJob job{W, y, ldy};
  gemv_many(&job, 1, x, n, s);
}

void gemv_many(const GemvJob* jobs, int count, const float* x, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bool same = count >= 1 && count <= 3;
  for (int j = 1; j < count && same; ++j)
    same = jobs[j].w.cols == jobs[0].w.cols && jobs[j].w.bf16 == jobs[0].w.bf16;
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
    if (jobs[0].w.bf16) {
      GENESIS_MANY(uint16_t)
    } else {
      GENESIS_MANY(float)
    }
#undef GENESIS_MANY
  }
}

void add_rms_norm(float* x, const float* a, const float* b, const float* w, float* xn, int64_t n, int64_t H, float eps,
                  cudaStream_t s, float* xn_copy) {
  if (n > 0) add_rms_norm_kernel<<<unsigned(n), 256, 0, s>>>(x, a, b, w, xn, xn_copy, H, eps);
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
               int64_t window, float scale, const float* gate, cudaStream_t s) {
  if (n <= 0) return;
  const size_t shared = size_t(kAttnTile + (kAttnThreads / kWarp) * hd) * sizeof(float);
  attention_kernel<<<dim3(unsigned(heads), unsigned(n)), kAttnThreads, shared, s>>>(
      q, out, int(heads), int(kv_heads), int(hd), kv, window, scale, gate);
}

void swiglu(const float* g, const float* u, float* out, int64_t count, cudaStream_t s) {
  if (count > 0) swiglu_kernel<<<blocks_for(count, 256), 256, 0, s>>>(g, u, out, count);
}

void scale_rows_sigmoid(float* x, const float* gate, int64_t n, int64_t H, cudaStream_t s) {
  if (n > 0) scale_rows_sigmoid_kernel<<<unsigned(n), 256, 0, s>>>(x, gate, H);
}

void gather_rows(const float* src, const int32_t* rows, float* dst, int64_t m, int64_t H, cudaStream_t s) {
  if (m > 0) gather_rows_kernel<<<unsigned(m), 256, 0, s>>>(src, rows, dst, H);
}

}  // namespace genesis::cuda
