// Stages of one region; see stages.h.
#include "runtime/model/stages.h"

#include <immintrin.h>

#include <algorithm>
#include <thread>

#include "common/timing.h"
#include "cpu/thread_pool.h"

namespace genesis::runtime {

void Stages::add_raw(Op op, int64_t tasks, void (*fn)(void*, int64_t), void* ctx, void (*after)(void*), void* actx) {
  if (tasks < 0) tasks = 0;
  if (tasks == 0 && !after) return;
  if (tasks == 0) tasks = 1, fn = nullptr;  // a task that only finishes the stage
  st_.push_back({op, tasks, total_, fn, ctx, after, actx});
  total_ += tasks;
}

size_t Stages::stage_of(int64_t k) const {
  size_t s = 0;
  while (s + 1 < st_.size() && st_[s + 1].start <= k) ++s;  // a handful of stages: a scan
  return s;
}

void Stages::finish(size_t s) {
  // acq_rel: the stage's other tasks' writes are visible here, to after() and, through done_, to the next stage.
  if (left_[s].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  try {
    if (st_[s].after && !failed_.load(std::memory_order_relaxed)) st_[s].after(st_[s].actx);
  } catch (...) {
    failed_.store(true, std::memory_order_relaxed);
    stamp_[s] = steady_ns();
    done_.store(int64_t(s + 1), std::memory_order_release);
    throw;
  }
  stamp_[s] = steady_ns();
  done_.store(int64_t(s + 1), std::memory_order_release);
}

void Stages::task(int64_t k) {
  const size_t s = stage_of(k);
  for (int spins = 0; done_.load(std::memory_order_acquire) < int64_t(s);) {
    if (spins >= 4096) {
      std::this_thread::yield();  // more threads than cpus: the stage waited for may be preempted
    } else {
      _mm_pause();
      ++spins;
    }
  }
  const Stage& st = st_[s];
  if (st.fn && !failed_.load(std::memory_order_relaxed)) {
    try {
      st.fn(st.ctx, k - st.start);
    } catch (...) {
      failed_.store(true, std::memory_order_relaxed);
      finish(s);
      throw;  // parallel_for rethrows the first after the region
    }
  }
  finish(s);
}

// The next run of tasks for this thread: a 1 / (4 x threads) share of what is left of the stage the counter is in (at
// least one), taken with one fetch_add as the pool's claims are (no compare-and-swap retries when 16 threads claim at
// a stage's start). Another thread's claim in between may make the run cross into the next stage: its tasks there
// wait for the stage, as any of that stage's do. The pool's own claims over every task at once would take runs
// sized by all the stages' tasks left, a thread then holding many of the next stage's tasks while the current one
// waited for threads.
bool Stages::claim(int64_t& k0, int64_t& k1, int threads) {
  const int64_t cur = next_.load(std::memory_order_relaxed);
  if (cur >= total_) return false;
  const Stage& st = st_[stage_of(cur)];
  const int64_t take = std::max<int64_t>(1, (st.start + st.tasks - cur) / (4 * int64_t(threads)));
  k0 = next_.fetch_add(take, std::memory_order_relaxed);
  if (k0 >= total_) return false;
  k1 = std::min(k0 + take, total_);
  return true;
}

void Stages::run(cpu::ThreadPool* pool, ProfileClock& clock) {
  struct Clear {
    Stages& s;
    ~Clear() { s.clear(); }
  } clear{*this};
  if (st_.empty()) return;
  if (!pool || pool->size() == 1) {  // in order on the caller, each stage lapped as it ends
    for (const Stage& st : st_) {
      if (st.fn)
        for (int64_t k = 0; k < st.tasks; ++k) st.fn(st.ctx, k);
      if (st.after) st.after(st.actx);
      clock.lap(st.op);
    }
    return;
  }
  if (left_size_ < st_.size()) {
    left_ = std::make_unique<std::atomic<int64_t>[]>(st_.size());
    left_size_ = st_.size();
  }
  for (size_t s = 0; s < st_.size(); ++s) left_[s].store(st_[s].tasks, std::memory_order_relaxed);
  stamp_.assign(st_.size(), 0);
  done_.store(0, std::memory_order_relaxed);
  next_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  // One entry per thread: whichever threads join claim the tasks in index order (a worker that is not running does
  // not hold the region up: its entry is taken by another thread, which finds nothing left). A task's exception is
  // kept and the claimed tasks still finish (as no-ops), so that no stage waits for them.
  const int threads = pool->size();
  pool->parallel_for(threads, [this, threads](int64_t) {
    int64_t k0 = 0, k1 = 0;
    while (claim(k0, k1, threads))
      for (int64_t k = k0; k < k1; ++k) {
        try {
          task(k);
        } catch (...) {
          const std::lock_guard<std::mutex> lock(error_mutex_);
          if (!error_) error_ = std::current_exception();
        }
      }
  });
  if (error_) std::rethrow_exception(error_);
  ends_.clear();
  for (size_t s = 0; s < st_.size(); ++s) ends_.emplace_back(st_[s].op, stamp_[s]);
  clock.lap_region(ends_);
}

}  // namespace genesis::runtime
