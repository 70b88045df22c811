// Dense products over the Linear seam; see dense.h.
#include "runtime/model/dense.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "runtime/model/ops.h"
#include "runtime/model/stages.h"

namespace genesis::runtime {

namespace {

// The calling thread's prepared activations, one container per activation kind, reused across products (no
// allocation per step). The workers read the caller's containers, never their own.
kernels::LinearActivations& activations_for(const kernels::Linear& l) {
  thread_local std::vector<std::pair<std::string, std::unique_ptr<kernels::LinearActivations>>> cache;
  const std::string_view kind = l.activation_kind();
  for (auto& [k, a] : cache)
    if (k == kind) return *a;
  cache.emplace_back(std::string(kind), l.new_activations());
  return *cache.back().second;
}

// y[i, r] += bias[r] for rows r in [r0, r1) (default: all) of n rows of y.
void add_bias(const Dense& d, float* y, int64_t n, int64_t r0 = 0, int64_t r1 = -1) {
  if (d.bias.empty()) return;
  if (r1 < 0) r1 = d.rows;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = r0; r < r1; ++r) y[i * d.rows + r] += d.bias[size_t(r)];
}

// Rows per thread: an even share rounded up to a multiple of `floor` (and of the matrix's row granule).
int64_t share(int64_t rows, int nt, int64_t granule, int64_t floor = 16) {
  const int64_t g = std::max<int64_t>(floor, granule);
  return ((rows + nt - 1) / nt + g - 1) / g * g;
}

// Few-row products are cut into this many tasks per thread (GENESIS_DENSE_TASKS, 1..64, default 16), of at least
// min_task_bytes() of weights each: finer tasks shorten the wait for the last one at the region's end, coarser ones pay
// fewer claims and kernel calls (SmolLM2's 576-column matrices are 5 KB per 16 rows). The pool's guided claims take
// the first tasks in runs (a quarter of a thread's share, as 4 tasks per thread did before) and the last ones singly:
// the 16-core host's 30B decode barrier went 2.04 -> 1.41 ms/token with one stream and 8.9 -> 3.6 ms per 8-stream step
// against 4 (one call, stop 31); on 2 cores 4 and 16 measured alike.
// GENESIS_DENSE_MIN_TASK_KB (1..1024, default 32) moves that floor.
size_t min_task_bytes() {
  static const size_t b = [] {
    const char* e = std::getenv("GENESIS_DENSE_MIN_TASK_KB");
    return size_t(e ? std::clamp(std::atoi(e), 1, 1024) : 32) << 10;
  }();
  return b;
}
int tasks_per_thread() {
  static const int t = [] {
    const char* e = std::getenv("GENESIS_DENSE_TASKS");
    return e ? std::clamp(std::atoi(e), 1, 64) : 16;
  }();
  return t;
}

// A few-row product's activations converted by its region's first tasks, one per row of x (Linear::prepare_shape /
// prepare_rows), while the product tasks wait for the last: several rows' conversion was serial work on the caller
// before each region (8 rows of 1536 Q8_0 columns about 4 us on Zen 4; four such products a layer).
// GENESIS_ROW_PREP=0 converts on the caller as before (A/B).
class RowPrep {
 public:
  // Whether the products of n rows of x over `total` matrix rows convert x in their region.
  static bool wanted(const cpu::ThreadPool* pool, int64_t n, int64_t total) {
    static const bool on = [] {
      const char* e = std::getenv("GENESIS_ROW_PREP");
      return !(e && std::string(e) == "0");
    }();
    return on && pool && pool->size() > 1 && n >= 2 && n < kernels::kGemmRows && total >= 64;
  }
  RowPrep(const float* x, int64_t n, bool split) : x_(x), n_(n), split_(split) {}
  // prepare(), or its shape now and its rows as this region's tasks.
  void prepare(const kernels::Linear& op, kernels::LinearActivations& a) {
    if (!split_) op.prepare(x_, n_, a);
    else if (op.prepare_shape(x_, n_, a)) jobs_.push_back({&op, &a});
  }
  int64_t tasks() const { return int64_t(jobs_.size()) * n_; }
  void run_here() {  // every row on this thread (a region that did not take them as tasks)
    for (int64_t k = 0; k < tasks(); ++k) run(k);
    jobs_.clear();
  }
  void run(int64_t k) {  // task k < tasks(): one row
    const Job& j = jobs_[size_t(k / n_)];
    const int64_t i = k % n_;
    try {
      j.op->prepare_rows(x_, i, i + 1, *j.a);
    } catch (...) {
      failed_.store(true, std::memory_order_relaxed);
      done_.fetch_add(1, std::memory_order_release);
      throw;  // parallel_for rethrows it after the region
    }
    done_.fetch_add(1, std::memory_order_release);
  }
  // Waits for every row (tasks are claimed in index order: the rows are done or running); false if one failed.
  bool wait() const {
    const int64_t all = tasks();
    for (int spins = 0; done_.load(std::memory_order_acquire) < all;) {
      if (spins >= 4096) {
        std::this_thread::yield();
      } else {
        _mm_pause();
        ++spins;
      }
    }
    return !failed_.load(std::memory_order_relaxed);
  }

