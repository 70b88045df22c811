// A layer's attention over the KV caches of the step's sequences: q/k/v products over all rows, QK-norm, rope, KV
// append to each row's own sequence, causal attention of every (row, head) over its sequence's cached positions, the
// output product (the residual add is the caller's).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include <immintrin.h>

#include "runtime/model/dense.h"
#include "runtime/model/forward.h"

namespace genesis::runtime {

namespace {
constexpr int64_t kBlockRows = 16;  // query rows of one attention GEMM (prefill)
constexpr int64_t kMinSpan = 64;    // decode: fewest positions per task
}  // namespace

// Row t's QK norm, rope and KV append, into its own sequence's cache at its position: every row of the step in one
// pass, the rows of a prefill segment or one row of each of several sequences (a batched decode step) alike.
void Session::attention_row(int64_t li, int64_t t) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t hd = c_.head_dim, nh = c_.num_heads, nkv = c_.num_kv_heads;
  const int64_t qd = c_.q_dim(), kvd = c_.kv_dim(), cap = capacity_;
  const bool half = kv_ == KvType::f16;
  const Segment* sg = &segs_.front();
  while (t >= sg->row0 + sg->n) ++sg;  // segments are in row order
  SequenceState& sq = seqs_[size_t(sg->seq)];
  float* kc = half ? nullptr : sq.k_layer(li);
  float* vc = half ? nullptr : sq.v_layer(li);
  uint16_t* kh = half ? sq.k_layer_half(li) : nullptr;
  uint16_t* vh = half ? sq.v_layer_half(li) : nullptr;
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
  const int64_t pos = sg->pos0 + (t - sg->row0);
  const float* cs = &rope_cs_[size_t(t * c_.rotary_dim())];  // this row's angles (the step's, every layer's)
  apply_rope(q, nh, hd, c_.rotary_dim(), cs);
  apply_rope(k, nkv, hd, c_.rotary_dim(), cs);
  for (int64_t h = 0; h < nkv; ++h) {
    if (half) {
      to_f16_saturated(k + h * hd, kh + (h * cap + pos) * hd, hd);
      to_f16_saturated(v + h * hd, vh + (h * cap + pos) * hd, hd);
    } else {
      std::memcpy(kc + (h * cap + pos) * hd, k + h * hd, size_t(hd) * 4);
      std::memcpy(vc + (h * cap + pos) * hd, v + h * hd, size_t(hd) * 4);
    }
  }
}

// Segments of many rows (prefill) take the GEMM path (att_blocks_), the rows of the others (decode) the span path
// (att_rows_: (row, KV head, span of positions) tasks). A task reads each of its keys and values once for all `group`
// query heads that share them, and keeps a partial softmax (running max, sum, weighted values) per head; the spans of
// a (row, head) are then merged. Spans give the pool work when KV heads are few (4 on Qwen3-30B-A3B for 16 threads).
void Session::attention_plan(int64_t li) {
  const int64_t nkv = c_.num_kv_heads, group = c_.num_heads / nkv, hd = c_.head_dim;
  const bool half = kv_ == KvType::f16;
  att_blocks_.clear();
  att_rows_.clear();
  for (const Segment& sg : segs_) {
    SequenceState& sq = seqs_[size_t(sg.seq)];
    const AttCache cc = half ? AttCache{nullptr, nullptr, sq.k_layer_half(li), sq.v_layer_half(li)}
                             : AttCache{sq.k_layer(li), sq.v_layer(li), nullptr, nullptr};
    if (sg.n >= kBlockRows && c_.sliding_window <= 0) {
      for (int64_t t0 = sg.row0; t0 < sg.row0 + sg.n; t0 += kBlockRows)
        att_blocks_.push_back({t0, std::min(sg.row0 + sg.n, t0 + kBlockRows), sg.pos0 + (t0 - sg.row0), cc});
    } else {
      for (int64_t t = sg.row0; t < sg.row0 + sg.n; ++t) att_rows_.push_back({t, sg.pos0 + (t - sg.row0), cc});
    }
  }
  att_spans_ = 0;
  if (att_rows_.empty()) return;
  const int64_t threads = pool_ ? pool_->size() : 1, m = int64_t(att_rows_.size());
  int64_t max_len = 0;
  for (const AttRow& d : att_rows_)
    max_len = std::max(max_len, c_.sliding_window > 0 ? std::min<int64_t>(d.pos + 1, c_.sliding_window) : d.pos + 1);
  att_spans_ = std::clamp<int64_t>((2 * threads + m * nkv - 1) / (m * nkv), 1, std::max<int64_t>(1, max_len / kMinSpan));
  const size_t part = size_t(hd + 2);  // per (task, head): max, sum, weighted values
  if (att_part_.size() < size_t(m * nkv * att_spans_ * group) * part)
    att_part_.resize(size_t(m * nkv * att_spans_ * group) * part);
  if (span_left_size_ < size_t(m * nkv)) {
    span_left_ = std::make_unique<std::atomic<int32_t>[]>(size_t(m * nkv));
    span_left_size_ = size_t(m * nkv);
  }
  for (int64_t i = 0; i < m * nkv; ++i) span_left_[size_t(i)].store(int32_t(att_spans_), std::memory_order_relaxed);
}

