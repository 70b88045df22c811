// A layer's attention over the Session's KV cache: q/k/v products, QK-norm, rope, KV append, causal attention of
// every (row, head) over the cached positions, the output product and the residual.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/model/dense.h"
#include "runtime/model/forward.h"

namespace genesis::runtime {

namespace {
constexpr int64_t kBlockRows = 16;  // query rows of one attention GEMM (prefill)
}  // namespace

void Session::attention(int64_t li, int64_t n, int64_t pos0) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t H = c_.hidden_size, hd = c_.head_dim, nh = c_.num_heads, nkv = c_.num_kv_heads;
  const int64_t qd = c_.q_dim(), kvd = c_.kv_dim();
  const DenseJob qkv[] = {{&l.q, q_.data()}, {&l.k, k_.data()}, {&l.v, v_.data()}};
  dense_products(qkv, xn_.data(), n, pool_);
  clock_.lap(Op::dense);
  float* kc = &k_cache_[size_t(li * capacity_ * kvd)];
  float* vc = &v_cache_[size_t(li * capacity_ * kvd)];
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int64_t group = nh / nkv;
  for (int64_t t = 0; t < n; ++t) {
    float* q = &q_[size_t(t * qd)];
    float* k = &k_[size_t(t * kvd)];
    float* v = &v_[size_t(t * kvd)];
    // OLMoE: norm over the whole projection, then clip; Qwen3: norm over each head's head_dim.
    if (c_.qk_norm == QkNorm::whole) {
      rms_norm(q, l.q_norm.data(), q, qd, c_.rms_norm_eps);
      rms_norm(k, l.k_norm.data(), k, kvd, c_.rms_norm_eps);
    } else if (c_.qk_norm == QkNorm::per_head) {
      for (int64_t h = 0; h < nh; ++h) rms_norm(q + h * hd, l.q_norm.data(), q + h * hd, hd, c_.rms_norm_eps);
      for (int64_t h = 0; h < nkv; ++h) rms_norm(k + h * hd, l.k_norm.data(), k + h * hd, hd, c_.rms_norm_eps);
    }
    if (c_.clip_qkv > 0) {
      const float cl = float(c_.clip_qkv);
      for (float* p : {q, k, v}) {
        const int64_t len = p == q ? qd : kvd;
        for (int64_t i = 0; i < len; ++i) p[i] = std::clamp(p[i], -cl, cl);
      }
    }
    const int64_t pos = pos0 + t;
    apply_rope(q, nh, hd, c_.rotary_dim(), pos, rope_);
    apply_rope(k, nkv, hd, c_.rotary_dim(), pos, rope_);
    std::memcpy(kc + pos * kvd, k, size_t(kvd) * 4);
    std::memcpy(vc + pos * kvd, v, size_t(kvd) * 4);
  }
  clock_.lap(Op::elementwise);
  if (n >= kBlockRows && c_.sliding_window <= 0) {
    // (head, block of kBlockRows query rows) tasks: scores and the weighted sum as two GEMMs (the block's rows share
    // every K and V row they read), the causal mask applied to the scores.
    const int64_t nblk = (n + kBlockRows - 1) / kBlockRows;
    parallel_for(nh * nblk, [&](int64_t task) {
      const int64_t h = task / nblk, kvh = h / group, t0 = (task % nblk) * kBlockRows, t1 = std::min(n, t0 + kBlockRows);
      const int64_t rows = t1 - t0, npos = pos0 + t1;  // positions [0, npos) cover every row of the block
      thread_local std::vector<float> sc;
      sc.resize(size_t(rows * npos));
      {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(npos), int(hd), scale,
                    &q_[size_t(t0 * qd + h * hd)], int(qd), kc + kvh * hd, int(kvd), 0.0f, sc.data(), int(npos));
        for (int64_t r = 0; r < rows; ++r) {
          float* row = &sc[size_t(r * npos)];
          const int64_t valid = pos0 + t0 + r + 1;
          softmax(row, valid);
          std::fill(row + valid, row + npos, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(hd), int(npos), 1.0f, sc.data(),
                    int(npos), vc + kvh * hd, int(kvd), 0.0f, &att_[size_t(t0 * qd + h * hd)], int(qd));
      }
    });
  } else {
    // Each (token, head) attends to cached positions [first, pos]; heads are independent tasks.
    parallel_for(n * nh, [&](int64_t task) {
      const int64_t t = task / nh, h = task % nh, pos = pos0 + t, kvh = h / group;
      const int64_t first = c_.sliding_window > 0 ? std::max<int64_t>(0, pos - c_.sliding_window + 1) : 0;
      const float* q = &q_[size_t(t * qd + h * hd)];
      thread_local std::vector<float> s;
      s.resize(size_t(pos - first + 1));
      for (int64_t j = first; j <= pos; ++j) s[size_t(j - first)] = dot_f32(q, kc + j * kvd + kvh * hd, hd) * scale;
      softmax(s.data(), int64_t(s.size()));
      float* o = &att_[size_t(t * qd + h * hd)];
      std::fill(o, o + hd, 0.0f);
      for (int64_t j = first; j <= pos; ++j) axpy_f32(s[size_t(j - first)], vc + j * kvd + kvh * hd, o, hd);
    });
  }
  clock_.lap(Op::attention);
  dense_product(l.o, att_.data(), tmp_.data(), n, pool_);
  clock_.lap(Op::dense);
  for (int64_t i = 0; i < n * H; ++i) x_[size_t(i)] += tmp_[size_t(i)];
  clock_.lap(Op::elementwise);
}

}  // namespace genesis::runtime