 private:
  struct Job {
    const kernels::Linear* op;
    kernels::LinearActivations* a;
  };
  const float* x_;
  int64_t n_;
  bool split_;
  std::vector<Job> jobs_;
  std::atomic<int64_t> done_{0};
  std::atomic<bool> failed_{false};
};

// One product's rows over the pool. Few rows of x (decode, memory-bound): chunks of about a sixteenth of a
// thread's share, claimed dynamically (in guided runs), so a thread slowed by memory contention or a late wake-up
// does not hold the others at the region's end. Many rows (prefill): one contiguous range per thread (each sgemm
// call packs x again).
struct RowTask {
  int32_t job;
  int64_t r0, r1;
};

// The checks dense_products and dense_swiglu make of their matrices, for them and for DenseStage: clear errors for an
// absent weight or shapes that do not go together.
void check_jobs(std::span<const DenseJob> jobs) {
  for (const DenseJob& j : jobs) {
    if (j.d->empty()) fail("dense_products: no matrix (an absent weight was multiplied)");
    if (j.d->cols != jobs[0].d->cols)
      fail("dense_products: matrices over one x with {} and {} columns", jobs[0].d->cols, j.d->cols);
  }
}
void check_swiglu(const Dense& gate, const Dense& up) {
  if (gate.empty() || up.empty()) fail("dense_swiglu: no matrix (an absent weight was multiplied)");
  if (up.rows != gate.rows || up.cols != gate.cols)
    fail("dense_swiglu: gate {}x{} and up {}x{} differ in shape", gate.rows, gate.cols, up.rows, up.cols);
}
void check_stage_rows(int64_t n) {
  if (n < 1 || n >= kernels::kGemmRows) fail("DenseStage: {} rows of x (1 to {} take stages)", n, kernels::kGemmRows - 1);
}

// A few-row product's tasks: about equal bytes, in multiples of 4 rows (or of the matrix's granule): with multiples
// of 16 a 128-row fp32 router (1 MiB) made 8 tasks of 128 KiB for 16 threads. Equal bytes, not equal rows, where one
// region holds matrices of several formats: Qwen3-Next's fp32 router beside its shared expert's Q4_K gate and up had
// tasks of 96 and 13.5 KB (12 rows each).
void plan_few_rows(std::span<const DenseJob> jobs, int nt, std::vector<RowTask>& tasks) {
  size_t bytes = 0;
  int64_t granule = 1;
  for (const DenseJob& j : jobs) {
    bytes += j.d->op->bytes();
    granule = std::max(granule, j.d->op->row_granule());
  }
  constexpr int64_t kFewRowsFloor = 4;
  const int64_t g = std::max<int64_t>(kFewRowsFloor, granule);
  const size_t task_bytes = std::max(min_task_bytes(), bytes / size_t(tasks_per_thread() * nt));
  tasks.clear();
  for (size_t i = 0; i < jobs.size(); ++i) {
    const int64_t rows = jobs[i].d->rows;
    const size_t row_bytes = std::max<size_t>(1, jobs[i].d->op->bytes() / size_t(rows));
    const int64_t per = std::max<int64_t>(g, (int64_t(task_bytes / row_bytes) + g - 1) / g * g);
    for (int64_t r = 0; r < rows; r += per) tasks.push_back({int32_t(i), r, std::min(rows, r + per)});
  }
}

// dense_swiglu's few-row tasks: rows per task, about equal bytes of both matrices, in multiples of 16 rows: swiglu()'s
// AVX2 path runs a range's last len % 8 values through the C library's exp, so ranges at multiples of 8 give every
// value the bits of a whole row's.
int64_t swiglu_rows_per_task(const Dense& gate, const Dense& up, int nt) {
  const int64_t I = gate.rows, granule = std::max(gate.op->row_granule(), up.op->row_granule());
  const size_t bytes = gate.op->bytes() + up.op->bytes();
  const size_t task_bytes = std::max(min_task_bytes(), bytes / size_t(tasks_per_thread() * nt));
  const int64_t gr = std::lcm<int64_t>(16, granule);
  const size_t row_bytes = std::max<size_t>(1, bytes / size_t(I));
  return std::max<int64_t>(gr, (int64_t(task_bytes / row_bytes) + gr - 1) / gr * gr);
}

void run_tasks(std::span<const DenseJob> jobs, std::span<kernels::LinearActivations* const> acts, int64_t n,
               cpu::ThreadPool* pool, RowPrep& prep) {
  const int nt = pool ? pool->size() : 1;
  int64_t total = 0, granule = 1;
  for (const DenseJob& j : jobs) {
    total += j.d->rows;
    granule = std::max(granule, j.d->op->row_granule());
  }
  if (nt == 1 || total < 64 || n >= kernels::kGemmRows) prep.run_here();  // (RowPrep::wanted() leaves none here)
  if (nt == 1 || total < 64) {
    for (size_t i = 0; i < jobs.size(); ++i) jobs[i].d->op->run_rows(*acts[i], jobs[i].y, 0, jobs[i].d->rows);
    return;
  }
  if (n >= kernels::kGemmRows) {
    // Thread tid's rows [tid * per, (tid + 1) * per) of the matrices stacked, cut at each matrix's boundary.
    const int64_t per = share(total, nt, granule);
    pool->run([&](int tid, int) {
      const int64_t g0 = int64_t(tid) * per, g1 = g0 + per;
      int64_t off = 0;
      for (size_t i = 0; i < jobs.size(); ++i) {
        const int64_t rows = jobs[i].d->rows, r0 = std::max(g0, off) - off, r1 = std::min(g1, off + rows) - off;
        if (r0 < r1) jobs[i].d->op->run_rows(*acts[i], jobs[i].y, r0, r1);
        off += rows;
      }
    });
    return;
  }
  thread_local std::vector<RowTask> tasks;
  plan_few_rows(jobs, nt, tasks);
  const std::vector<RowTask>* tp = &tasks;  // the caller's list: inside the workers `tasks` names their own
  const int64_t np = prep.tasks();
  pool->parallel_for(np + int64_t(tasks.size()), [&](int64_t k) {
    if (k < np) return prep.run(k);
    if (np > 0 && !prep.wait()) return;
    const RowTask& t = (*tp)[size_t(k - np)];
    jobs[size_t(t.job)].d->op->run_rows(*acts[size_t(t.job)], jobs[size_t(t.job)].y, t.r0, t.r1);
  });
}

}  // namespace