// Decode task `task` < att_rows_ x KV heads x spans: one span's partial softmax, and the merge of its (row, KV head)'s
// spans into each of its query heads' output when it finishes the last of them.
void Session::attention_span(int64_t task) {
  const int64_t hd = c_.head_dim, nkv = c_.num_kv_heads, group = c_.num_heads / nkv, qd = c_.q_dim();
  const int64_t cap = capacity_, spans = att_spans_;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const size_t part = size_t(hd + 2);
  const int64_t sp = task % spans, kvh = (task / spans) % nkv;
  const AttRow& d = att_rows_[size_t(task / (spans * nkv))];
  const int64_t t = d.t, pos = d.pos;
  const int64_t first = c_.sliding_window > 0 ? std::max<int64_t>(0, pos - c_.sliding_window + 1) : 0;
  const int64_t len = pos - first + 1, per = (len + spans - 1) / spans;
  const int64_t j0 = first + sp * per, j1 = std::min(pos + 1, j0 + per);
  float* out = &att_part_[size_t(task * group) * part];
  const int64_t cnt = std::max<int64_t>(j1 - j0, 0);
  if (cnt == 0) {
    for (int64_t g = 0; g < group; ++g) out[g * part] = -INFINITY, out[g * part + 1] = 0.0f;
  } else {
    // The group's query heads are consecutive rows of q: scores [group, cnt] = scale * Q K^T and the weighted
    // values [group, hd] = P V over the span's keys and values, each row read once for all heads.
    thread_local std::vector<float> s;
    s.resize(size_t(group * cnt));
    const float* qg = &q_[size_t(t * qd + kvh * group * hd)];
    const int64_t at = (kvh * cap + j0) * hd;
    if (d.c.kh) group_scores(qg, group, d.c.kh + at, cnt, hd, scale, s.data());
    else group_scores(qg, group, d.c.kc + at, cnt, hd, scale, s.data());
    for (int64_t g = 0; g < group; ++g) {
      float* sg = &s[size_t(g * cnt)];
      float mx = -INFINITY;
      for (int64_t j = 0; j < cnt; ++j) mx = std::max(mx, sg[j]);
      out[g * part] = mx, out[g * part + 1] = float(exp_shift_sum(sg, cnt, mx));
    }
    if (d.c.vh) group_weighted_sum(s.data(), group, d.c.vh + at, cnt, hd, out + 2, int64_t(part));
    else group_weighted_sum(s.data(), group, d.c.vc + at, cnt, hd, out + 2, int64_t(part));
  }
  // The task that finishes a (row, KV head)'s last span merges them (acq_rel: the other spans' parts are visible):
  // every span's sum and values rescaled to the common max.
  const int64_t rk = task / spans;
  if (span_left_[size_t(rk)].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  const int64_t i = rk / nkv, kh = rk % nkv;
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = kh * group + g;
    float mx = -INFINITY;
    for (int64_t s2 = 0; s2 < spans; ++s2) mx = std::max(mx, att_part_[size_t(((i * nkv + kh) * spans + s2) * group + g) * part]);
    float* o = &att_[size_t(att_rows_[size_t(i)].t * qd + h * hd)];
    std::fill(o, o + hd, 0.0f);
    float sum = 0.0f;
    for (int64_t s2 = 0; s2 < spans; ++s2) {
      const float* pp = &att_part_[size_t(((i * nkv + kh) * spans + s2) * group + g) * part];
      if (pp[1] == 0.0f) continue;  // an empty span
      const float w = std::exp(pp[0] - mx);
      sum += w * pp[1];
      axpy_f32(w, pp + 2, o, hd);
    }
    const float inv = 1.0f / sum;
    for (int64_t i2 = 0; i2 < hd; ++i2) o[i2] *= inv;
  }
}

