// ThreadPool: workers spin briefly after each run (so back-to-back runs cost a few microseconds), then sleep on a
// C++20 atomic wait (so an idle pool burns no CPU).
#include "cpu/thread_pool.h"

#include <immintrin.h>
#include <x86intrin.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <string>

#include "common/timing.h"

namespace genesis::cpu {
namespace {

constexpr long kSpinNs = 50'000;  // tens of microseconds: covers the gap between layers of one decode step

// The integer in environment variable `name` when it is set, a whole number and within [lo, hi]; else `fallback`.
long env_long(const char* name, long lo, long hi, long fallback) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  return end && *end == '\0' && v >= lo && v <= hi ? v : fallback;
}

thread_local const ThreadPool* tls_running_pool = nullptr;
thread_local const ThreadPool* tls_pinned_by = nullptr;  // the pool that pinned this (calling) thread
thread_local const ThreadPool* tls_worker_of = nullptr;  // the pool whose worker this thread is, and its tid
thread_local int tls_worker_tid = 0;

// Waits until `a` no longer holds `old`: spins with pause for up to spin_ns, then sleeps on the atomic.
template <class T>
T wait_while_equal(const std::atomic<T>& a, T old, long spin_ns) {
  T v = a.load(std::memory_order_acquire);
  if (v != old) return v;
  if (spin_ns > 0) {
    long start = steady_ns();
    for (int i = 1;; ++i) {
      _mm_pause();
      v = a.load(std::memory_order_acquire);
      if (v != old) return v;
      if ((i & 63) == 0 && steady_ns() - start > spin_ns) break;
    }
  }
  for (;;) {
    a.wait(old, std::memory_order_acquire);
    v = a.load(std::memory_order_acquire);
    if (v != old) return v;
  }
}

}  // namespace

namespace {

std::vector<int> read_affinity() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty()) {
    unsigned n = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned c = 0; c < n; ++c) cpus.push_back(static_cast<int>(c));
  }
  return cpus;
}

const std::vector<int>& startup_cpus() {
  static const std::vector<int> cpus = read_affinity();
  return cpus;
}

// Captured during static initialization, before main() can pin itself: sched_getaffinity() reports the calling
// thread's mask, so asking later from a pinned thread would put every worker of a new pool on that one cpu.
[[maybe_unused]] const bool kStartupCpusCaptured = !startup_cpus().empty();

}  // namespace

std::vector<int> allowed_cpus() { return startup_cpus(); }

void pin_current_thread(int cpu) {
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // EINVAL for a disallowed cpu: keep running
}

ThreadPool::ThreadPool(int threads, bool pin) : pin_(pin) {
  const char* util = std::getenv("GENESIS_PROFILE_UTILIZATION");
  time_busy_ = util && std::string(util) == "1";
  tsc0_ = __rdtsc();
  ns0_ = steady_ns();
  std::vector<int> cpus = allowed_cpus();
  size_ = threads > 0 ? threads : static_cast<int>(cpus.size());
  // Spinning only pays when every thread has a core; oversubscribed, a spinner steals time from the thread it waits
  // for.
  spin_ns_ = size_ <= static_cast<int>(cpus.size()) ? kSpinNs : 0;
  // GENESIS_SPIN_US overrides it (0: sleep at once), for machines whose wake-ups are slow.
  spin_ns_ = env_long("GENESIS_SPIN_US", 0, 1000000, spin_ns_ / 1000) * 1000;
  // GENESIS_POOL_GUIDED: the share of a task region's remaining tasks one claim takes is 1 / (this x threads);
  // 0 claims one task at a time.
  guided_ = int(env_long("GENESIS_POOL_GUIDED", 0, 1024, guided_));
  caller_cpu_ = pin && size_ > 1 && size_ <= static_cast<int>(cpus.size()) ? cpus[0] : -1;
  slots_ = std::make_unique<Slot[]>(size_);
  workers_.reserve(size_ - 1);
  uint32_t gen = generation_.load(std::memory_order_relaxed);
  for (int t = 1; t < size_; ++t) {
    int cpu = pin ? cpus[t % cpus.size()] : -1;
    workers_.emplace_back([this, t, cpu, gen] { worker_loop(t, cpu, gen); });
  }
}