void dense_product(const Dense& d, const float* x, float* y, int64_t n, cpu::ThreadPool* pool) {
  if (d.empty()) fail("dense_product: no matrix (an absent weight was multiplied)");
  kernels::LinearActivations* a = &activations_for(*d.op);
  RowPrep prep(x, n, RowPrep::wanted(pool, n, d.rows));
  prep.prepare(*d.op, *a);
  const DenseJob job{&d, y};
  run_tasks({&job, 1}, {&a, 1}, n, pool, prep);
  add_bias(d, y, n);
}

void dense_products(std::span<const DenseJob> jobs, const float* x, int64_t n, cpu::ThreadPool* pool) {
  if (jobs.empty()) return;
  // x prepared once per activation kind; the jobs' activations in order.
  thread_local std::vector<kernels::LinearActivations*> acts;
  acts.clear();
  int64_t total = 0;
  for (const DenseJob& j : jobs) total += j.d->rows;
  check_jobs(jobs);
  RowPrep prep(x, n, RowPrep::wanted(pool, n, total));
  for (const DenseJob& j : jobs) {
    kernels::LinearActivations* a = &activations_for(*j.d->op);
    if (std::find(acts.begin(), acts.end(), a) == acts.end()) prep.prepare(*j.d->op, *a);
    acts.push_back(a);
  }
  run_tasks(jobs, acts, n, pool, prep);
  for (const DenseJob& j : jobs) add_bias(*j.d, j.y, n);
}

