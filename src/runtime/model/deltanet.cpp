// A Gated DeltaNet layer (Qwen3-Next's linear attention) over the states of the step's sequences, as transformers'
// Qwen3NextGatedDeltaNet computes it (the projections, norms and out_proj over all rows of the step; the conv and the
// delta rule per sequence, over its own rows and state):
//   in_proj_qkvz (or its split in_proj_qkv + in_proj_z) and in_proj_ba in one parallel region; q, k, v through a
//   depthwise causal conv1d (kernel 4) + SiLU whose window starts with the conv state (the last kernel - 1 inputs);
//   q and k L2-normalized (q also times 1/sqrt(key_head_dim)); beta = sigmoid(b), g = -exp(A_log) *
//   softplus(a + dt_bias); per value head the delta rule
//     S <- S * exp(g);  S <- S + k (beta (v - S^T k))^T;  o = S^T q
//   over its [key_head_dim, value_head_dim] fp32 state (each key head serves value_heads / key_heads consecutive
//   value heads); the output RMSNorm-ed per head, times the norm weight and silu(z); out_proj; the residual.
// Decode runs the delta rule token by token; prefill in transformers' chunked form (chunks of kDeltaChunk rows).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/model/dense.h"
#include "runtime/model/forward.h"
#include "runtime/model/ops.h"

namespace genesis::runtime {

namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
// torch.nn.functional.softplus (beta 1, threshold 20).
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// x * rsqrt(sum(x^2) + 1e-6) * scale (transformers' l2norm, the FLA library's epsilon).
void l2_normalize(const float* x, float* y, int64_t n, float scale) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss + 1e-6f);
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * inv) * scale;
}

}  // namespace