ThreadPool::~ThreadPool() {
  if (caller_pinned_ && pthread_equal(pinned_caller_, pthread_self())) {
    (void)pthread_setaffinity_np(pinned_caller_, sizeof(caller_mask_), &caller_mask_);
    if (tls_pinned_by == this) tls_pinned_by = nullptr;
  }
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::worker_loop(int tid, int cpu, uint32_t seen) {
  if (cpu >= 0) pin_current_thread(cpu);
  tls_worker_of = this;
  tls_worker_tid = tid;
  tls_running_pool = this;
  for (;;) {
    seen = wait_while_equal(generation_, seen, spin_ns_.load(std::memory_order_relaxed));
    if (stop_.load(std::memory_order_relaxed)) return;
    if (seen & 1u) {  // a task region: join it if it is still open (the caller does not wait for this worker)
      join_tasks();
      continue;
    }
    const uint64_t b0 = time_busy_ ? __rdtsc() : 0;
    try {
      fn_(ctx_, tid, size_);
    } catch (...) {
      slots_[tid].error = std::current_exception();
    }
    if (time_busy_) add_busy(__rdtsc() - b0);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void ThreadPool::run_serial(void (*fn)(void*, int, int), void* ctx) {
  for (int t = 0; t < size_; ++t) fn(ctx, t, size_);
}

void ThreadPool::run_raw(void (*fn)(void*, int, int), void* ctx) {
  if (size_ == 1 || tls_running_pool == this) {
    run_serial(fn, ctx);
    return;
  }
  std::lock_guard<std::mutex> lock(run_mutex_);
  pin_caller();
  fn_ = fn;
  ctx_ = ctx;
  pending_.store(size_ - 1, std::memory_order_relaxed);
  publish(false);  // publishes fn_, ctx_, pending_

  const ThreadPool* outer = tls_running_pool;
  tls_running_pool = this;
  const uint64_t b0 = time_busy_ ? __rdtsc() : 0;
  try {
    fn(ctx, 0, size_);
  } catch (...) {
    slots_[0].error = std::current_exception();
  }
  tls_running_pool = outer;
  if (time_busy_) add_busy(__rdtsc() - b0);

  const long w0 = steady_ns();
  for (int p = pending_.load(std::memory_order_acquire); p != 0;) p = wait_while_equal(pending_, p, spin_ns_.load(std::memory_order_relaxed));
  wait_ns_ += steady_ns() - w0;
  ++runs_;

  std::exception_ptr first;
  for (int t = 0; t < size_; ++t) {
    if (slots_[t].error && !first) first = slots_[t].error;
    slots_[t].error = nullptr;
  }
  if (first) std::rethrow_exception(first);
}

void ThreadPool::pin_caller() {
  if (caller_cpu_ >= 0 && tls_pinned_by != this) {
    if (!caller_pinned_ &&
        pthread_getaffinity_np(pthread_self(), sizeof(caller_mask_), &caller_mask_) == 0) {
      caller_pinned_ = true;
      pinned_caller_ = pthread_self();
    }
    pin_current_thread(caller_cpu_);
    tls_pinned_by = this;
  }
}

void ThreadPool::publish(bool tasks) {
  const uint32_t g = generation_.load(std::memory_order_relaxed);  // written only here (under run_mutex_) and at exit
  const uint32_t next = (((g >> 1) + 1) << 1) | (tasks ? 1u : 0u);
  generation_.store(next, std::memory_order_release);
  generation_.notify_all();  // no system call while the workers are still spinning
}

bool ThreadPool::tls_running_pool_is(const ThreadPool* p) { return tls_running_pool == p; }

void ThreadPool::add_busy(uint64_t ticks) {
  if (tls_worker_of == this) {  // only this worker writes its slot: a plain read-modify-write, no lock
    std::atomic<int64_t>& b = slots_[tls_worker_tid].busy;
    b.store(b.load(std::memory_order_relaxed) + int64_t(ticks), std::memory_order_relaxed);
  } else {  // a caller (run_mutex_ serializes them; it may be another pool's worker)
    slots_[0].busy.fetch_add(int64_t(ticks), std::memory_order_relaxed);
  }
}

int64_t ThreadPool::busy_ns() const {
  // Ticks to nanoseconds by the time-stamp counter's rate since the pool was made (an invariant TSC); before 1 ms has
  // passed there is nothing worth converting.
  const double ns = double(steady_ns() - ns0_), ticks = double(__rdtsc() - tsc0_);
  int64_t b = 0;
  for (int t = 0; t < size_; ++t) b += slots_[t].busy.load(std::memory_order_relaxed);
  return ns < 1e6 || ticks <= 0 ? 0 : int64_t(double(b) * ns / ticks);
}

void ThreadPool::claim_tasks() {
  const ThreadPool* outer = tls_running_pool;
  tls_running_pool = this;  // a nested parallel_for / run from inside a task runs serially
  const int64_t share = int64_t(guided_) * size_;
  for (;;) {
    // Guided claims: a run of tasks, a share of those left (at least one), so that early claims are long runs of
    // neighbouring tasks (one thread walks a matrix's row blocks in a row and its prefetch runs on from one into the
    // next) and the last ones single tasks that even out the end.
    const int64_t left = task_count_ - task_next_.load(std::memory_order_relaxed);
    const int64_t c = share > 0 ? std::max<int64_t>(1, left / share) : 1;
    const int64_t t0 = task_next_.fetch_add(c, std::memory_order_relaxed);
    if (t0 >= task_count_) break;
    const int64_t t1 = std::min(t0 + c, task_count_);
    const uint64_t b0 = time_busy_ ? __rdtsc() : 0;
    for (int64_t t = t0; t < t1; ++t) {
      try {
        task_fn_(task_ctx_, t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(task_error_mutex_);
        if (!task_error_) task_error_ = std::current_exception();
      }
    }
    if (time_busy_) add_busy(__rdtsc() - b0);
    if (task_done_.fetch_add(t1 - t0, std::memory_order_acq_rel) + (t1 - t0) == task_count_) task_done_.notify_one();
  }
  tls_running_pool = outer;
}

void ThreadPool::join_tasks() {
  // Counted first, then the check: the caller closes the region before it waits for task_active_ to reach 0, so a
  // worker that saw it open reads its fields while they are still the region's (seq_cst on both sides).
  task_active_.fetch_add(1, std::memory_order_seq_cst);
  if (task_open_.load(std::memory_order_seq_cst)) claim_tasks();
  if (task_active_.fetch_sub(1, std::memory_order_acq_rel) == 1) task_active_.notify_one();
}

void ThreadPool::run_tasks_raw(int64_t tasks, void (*fn)(void*, int64_t), void* ctx) {
  std::lock_guard<std::mutex> lock(run_mutex_);
  pin_caller();
  task_fn_ = fn;
  task_ctx_ = ctx;
  task_count_ = tasks;
  task_error_ = nullptr;
  task_next_.store(0, std::memory_order_relaxed);
  task_done_.store(0, std::memory_order_relaxed);
  task_open_.store(true, std::memory_order_seq_cst);  // publishes the fields to workers that join
  publish(true);
  claim_tasks();
  const long spin = spin_ns_.load(std::memory_order_relaxed);
  const long w0 = steady_ns();
  for (int64_t d = task_done_.load(std::memory_order_acquire); d != tasks;) d = wait_while_equal(task_done_, d, spin);
  task_open_.store(false, std::memory_order_seq_cst);
  for (int a = task_active_.load(std::memory_order_seq_cst); a != 0;) a = wait_while_equal(task_active_, a, spin);
  wait_ns_ += steady_ns() - w0;
  ++runs_;
  if (task_error_) {
    std::exception_ptr e = task_error_;
    task_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

double ThreadPool::measure_overhead_us(int reps) {
  reps = std::max(reps, 1);
  auto empty = [](int, int) {};
  for (int i = 0; i < 200; ++i) run(empty);
  std::vector<double> us(reps);
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    run(empty);
    auto t1 = std::chrono::steady_clock::now();
    us[i] = std::chrono::duration<double, std::micro>(t1 - t0).count();
  }
  std::nth_element(us.begin(), us.begin() + reps / 2, us.end());
  return us[reps / 2];
}

ThreadPool& default_pool(int threads) {
  static std::mutex mu;
  // Never destroyed: pools may be in use from static destructors of other modules, and their workers must not
  // outlive the atomics' waiter table at exit.
  static auto* pools = new std::map<int, std::unique_ptr<ThreadPool>>();
  int n = threads > 0 ? threads : static_cast<int>(allowed_cpus().size());
  std::lock_guard<std::mutex> lock(mu);
  auto& p = (*pools)[n];
  if (!p) p = std::make_unique<ThreadPool>(n);
  return *p;
}

}  // namespace genesis::cpu
