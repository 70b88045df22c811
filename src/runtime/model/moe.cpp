// The MoE layer over a batch of rows (xn_ -> tmp_): one router product for all rows and top-k per row; the
// (row, expert) pairs grouped by expert into units of up to unit_rows_ rows that share one pass over the expert's
// weights; gate_up and down as one parallel region of (unit, row block) tasks claimed dynamically (GENESIS_MOE_FUSE=0:
// two regions), where the task that finishes a unit's last gate_up block runs its SwiGLU and converts the down input,
// and a down task waits for its unit; then each row's weighted sum of its experts' outputs, in the router's order
// (highest probability first): for fewer than 4 rows per column block in the region, by the task finishing it.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "runtime/model/dense.h"
#include "runtime/model/forward.h"

namespace genesis::runtime {

void Session::moe(const Layer& l, int64_t n) {
  const int64_t E = c_.num_experts;
  if (router_logits_.size() < size_t(n * E)) router_logits_.resize(size_t(n * E));
  const int64_t li = &l - m_.weights().layers.data();
  if (c_.layers[size_t(li)].mlp != MlpKind::moe_shared) {
    dense_product(l.router, xn_.data(), router_logits_.data(), n, pool_);
  } else {
    // Qwen3-Next: the shared expert's gate and up read the same rows: one region with the router (a small product
    // alone, about 4 MB at 512 experts, costs a wake-up and a barrier of its own on many cores). Profiled as router.
    const int64_t I = c_.shared_expert_intermediate_size;
    if (shared_h1_.size() < size_t(n * I)) shared_h1_.resize(size_t(n * I)), shared_h2_.resize(size_t(n * I));
    const DenseJob jobs[] = {{&l.router, router_logits_.data()},
                             {&l.shared_gate_proj, shared_h1_.data()},
                             {&l.shared_up, shared_h2_.data()}};
    dense_products(jobs, xn_.data(), n, pool_);
    clock_.lap(Op::router);
    shared_expert_input(l, n);
  }
  routed_experts(l, n, 0, c_.top_k, tmp_.data(), c_.layers[size_t(li)].mlp == MlpKind::moe_shared);
}

void Session::route_pairs(int64_t li, int64_t n, int64_t rank0, int64_t rank1) {
  const int64_t E = c_.num_experts;
  const int64_t K = rank1 - rank0;  // the experts of each row this call runs: ranks [rank0, rank1) of its top-k
  const int64_t P = n * K;

  // Pairs sorted by expert (a counting sort keeps rows ascending within an expert).
  pair_row_.resize(size_t(P));
  pair_weight_.resize(size_t(P));
  row_pairs_.resize(size_t(P));
  std::vector<int32_t>& start = expert_start_;  // [experts + 1] first pair of each expert, then a cursor
  start.assign(size_t(E + 1), 0);
  chosen_e_.resize(size_t(P));
  chosen_w_.resize(size_t(P));
  std::vector<int32_t>& chosen_e = chosen_e_;
  std::vector<float>& chosen_w = chosen_w_;
  for (int64_t t = 0; t < n; ++t) {
    const auto ch = route_top_k(&router_logits_[size_t(t * E)], E, c_.top_k, c_.norm_topk_prob);
    for (int64_t j = 0; j < K; ++j) {
      chosen_e[size_t(t * K + j)] = ch[size_t(rank0 + j)].first;
      chosen_w[size_t(t * K + j)] = ch[size_t(rank0 + j)].second;
      ++start[size_t(ch[size_t(rank0 + j)].first + 1)];
    }
  }
  for (int64_t e = 0; e < E; ++e) start[size_t(e + 1)] += start[size_t(e)];
  next_pair_.assign(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < P; ++i) {
    const int32_t p = next_pair_[size_t(chosen_e[size_t(i)])]++;
    pair_row_[size_t(p)] = int32_t(i / K);
    pair_weight_[size_t(p)] = chosen_w[size_t(i)];
    row_pairs_[size_t(i)] = p;
  }
  if (expert_use_.size() != size_t(c_.num_layers * E)) expert_use_.assign(size_t(c_.num_layers * E), 0);
  uint64_t* use = &expert_use_[size_t(li * E)];
  for (int64_t e = 0; e < E; ++e) {
    const int32_t count = start[size_t(e + 1)] - start[size_t(e)];
    prof_.experts += count > 0;
    use[e] += uint64_t(count);
  }
  prof_.expert_pairs += P;
  pair_elsewhere_.clear();
  clock_.lap(Op::router);
}

void Session::routed_experts(const Layer& l, int64_t n, int64_t rank0, int64_t rank1, float* dst, bool shared) {
  route_pairs(&l - m_.weights().layers.data(), n, rank0, rank1);
  cpu_experts(l, n, rank1 - rank0, dst, shared);
}

void Session::cpu_experts(const Layer& l, int64_t n, int64_t K, float* dst, bool shared) {
  const int64_t H = c_.hidden_size, I = c_.moe_intermediate_size, E = c_.num_experts;
  const int64_t P = n * K;
  const std::vector<int32_t>& start = expert_start_;
  const bool elsewhere = !pair_elsewhere_.empty();
  units_.clear();
  for (int64_t e = 0; e < E; ++e)
    for (int32_t p0 = start[size_t(e)]; p0 < start[size_t(e + 1)]; p0 += unit_rows_)
      if (!elsewhere || pair_elsewhere_[size_t(p0)] < 0)  // an expert's pairs run all on the CPU or all on the GPU
        units_.push_back({int32_t(e), p0, std::min<int32_t>(unit_rows_, start[size_t(e + 1)] - p0)});
  const int64_t U = int64_t(units_.size());

  if (moe_h_.size() < size_t(P * 2 * I)) {
    moe_h_.resize(size_t(P * 2 * I));
    moe_act_.resize(size_t(P * I));
    moe_out_.resize(size_t(P * H));
  }
  if (unit_left_size_ < size_t(U)) {
    unit_left_ = std::make_unique<std::atomic<int32_t>[]>(size_t(U));
    down_ready_ = std::make_unique<std::atomic<int32_t>[]>(size_t(U));
    unit_left_size_ = size_t(U);
  }
  const int64_t blk = expert_row_block();
  const int64_t nb1 = (2 * I + blk - 1) / blk;
  const int64_t nb2 = (H + blk - 1) / blk;
  // The shared expert's down product (moe_shared): nb2 more tasks over the same column blocks, input prepared.
  const int64_t S = shared ? nb2 : 0;
  if (shared && blk % l.shared_down.op->row_granule() != 0)
    fail("cpu_experts: the shared expert's down product takes rows in groups of {}, not a divisor of the block {}",
         l.shared_down.op->row_granule(), blk);
  for (int64_t u = 0; u < U; ++u) {
    unit_left_[size_t(u)].store(int32_t(nb1), std::memory_order_relaxed);
    down_ready_[size_t(u)].store(0, std::memory_order_relaxed);
  }

  // A unit's input rows: with one row every unit reads xn_ itself and units of the same activation kind share one
  // prepare() (decode: one conversion for all experts), else the unit's rows gathered contiguously and prepared once
  // per unit. The down input is prepared by the task finishing the unit's gate_up.
  auto ensure = [](UnitActivations& slot, const kernels::Linear& l) -> kernels::LinearActivations& {
    if (!slot.a || slot.kind != l.activation_kind()) {
      slot.a = l.new_activations();
      slot.kind = std::string(l.activation_kind());
    }
    return *slot.a;
  };
  if (prep_x_.size() < size_t(U)) {
    prep_x_.resize(size_t(U));
    prep_act_.resize(size_t(U));
  }
  unit_prep_.resize(size_t(U));
  if (n == 1) {
    for (int64_t u = 0; u < U; ++u) {
      const kernels::Linear& gu = *l.experts[size_t(units_[size_t(u)].expert)].gate_up.op;
      int64_t owner = u;  // the first unit whose prepared x has this kind
      for (int64_t v = 0; v < u; ++v)
        if (unit_prep_[size_t(v)] == v && prep_x_[size_t(v)].kind == gu.activation_kind()) owner = v;
      unit_prep_[size_t(u)] = int32_t(owner);
      if (owner == u) gu.prepare(xn_.data(), 1, ensure(prep_x_[size_t(u)], gu));
    }
  } else {
    if (moe_x_.size() < size_t(P * H)) moe_x_.resize(size_t(P * H));
    for (int64_t u = 0; u < U; ++u) ensure(prep_x_[size_t(u)], *l.experts[size_t(units_[size_t(u)].expert)].gate_up.op);
    parallel_for(U, [&](int64_t u) {
      const MoeUnit& un = units_[size_t(u)];
      float* x = &moe_x_[size_t(un.p0) * size_t(H)];
      for (int32_t r = 0; r < un.rows; ++r)
        std::memcpy(x + r * H, &xn_[size_t(pair_row_[size_t(un.p0 + r)]) * size_t(H)], size_t(H) * 4);
      l.experts[size_t(un.expert)].gate_up.op->prepare(x, un.rows, *prep_x_[size_t(u)].a);
      unit_prep_[size_t(u)] = int32_t(u);
    });
  }
  for (int64_t u = 0; u < U; ++u) ensure(prep_act_[size_t(u)], *l.experts[size_t(units_[size_t(u)].expert)].down.op);

  auto gate_up = [&](int64_t task) {
    const int64_t u = task / nb1, b = task % nb1;
    const MoeUnit& un = units_[size_t(u)];
    const Expert& e = l.experts[size_t(un.expert)];
    e.gate_up.op->run_rows(*prep_x_[size_t(unit_prep_[size_t(u)])].a, &moe_h_[size_t(un.p0) * size_t(2 * I)],
                           b * blk, std::min(2 * I, (b + 1) * blk));
    if (unit_left_[size_t(u)].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    // The unit's last block: its gate and up rows are complete (acq_rel orders the other tasks' writes before).
    float* act = &moe_act_[size_t(un.p0) * size_t(I)];
    for (int32_t r = 0; r < un.rows; ++r) {
      const float* h = &moe_h_[size_t(un.p0 + r) * size_t(2 * I)];
      swiglu(h, h + I, act + r * I, I);
    }
    e.down.op->prepare(act, un.rows, *prep_act_[size_t(u)].a);
    down_ready_[size_t(u)].store(1, std::memory_order_release);
  };
  // Row t's weighted sum of its experts' outputs over columns [c0, c1), in the router's order.
  auto combine = [&](int64_t t, int64_t c0, int64_t c1) {
    float* out = dst + t * H;
    std::fill(out + c0, out + c1, 0.0f);
    for (int64_t j = 0; j < K; ++j) {
      const int32_t p = row_pairs_[size_t(t * K + j)];
      if (elsewhere && pair_elsewhere_[size_t(p)] >= 0) continue;
      const float w = pair_weight_[size_t(p)];
      const float* y = &moe_out_[size_t(p) * size_t(H)];
      for (int64_t i = c0; i < c1; ++i) out[i] += w * y[i];
    }
    if (shared) {  // after the routed experts' sum, as a separate shared-expert pass would add it
      const float g = shared_gate_[size_t(t)];
      const float* y = &shared_out_[size_t(t * H)];
      for (int64_t i = c0; i < c1; ++i) out[i] += g * y[i];
    }
  };
  // Few rows (decode): a block of columns' sums is made by the down task that completes the block's last unit, in
  // the region, where the calling thread alone read every expert's output (written by other cores) after it. Many
  // rows keep one pass per row after the region (per block, a prefill's rows read their outputs 256 bytes apart).
  const bool combine_in_region = n < kParallelRows && U > 0;
  if (combine_in_region) {
    if (col_left_size_ < size_t(nb2)) {
      col_left_ = std::make_unique<std::atomic<int32_t>[]>(size_t(nb2));
      col_left_size_ = size_t(nb2);
    }
    for (int64_t b = 0; b < nb2; ++b)  // the units' blocks of these columns, and the shared expert's
      col_left_[size_t(b)].store(int32_t(U + (shared ? 1 : 0)), std::memory_order_relaxed);
  }
  auto down = [&](int64_t task) {
    const int64_t u = task / nb2, b = task % nb2;
    const MoeUnit& un = units_[size_t(u)];
    const int64_t c0 = b * blk, c1 = std::min(H, (b + 1) * blk);
    l.experts[size_t(un.expert)].down.op->run_rows(*prep_act_[size_t(u)].a, &moe_out_[size_t(un.p0) * size_t(H)], c0,
                                                   c1);
    // acq_rel: the other units' blocks of these columns are visible to the task that finishes the last one.
    if (combine_in_region && col_left_[size_t(b)].fetch_sub(1, std::memory_order_acq_rel) == 1)
      for (int64_t t = 0; t < n; ++t) combine(t, c0, c1);
  };
  // The shared expert's down over column block b (its input needs no wait: prepared before the region).
  auto shared_down = [&](int64_t b) {
    const int64_t c0 = b * blk, c1 = std::min(H, (b + 1) * blk);
    l.shared_down.op->run_rows(*shared_act_.a, shared_out_.data(), c0, c1);
    if (!l.shared_down.bias.empty())
      for (int64_t t = 0; t < n; ++t)
        for (int64_t c = c0; c < c1; ++c) shared_out_[size_t(t * H + c)] += l.shared_down.bias[size_t(c)];
    if (combine_in_region && col_left_[size_t(b)].fetch_sub(1, std::memory_order_acq_rel) == 1)
      for (int64_t t = 0; t < n; ++t) combine(t, c0, c1);
  };
  if (!fused_experts()) {
    parallel_for(U * nb1, gate_up);
    clock_.lap(Op::experts_gate_up);
    parallel_for(S + U * nb2, [&](int64_t task) { task < S ? shared_down(task) : down(task - S); });
  } else {
    // One region: every gate_up task, the shared expert's down tasks (no wait), then every down task. Tasks are
    // claimed in index order, so a down task's unit has had all its gate_up blocks claimed by running threads: it
    // waits (spinning) for the unit's last block, never for a task that could wait on it. The caller laps gate_up when it takes its first down task (the profile's
    // split; the tail of gate_up then overlaps down work instead of a barrier and a wake-up between two regions).
    const std::thread::id caller = std::this_thread::get_id();
    bool lapped = false;
    std::atomic<bool> failed{false};
    parallel_for(U * nb1 + S + U * nb2, [&](int64_t task) {
      if (task < U * nb1) {
        try {
          gate_up(task);
        } catch (...) {
          failed.store(true, std::memory_order_relaxed);
          throw;
        }
        return;
      }
      if (std::this_thread::get_id() == caller && !lapped) {  // only the caller touches `lapped`
        clock_.lap(Op::experts_gate_up);
        lapped = true;
      }
      if (task < U * nb1 + S) return shared_down(task - U * nb1);
      const int64_t d = task - U * nb1 - S, u = d / nb2;
      // Spin briefly, then give the cpu away: with more threads than cpus the block waited on may be preempted here.
      for (int spins = 0; down_ready_[size_t(u)].load(std::memory_order_acquire) == 0; ++spins) {
        if (failed.load(std::memory_order_relaxed)) return;
        if (spins < 4096) _mm_pause();
        else std::this_thread::yield();
      }
      down(d);
    });
    if (!lapped) clock_.lap(Op::experts_gate_up);
  }
  clock_.lap(Op::experts_down);

  if (!combine_in_region) {
    if (n == 1) combine(0, 0, H);
    else parallel_for(n, [&](int64_t t) { combine(t, 0, H); });
  }
  clock_.lap(Op::elementwise);
}

}  // namespace genesis::runtime

namespace genesis::runtime {

// Qwen3-Next's shared expert: a SwiGLU MLP over every row, scaled by sigmoid(shared_expert_gate . x), added to the
// routed experts' sum. Its gate and up products ran in moe()'s region with the router (shared_h1_, _h2_); here each
// row's gate and SwiGLU, and its down product's input prepared: the product runs in the routed experts' region
// (cpu_experts, as column-block tasks that wait for nothing), where it had a region of its own (a wake-up and a
// barrier per layer). Profiled as experts down.
void Session::shared_expert_input(const Layer& l, int64_t n) {
  const int64_t H = c_.hidden_size, I = c_.shared_expert_intermediate_size;
  if (shared_out_.size() < size_t(n * H)) shared_out_.resize(size_t(n * H)), shared_gate_.resize(size_t(n));
  // The gate's one row (fp32 or bf16, never block-quantized), dotted here rather than as a third job: held unlike
  // gate and up, it would split their shared parallel region in two.
  thread_local std::vector<float> gate_row;
  gate_row.resize(size_t(H));
  l.shared_gate.row_f32(0, gate_row.data());
  const float* gr = gate_row.data();
  for_rows(n, [&](int64_t t) {
    shared_gate_[size_t(t)] = 1.0f / (1.0f + std::exp(-dot_f32(gr, &xn_[size_t(t * H)], H)));
    swiglu(&shared_h1_[size_t(t * I)], &shared_h2_[size_t(t * I)], &shared_h1_[size_t(t * I)], I);
  });
  const kernels::Linear& down = *l.shared_down.op;
  if (!shared_act_.a || shared_act_.kind != down.activation_kind()) {
    shared_act_.a = down.new_activations();
    shared_act_.kind = std::string(down.activation_kind());
  }
  down.prepare(shared_h1_.data(), n, *shared_act_.a);
  clock_.lap(Op::elementwise);
}

}  // namespace genesis::runtime