void Session::deltanet(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t nk = c_.linear_num_key_heads, nv = c_.linear_num_value_heads;
  const int64_t dk = c_.linear_key_head_dim, dv = c_.linear_value_head_dim, r = nv / nk;
  const int64_t KD = c_.linear_key_dim(), VD = c_.linear_value_dim(), CD = c_.linear_conv_dim();
  const int64_t K = c_.linear_conv_kernel, QKVZ = 2 * KD + 2 * VD;
  auto fit = [](std::vector<float>& v, int64_t size) {
    if (v.size() < size_t(size)) v.resize(size_t(size));
  };
  const bool split = !l.in_qkv.empty();
  fit(qkvz_, split ? 0 : n * QKVZ), fit(ba_, n * 2 * nv), fit(conv_in_, split ? n * CD : 0), fit(conv_out_, n * CD);
  fit(z_, split ? n * VD : 0), fit(beta_, n * nv), fit(decay_, n * nv), fit(core_, n * VD);

  // A split projection (in_qkv, in_z) writes the conv inputs in the conv channels' order (all key heads' q, then k,
  // then all value heads' v) and z; the fused one (in_qkvz) per key head [q, k, its value heads' v, their z]. The
  // tasks below read either in place.
  if (split) {
    const DenseJob proj[] = {{&l.in_qkv, conv_in_.data()}, {&l.in_z, z_.data()}, {&l.in_ba, ba_.data()}};
    dense_products(proj, xn_.data(), n, pool_);
  } else {
    const DenseJob proj[] = {{&l.in_qkvz, qkvz_.data()}, {&l.in_ba, ba_.data()}};
    dense_products(proj, xn_.data(), n, pool_);
  }
  clock_.lap(Op::dense);
  // One task per (sequence, value head), each on its own state, in one region: the depthwise causal conv + SiLU of
  // the channels the head reads (its key head's q and k, recomputed by each of that key head's value heads, and its
  // own v), q and k L2-normalized (q also times 1/sqrt(key_head_dim)), the delta rule, then the gated RMSNorm of the
  // head's outputs: rmsnorm(o) * w * silu(z). (The conv had a region of its own: one wake-up and barrier more per
  // layer, and the normalization ran on the calling thread.)
  // A sequence's conv window is its conv state's kernel - 1 rows, then its rows' conv inputs; the tasks read both in
  // place. Its last kernel - 1 rows become the conv state, each channel shifted by a task that reads it, once no task
  // reads it any more: a head's v channels by the head's task, a key head's q and k channels by the last of its value
  // heads' tasks to finish (a counter per (sequence, key head)). Each task also computes its head's beta and decay.
  // Before, the caller regrouped the fused projection into conv order (48 KB a row), copied every sequence's window
  // and state (224 KB a layer on Qwen3-Next at one row) and computed beta and the decay, between the projections and
  // this region, on one thread.
  const int64_t nseg = int64_t(segs_.size());
  if (group_left_size_ < size_t(nseg * nk)) {
    group_left_ = std::make_unique<std::atomic<int32_t>[]>(size_t(nseg * nk));
    group_left_size_ = size_t(nseg * nk);
  }
  for (int64_t i = 0; i < nseg * nk; ++i) group_left_[size_t(i)].store(int32_t(r), std::memory_order_relaxed);
  const float qscale = float(1.0 / std::sqrt(double(dk)));
  parallel_for(nseg * nv, [&](int64_t task) {
    const int64_t si = task / nv, h = task % nv, kh = h / r, j = h % r;
    const Segment& sg = segs_[size_t(si)];
    float* state = seqs_[size_t(sg.seq)].conv_layer(li);
    // The segment's new conv inputs of the head's q, k and v channels and its z, and their row stride.
    const float *qn, *kn, *vn, *zn;
    int64_t ns;
    if (split) {
      const float* in = &conv_in_[size_t(sg.row0 * CD)];
      qn = in + kh * dk, kn = in + KD + kh * dk, vn = in + 2 * KD + h * dv, ns = CD;
      zn = &z_[size_t(sg.row0 * VD + h * dv)];
    } else {
      const float* grp = &qkvz_[size_t(sg.row0 * QKVZ + kh * (2 * dk + 2 * r * dv))];
      qn = grp, kn = grp + dk, vn = grp + 2 * dk + j * dv, zn = grp + 2 * dk + (r + j) * dv, ns = QKVZ;
    }
    const int64_t zs = split ? VD : QKVZ;
    // Row i of the window of conv channels [c0, c0 + count): the conv state's rows, then the segment's new inputs.
    auto row = [&](int64_t c0, const float* src, int64_t i) {
      return i < K - 1 ? state + i * CD + c0 : src + (i - (K - 1)) * ns;
    };
    // Those channels of the sequence's rows into out (row stride `stride`), SiLU-ed.
    auto conv = [&](int64_t c0, const float* src, int64_t count, float* out, int64_t stride) {
      for (int64_t t = 0; t < sg.n; ++t) {
        float* o = out + t * stride;
        for (int64_t c = 0; c < count; ++c) o[c] = 0.0f;
        for (int64_t i = 0; i < K; ++i) {
          const float* x = row(c0, src, t + i);
          for (int64_t c = 0; c < count; ++c) o[c] += l.conv_w[size_t((c0 + c) * K + i)] * x[c];
        }
        silu(o, count);
      }
    };
    // The window's last kernel - 1 rows of those channels into the conv state, in ascending rows: a row taken from
    // the state comes from a later row, not yet overwritten.
    auto shift = [&](int64_t c0, const float* src, int64_t count) {
      for (int64_t i = 0; i < K - 1; ++i)
        std::memmove(state + i * CD + c0, row(c0, src, i + sg.n), size_t(count) * 4);
    };
    thread_local std::vector<float> qk;
    qk.resize(size_t(2 * sg.n * dk));
    float* q = qk.data();
    float* k = q + sg.n * dk;
    conv(kh * dk, qn, dk, q, dk);
    conv(KD + kh * dk, kn, dk, k, dk);
    conv(2 * KD + h * dv, vn, dv, &conv_out_[size_t(sg.row0 * CD + 2 * KD + h * dv)], CD);
    shift(2 * KD + h * dv, vn, dv);
    // acq_rel: the group's other tasks have read these channels before their decrement.
    if (group_left_[size_t(si * nk + kh)].fetch_sub(1, std::memory_order_acq_rel) == 1) {
      shift(kh * dk, qn, dk);
      shift(KD + kh * dk, kn, dk);
    }
    // beta = sigmoid(b) and the log decay g = -exp(A_log) softplus(a + dt_bias) of the head's rows ([b, a] of a key
    // head's value heads in in_proj_ba).
    for (int64_t t = sg.row0; t < sg.row0 + sg.n; ++t) {
      const float* ba = &ba_[size_t(t * 2 * nv + kh * 2 * r)];
      beta_[size_t(t * nv + h)] = sigmoid(ba[j]);
      decay_[size_t(t * nv + h)] = l.a_neg[size_t(h)] * softplus(ba[r + j] + l.dt_bias[size_t(h)]);
    }
    for (int64_t t = 0; t < sg.n; ++t) {
      l2_normalize(q + t * dk, q + t * dk, dk, qscale);
      l2_normalize(k + t * dk, k + t * dk, dk, 1.0f);
    }
    float* S = seqs_[size_t(sg.seq)].recurrent_layer(li) + h * dk * dv;
    if (chunked_delta_ && sg.n > 1) delta_rule_chunked(S, h, sg.row0, sg.n, q, k);
    else delta_rule_recurrent(S, h, sg.row0, sg.n, q, k);
    for (int64_t t = sg.row0; t < sg.row0 + sg.n; ++t) {
      float* o = &core_[size_t(t * VD + h * dv)];
      rms_norm(o, l.gated_norm.data(), o, dv, c_.rms_norm_eps);
      swiglu(zn + (t - sg.row0) * zs, o, o, dv);
    }
  });
  clock_.lap(Op::delta_rule);
  dense_product(l.out_proj, core_.data(), tmp_.data(), n, pool_);  // the residual add: the caller's
  clock_.lap(Op::dense);
}