void dense_swiglu(const Dense& gate, const Dense& up, const float* x, float* g, float* u, int64_t n,
                  cpu::ThreadPool* pool) {
  check_swiglu(gate, up);
  const int64_t I = gate.rows;
  const int nt = pool ? pool->size() : 1;
  RowPrep prep(x, n, RowPrep::wanted(pool, n, I));
  kernels::LinearActivations* ag = &activations_for(*gate.op);
  prep.prepare(*gate.op, *ag);
  kernels::LinearActivations* au = &activations_for(*up.op);
  if (au != ag) prep.prepare(*up.op, *au);
  auto run = [&](int64_t r0, int64_t r1) {  // rows [r0, r1) of both, their biases, then SwiGLU on them
    gate.op->run_rows(*ag, g, r0, r1);
    up.op->run_rows(*au, u, r0, r1);
    add_bias(gate, g, n, r0, r1);
    add_bias(up, u, n, r0, r1);
    for (int64_t t = 0; t < n; ++t) swiglu(g + t * I + r0, u + t * I + r0, g + t * I + r0, r1 - r0);
  };
  const int64_t granule = std::max(gate.op->row_granule(), up.op->row_granule());
  if (nt == 1 || I < 64 || n >= kernels::kGemmRows) prep.run_here();  // (RowPrep::wanted() leaves none here)
  if (nt == 1 || I < 64) return run(0, I);
  if (n >= kernels::kGemmRows) {  // one contiguous range per thread, as run_tasks
    const int64_t per = share(I, nt, granule);
    pool->run([&](int tid, int) {
      const int64_t r0 = std::min(I, int64_t(tid) * per), r1 = std::min(I, r0 + per);
      if (r0 < r1) run(r0, r1);
    });
    return;
  }
  const int64_t per = swiglu_rows_per_task(gate, up, nt);
  const int64_t np = prep.tasks();
  pool->parallel_for(np + (I + per - 1) / per, [&](int64_t k) {
    if (k < np) return prep.run(k);
    if (np > 0 && !prep.wait()) return;
    k -= np;
    run(k * per, std::min(I, (k + 1) * per));
  });
}

DenseStage::DenseStage(std::span<const DenseJob> jobs, const float* x, int64_t n, int threads)
    : jobs_(jobs.begin(), jobs.end()), x_(x), n_(n) {
  if (jobs.empty()) fail("DenseStage: no matrix");
  check_stage_rows(n);
  check_jobs(jobs);
  add_kinds();
  std::vector<RowTask> plan;
  plan_few_rows(jobs, std::max(threads, 1), plan);
  for (const RowTask& t : plan) tasks_.push_back({t.job, t.r0, t.r1});
}

DenseStage::DenseStage(const Dense& gate, const Dense& up, const float* x, float* g, float* u, int64_t n, int threads)
    : x_(x), n_(n), gate_(&gate), up_(&up) {
  check_stage_rows(n);
  check_swiglu(gate, up);
  const int64_t I = gate.rows;
  jobs_ = {{&gate, g}, {&up, u}};
  add_kinds();
  const int64_t per = swiglu_rows_per_task(gate, up, std::max(threads, 1));
  for (int64_t r = 0; r < I; r += per) tasks_.push_back({-1, r, std::min(I, r + per)});
}

void DenseStage::add_kinds() {
  for (const DenseJob& j : jobs_) {
    kernels::LinearActivations* a = &activations_for(*j.d->op);
    acts_.push_back(a);
    bool seen = false;
    for (const auto& k : kinds_) seen |= k.second == a;
    if (!seen) kinds_.emplace_back(j.d->op.get(), a);
  }
  split_.assign(kinds_.size(), 0);
}

void DenseStage::shape() {
  for (size_t i = 0; i < kinds_.size(); ++i) {
    if (n_ < 2) kinds_[i].first->prepare(x_, n_, *kinds_[i].second);
    else split_[i] = kinds_[i].first->prepare_shape(x_, n_, *kinds_[i].second);
  }
}

void DenseStage::add_to(Stages& st, Op op) {
  if (n_ >= 2) st.add(op, int64_t(kinds_.size()) * n_, prep_fn_);
  st.add(op, int64_t(tasks_.size()), run_fn_);
}

void DenseStage::prep(int64_t k) {
  const size_t i = size_t(k / n_);
  if (!split_[i]) return;  // prepared whole by shape()
  const int64_t r = k % n_;
  kinds_[i].first->prepare_rows(x_, r, r + 1, *kinds_[i].second);
}

void DenseStage::run(int64_t k) {
  const Task& t = tasks_[size_t(k)];
  if (t.job >= 0) {
    const DenseJob& j = jobs_[size_t(t.job)];
    j.d->op->run_rows(*acts_[size_t(t.job)], j.y, t.r0, t.r1);
    add_bias(*j.d, j.y, n_, t.r0, t.r1);
    return;
  }
  const int64_t I = gate_->rows, r0 = t.r0, r1 = t.r1;  // dense_swiglu's task
  float *g = jobs_[0].y, *u = jobs_[1].y;
  gate_->op->run_rows(*acts_[0], g, r0, r1);
  up_->op->run_rows(*acts_[1], u, r0, r1);
  add_bias(*gate_, g, n_, r0, r1);
  add_bias(*up_, u, n_, r0, r1);
  for (int64_t t2 = 0; t2 < n_; ++t2) swiglu(g + t2 * I + r0, u + t2 * I + r0, g + t2 * I + r0, r1 - r0);
}

}  // namespace genesis::runtime