void Session::attention(int64_t li, int64_t n) {
  const Layer& l = m_.weights().layers[size_t(li)];
  const int64_t hd = c_.head_dim, nh = c_.num_heads, nkv = c_.num_kv_heads;
  const int64_t qd = c_.q_dim();
  // Gated attention (Qwen3-Next): q_proj's rows are per head [query (head_dim), gate (head_dim)].
  const bool gated = c_.layers[size_t(li)].mixer == MixerKind::gated_attention;
  if (gated && qg_.size() < size_t(n * 2 * qd)) qg_.resize(size_t(n * 2 * qd)), gate_.resize(size_t(n * qd));
  const DenseJob qkv[] = {{&l.q, gated ? qg_.data() : q_.data()}, {&l.k, k_.data()}, {&l.v, v_.data()}};
  dense_products(qkv, xn_.data(), n, pool_);
  clock_.lap(Op::dense);
  if (gated) {
    for_rows(n, [&](int64_t t) {
      for (int64_t h = 0; h < nh; ++h) {
        const float* src = &qg_[size_t((t * nh + h) * 2 * hd)];
        std::memcpy(&q_[size_t(t * qd + h * hd)], src, size_t(hd) * 4);
        std::memcpy(&gate_[size_t(t * qd + h * hd)], src + hd, size_t(hd) * 4);
      }
    });
    clock_.lap(Op::elementwise);
  }
  // A cache is [attention layer][kv head][position][head_dim]: each head's keys and values are one contiguous stream.
  const int64_t cap = capacity_;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int64_t group = nh / nkv;
  // A batched decode step (several sequences, one row each) runs the rows' preparation as the first tasks of the
  // attention's region below (each attention task waits for its row's), not in a region of its own: on 16 threads a
  // region costs more than 8 rows of this work. Profiled as attention then.
  // Only where every sequence has one row: a row's attention reads the keys its sequence's earlier rows write.
  bool all_decode = n >= kParallelRows && pool_ != nullptr;
  for (const Segment& sg : segs_) all_decode &= sg.n == 1;
  if (!all_decode) {
    for_rows(n, [&](int64_t t) { attention_row(li, t); });
    clock_.lap(Op::elementwise);
  }
  attention_plan(li);
  if (!att_blocks_.empty()) {
    // (KV head, heads of its group, block of kBlockRows query rows) tasks: per query head the scores and the weighted
    // sum as two GEMMs (the block's rows share every K and V row they read), the causal mask applied to the scores.
    // The heads of a task share its keys and values (a binary16 cache widened once per task); a group is split into
    // `sub` tasks only where there would be too few tasks for the pool otherwise.
    const int64_t nblk = int64_t(att_blocks_.size()), threads = pool_ ? pool_->size() : 1;
    int64_t sub = 1;
    while (sub < group && (group % (2 * sub) == 0) && nkv * nblk * sub < 2 * threads) sub *= 2;
    const int64_t per = group / sub;
    parallel_for(nkv * sub * nblk, [&](int64_t task) {
      const AttBlock& bl = att_blocks_[size_t(task % nblk)];
      const int64_t kvh = task / (nblk * sub), h0 = kvh * group + (task / nblk) % sub * per, t0 = bl.t0, t1 = bl.t1;
      const int64_t rows = t1 - t0, npos = bl.pos0 + rows;  // positions [0, npos) cover every row of the block
      const int64_t at = kvh * cap * hd;  // this KV head's positions
      const float *kc = bl.c.kc ? bl.c.kc + at : nullptr, *vc = bl.c.vc ? bl.c.vc + at : nullptr;
      thread_local std::vector<float> sc, kw, vw;
      if (!kc) {
        kw.resize(size_t(npos * hd)), vw.resize(size_t(npos * hd));
        from_f16(bl.c.kh + at, kw.data(), npos * hd);
        from_f16(bl.c.vh + at, vw.data(), npos * hd);
        kc = kw.data(), vc = vw.data();
      }
      sc.resize(size_t(rows * npos));
      for (int64_t h = h0; h < h0 + per; ++h) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(npos), int(hd), scale,
                    &q_[size_t(t0 * qd + h * hd)], int(qd), kc, int(hd), 0.0f, sc.data(), int(npos));
        for (int64_t r = 0; r < rows; ++r) {
          float* row = &sc[size_t(r * npos)];
          const int64_t valid = bl.pos0 + r + 1;
          softmax(row, valid);
          std::fill(row + valid, row + npos, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(hd), int(npos), 1.0f, sc.data(),
                    int(npos), vc, int(hd), 0.0f, &att_[size_t(t0 * qd + h * hd)], int(qd));
      }
    });
  }
  if (!att_rows_.empty()) {
    const int64_t first_task = all_decode ? n : 0;  // the rows' preparation first (all_decode above)
    if (all_decode) {
      if (row_ready_size_ < size_t(n)) {
        row_ready_ = std::make_unique<std::atomic<int32_t>[]>(size_t(n));
        row_ready_size_ = size_t(n);
      }
      for (int64_t t = 0; t < n; ++t) row_ready_[size_t(t)].store(0, std::memory_order_relaxed);
    }
    parallel_for(first_task + attention_span_tasks(), [&](int64_t k) {
      if (k < first_task) {
        attention_row(li, k);
        row_ready_[size_t(k)].store(1, std::memory_order_release);
        return;
      }
      const int64_t task = k - first_task;
      if (first_task > 0) {  // tasks are claimed in index order: the row's preparation is running or done
        // (attention_row never throws: a failed preparation would leave its row's waiters here)
        const int64_t t = att_rows_[size_t(task / (att_spans_ * nkv))].t;
        for (int spins = 0; row_ready_[size_t(t)].load(std::memory_order_acquire) == 0;) {
          if (spins >= 4096) {
            std::this_thread::yield();
          } else {
            _mm_pause();
            ++spins;
          }
        }
      }
      attention_span(task);
    });
  }
  clock_.lap(Op::attention);
  if (gated) {
    for_rows(n, [&](int64_t t) {
      for (int64_t i = t * qd; i < (t + 1) * qd; ++i) att_[size_t(i)] *= 1.0f / (1.0f + std::exp(-gate_[size_t(i)]));
    });
    clock_.lap(Op::elementwise);
  }
  dense_product(l.o, att_.data(), tmp_.data(), n, pool_);  // the residual add: run_layer's, fused with the next norm
  clock_.lap(Op::dense);
}

}  // namespace genesis::runtime