// Token by token, as transformers' torch_recurrent_gated_delta_rule computes it, rearranged so that the state is read
// once and written once per token (it is 64 KB per head, 2 MB per layer on Qwen3-Next: beyond L2). The decay d is a
// scalar, so with the old state S: (dS)^T k = d S^T k and the output (dS + k delta^T)^T q = d S^T q + (q . k) delta.
// One read pass gives S^T k and S^T q; delta = beta (v - d S^T k); one read-write pass makes S = d S + k delta^T.
void Session::delta_rule_recurrent(float* S, int64_t h, int64_t row0, int64_t n, const float* qs, const float* ks) {
  const int64_t nv = c_.linear_num_value_heads;
  const int64_t dk = c_.linear_key_head_dim, dv = c_.linear_value_head_dim, KD = c_.linear_key_dim();
  const int64_t CD = c_.linear_conv_dim(), VD = c_.linear_value_dim();
  for (int64_t t = row0; t < row0 + n; ++t) {
    const float* q = qs + (t - row0) * dk;
    const float* k = ks + (t - row0) * dk;
    const float* v = &conv_out_[size_t(t * CD + 2 * KD + h * dv)];
    const float decay = std::exp(decay_[size_t(t * nv + h)]), beta = beta_[size_t(t * nv + h)];
    delta_rule_token(S, dk, dv, q, k, v, decay, beta, &core_[size_t(t * VD + h * dv)]);
  }
}

