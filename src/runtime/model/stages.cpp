// Stages of one region; see stages.h.
#include "runtime/model/stages.h"

#include <immintrin.h>

#include <chrono>
#include <thread>

#include "cpu/thread_pool.h"

namespace genesis::runtime {

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

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
    stamp_[s] = now_ns();
    done_.store(int64_t(s + 1), std::memory_order_release);
    throw;
  }
  stamp_[s] = now_ns();
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

void Stages::run(cpu::ThreadPool* pool, ProfileClock& clock) {
  struct Clear {
    Stages& s;
    ~Clear() {
      s.st_.clear();
      s.total_ = 0;
    }
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
  failed_.store(false, std::memory_order_relaxed);
  pool->parallel_for(total_, [this](int64_t k) { task(k); });
  for (size_t s = 0; s + 1 < st_.size(); ++s) clock.lap_at(st_[s].op, stamp_[s]);
  clock.lap(st_.back().op);
}

}  // namespace genesis::runtime
