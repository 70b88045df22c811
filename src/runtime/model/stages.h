// Several dependent steps of a decode layer in one parallel region: the products, the attention and the element-wise
// work between them as stages, stage s's tasks starting when every task of the stages before it (and their `after`)
// is done. On the 16-core host a region of its own cost each of them a wake-up and a barrier, about 2 us (151 regions
// in a SmolLM2-shaped token of 2 ms); a boundary between stages costs the waiting threads one cache line's transfer.
// Tasks are claimed in index order, in runs that stay within a stage, so the tasks a waiting task waits for are done or
// running on other threads: it never waits for one that waits for it.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "runtime/model/profile.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::runtime {

class Stages {
 public:
  // fn(k) for k < tasks; then after(), when given, on the thread that finished the stage's last task, before the next
  // stage starts (one thread's serial work: what must come first, as a product's activation shape). A stage of no tasks
  // runs only its after(). fn and after are referenced: they must outlive run(). Profiled as `op`.
  template <class F>
  void add(Op op, int64_t tasks, F& fn) {
    add_raw(op, tasks, [](void* c, int64_t k) { (*static_cast<F*>(c))(k); }, &fn, nullptr, nullptr);
  }
  template <class F, class A>
  void add(Op op, int64_t tasks, F& fn, A& after) {
    add_raw(op, tasks, [](void* c, int64_t k) { (*static_cast<F*>(c))(k); }, &fn,
            [](void* c) { (*static_cast<A*>(c))(); }, &after);
  }
  // Every stage in one region of the pool (in order on the caller when pool is null or has one thread), then the
  // stages' times lapped on `clock` (ProfileClock::lap_region), each up to the moment its last task finished, the
  // region's closing wait as barrier. Clears the stages. The first exception a task or after() throws is rethrown
  // here; the stages after it do not run.
  void run(cpu::ThreadPool* pool, ProfileClock& clock);
  // Drops stages added and not run (a caller that threw between add() and run() leaves them).
  void clear() {
    st_.clear();
    total_ = 0;
  }

 private:
  struct Stage {
    Op op;
    int64_t tasks, start;
    void (*fn)(void*, int64_t);
    void* ctx;
    void (*after)(void*);
    void* actx;
  };
  void add_raw(Op op, int64_t tasks, void (*fn)(void*, int64_t), void* ctx, void (*after)(void*), void* actx);
  void task(int64_t k);
  bool claim(int64_t& k0, int64_t& k1, int threads);
  void finish(size_t s);
  size_t stage_of(int64_t k) const;

  std::vector<Stage> st_;
  std::vector<int64_t> stamp_;  // [stages]: when each stage's last task finished (ns)
  std::vector<std::pair<Op, int64_t>> ends_;  // the laps of run()
  std::unique_ptr<std::atomic<int64_t>[]> left_;  // [stages]: tasks not yet finished
  size_t left_size_ = 0;
  int64_t total_ = 0;
  alignas(64) std::atomic<int64_t> next_{0};  // the next task to claim
  alignas(64) std::atomic<int64_t> done_{0};  // stages complete (their after() included)
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;  // the first task's or after()'s exception
  std::mutex error_mutex_;
};

}  // namespace genesis::runtime