// transformers' torch_chunk_gated_delta_rule over chunks of kDeltaChunk rows (the last may be shorter: the padding
// transformers adds changes neither the outputs nor the state). Within a chunk of L rows, with c_i the cumulative
// decay (log space), kb_i = beta_i k_i and T = I + strictly_lower[(kb_i . k_j) exp(c_i - c_j)]:
//   U = T^-1 (beta v),  W = T^-1 (kb exp(c));  v_new = U - W S;
//   o_i = exp(c_i) q_i S + sum_{j<=i} (q_i . k_j) exp(c_i - c_j) v_new_j;
//   S <- exp(c_L) S + sum_j exp(c_L - c_j) k_j v_new_j^T.
void Session::delta_rule_chunked(float* S, int64_t h, int64_t row0, int64_t n, const float* qs, const float* ks) {
  const int64_t nv = c_.linear_num_value_heads;
  const int64_t dk = c_.linear_key_head_dim, dv = c_.linear_value_head_dim, KD = c_.linear_key_dim();
  const int64_t CD = c_.linear_conv_dim(), VD = c_.linear_value_dim(), C = kDeltaChunk;
  thread_local std::vector<float> q, k, A, U, W, cum, P;
  q.resize(size_t(C * dk)), k.resize(size_t(C * dk)), A.resize(size_t(C * C)), U.resize(size_t(C * dv));
  W.resize(size_t(C * dk)), cum.resize(size_t(C)), P.resize(size_t(C * C));
  for (int64_t t0 = row0; t0 < row0 + n; t0 += C) {
    const int64_t L = std::min(C, row0 + n - t0);
    float c = 0.0f;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t t = t0 + i;
      std::memcpy(&q[size_t(i * dk)], qs + (t - row0) * dk, size_t(dk) * 4);
      std::memcpy(&k[size_t(i * dk)], ks + (t - row0) * dk, size_t(dk) * 4);
      cum[size_t(i)] = c += decay_[size_t(t * nv + h)];
    }
    // Gram matrices k k^T and q k^T of the chunk.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(L), int(L), int(dk), 1.0f, k.data(), int(dk), k.data(),
                int(dk), 0.0f, A.data(), int(L));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(L), int(L), int(dk), 1.0f, q.data(), int(dk), k.data(),
                int(dk), 0.0f, P.data(), int(L));
    for (int64_t i = 0; i < L; ++i) {
      const float bi = beta_[size_t((t0 + i) * nv + h)];
      for (int64_t j = 0; j < L; ++j) {
        const float d = j <= i ? std::exp(cum[size_t(i)] - cum[size_t(j)]) : 0.0f;
        A[size_t(i * L + j)] = j < i ? bi * A[size_t(i * L + j)] * d : 0.0f;
        P[size_t(i * L + j)] *= d;
      }
      // Right-hand sides: beta v and beta k exp(c).
      const float* v = &conv_out_[size_t((t0 + i) * CD + 2 * KD + h * dv)];
      for (int64_t j = 0; j < dv; ++j) U[size_t(i * dv + j)] = v[j] * bi;
      const float e = std::exp(cum[size_t(i)]);
      for (int64_t j = 0; j < dk; ++j) W[size_t(i * dk + j)] = k[size_t(i * dk + j)] * bi * e;
    }
    // Forward substitution with the unit lower triangular T: row i -= sum_{j<i} A[i][j] row j.
    for (int64_t i = 1; i < L; ++i)
      for (int64_t j = 0; j < i; ++j) {
        const float a = A[size_t(i * L + j)];
        if (a == 0.0f) continue;
        axpy_f32(-a, &U[size_t(j * dv)], &U[size_t(i * dv)], dv);
        axpy_f32(-a, &W[size_t(j * dk)], &W[size_t(i * dk)], dk);
      }
    // v_new = U - W S (in U).
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(L), int(dv), int(dk), -1.0f, W.data(), int(dk), S,
                int(dv), 1.0f, U.data(), int(dv));
    // o = (q exp(c)) S + P v_new.
    for (int64_t i = 0; i < L; ++i) {
      const float e = std::exp(cum[size_t(i)]);
      for (int64_t j = 0; j < dk; ++j) q[size_t(i * dk + j)] *= e;
    }
    float* o = &core_[size_t(t0 * VD + h * dv)];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(L), int(dv), int(dk), 1.0f, q.data(), int(dk), S,
                int(dv), 0.0f, o, int(VD));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(L), int(dv), int(L), 1.0f, P.data(), int(L), U.data(),
                int(dv), 1.0f, o, int(VD));
    // S <- exp(c_L) S + (k exp(c_L - c))^T v_new.
    const float last = cum[size_t(L - 1)], el = std::exp(last);
    for (int64_t i = 0; i < dk * dv; ++i) S[i] *= el;
    for (int64_t i = 0; i < L; ++i) {
      const float e = std::exp(last - cum[size_t(i)]);
      for (int64_t j = 0; j < dk; ++j) k[size_t(i * dk + j)] *= e;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(dk), int(dv), int(L), 1.0f, k.data(), int(dk), U.data(),
                int(dv), 1.0f, S, int(dv));
  }
}

}  // namespace genesis::runtime
