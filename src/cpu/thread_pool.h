// A persistent, pinned thread pool for fork-join work: run() (one call per thread) and parallel_for() (tasks claimed
// dynamically), plus cpu pinning helpers. What a task is (an expert's row block, a head) belongs to the caller.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>
#include <sched.h>

namespace genesis::cpu {

// Cpus this process may run on (its affinity mask when the program started, before any thread pinned itself),
// ascending; never empty.
std::vector<int> allowed_cpus();

// Pins the calling thread to one OS cpu id. Pinning is a performance hint: a cpu outside the allowed set is ignored.
void pin_current_thread(int cpu);

class ThreadPool {
 public:
  // threads = 0: one per allowed cpu (all logical cpus unless the process is restricted by taskset/cpusets).
  // pin: worker t is pinned to allowed_cpus()[t % count], so with a full mask workers sit on cpus 1..n-1, and a thread
  // that calls run() is pinned to allowed_cpus()[0] while the pool lives: left free to migrate, the scheduler at times
  // put the caller on a spinning worker's cpu, and each region then waited out the worker's whole spin (measured: a
  // 512-row bf16 product on 2 threads took 50 us instead of 10). The destructor gives the first such thread its
  // affinity back when it is the one destroying the pool (processes it starts meanwhile inherit the pinned mask).
  explicit ThreadPool(int threads = 0, bool pin = true);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }
  // How long an idle worker spins before it sleeps (default 50 us when the pool has a cpu per thread, else 0). The
  // hybrid mode raises it past the GPU's part of a layer (~0.1 ms), so the workers are awake for the next experts.
  long spin_ns() const { return spin_ns_.load(std::memory_order_relaxed); }
  void set_spin_ns(long ns) { spin_ns_.store(ns, std::memory_order_relaxed); }

  // Calls fn(tid, nthreads) once on each of the size() threads; the caller runs tid 0. Returns when all are done.
  // The first exception (lowest tid) thrown by fn is rethrown here after every thread finished. No allocation.
  // Calls from several threads are serialized; a nested call from inside fn runs all tids serially on the caller.
  template <class F>
  void run(F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run_raw([](void* c, int tid, int n) { (*static_cast<Fn*>(c))(tid, n); },
            const_cast<void*>(static_cast<const void*>(&fn)));
  }
  void run_raw(void (*fn)(void*, int, int), void* ctx);

  // fn(task) for every task in [0, tasks), each claimed by whichever thread is free next (one shared atomic counter),
  // so tasks of uneven cost balance themselves. One region; serial when the pool has one thread or tasks <= 1.
  // The region ends when every task is done, not when every worker has checked in: a worker that is not running
  // (its cpu taken by another process, or asleep) when the region starts does not hold it up; it joins while tasks
  // remain, or skips the region. (run() must wait for every tid; a 16-vCPU host showed 15-100 us products taking
  // 0.5-1.5 ms when one pinned worker lost its cpu for a while.) The first exception thrown by fn is rethrown here.
  // Claims are guided: one takes a run of consecutive tasks, 1 / (4 x threads) of those left (at least one), so that a
  // thread walks neighbouring row blocks in a row (its prefetch runs on into the next; one claim per run) and the last
  // claims even out the end; GENESIS_POOL_GUIDED=k takes 1 / (k x threads), 0 one task per claim. A thread runs its
  // run in index order, so a task may wait for tasks of lower index (they are done or running), never of higher.
  template <class F>
  void parallel_for(int64_t tasks, F&& fn) {
    if (tasks <= 0) return;
    if (size_ == 1 || tasks == 1 || tls_running_pool_is(this)) {
      for (int64_t t = 0; t < tasks; ++t) fn(t);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run_tasks_raw(tasks, [](void* c, int64_t t) { (*static_cast<Fn*>(c))(t); },
                  const_cast<void*>(static_cast<const void*>(&fn)));
  }
  void run_tasks_raw(int64_t tasks, void (*fn)(void*, int64_t), void* ctx);
  static bool tls_running_pool_is(const ThreadPool* p);

  // Since the pool was made: nanoseconds the caller spent waiting at the end of runs for the other threads (the
  // barrier on the critical path: imbalance, wake-up latency), and the number of parallel runs.
  int64_t wait_ns() const { return wait_ns_; }
  int64_t runs() const { return runs_; }
  // Since the pool was made: nanoseconds all threads (the caller's part included) spent inside region functions and
  // tasks, summed. Against the regions' wall time times size() it is the pool's utilization: what the threads spent
  // on work rather than waking up, claiming or waiting (two time-stamp counter reads per run() call or run of claimed
  // tasks, added to the thread's own slot: a clock_gettime pair per claim was 1.2% of a 2-core decode with small
  // tasks, and one counter shared by 16 threads is one more contended cache line at every region's end).
  // Counted only with GENESIS_PROFILE_UTILIZATION=1 (read when the pool is made; times_busy()); 0 otherwise.
  int64_t busy_ns() const;
  bool times_busy() const { return time_busy_; }

  // Median wall time of an empty run(), in microseconds, over `reps` runs after a warm-up.
  double measure_overhead_us(int reps = 2000);

 private:
  struct alignas(64) Slot {
    std::exception_ptr error;
    // Time-stamp counter ticks inside regions: worker tid's own (slot 0: the callers'). On a line of its own: the
    // caller reads every slot's `error` after each run(), and a line the worker had just written cost a transfer.
    alignas(64) std::atomic<int64_t> busy{0};
  };
  void add_busy(uint64_t ticks);  // into this thread's slot: no cache line shared with the other threads

  void worker_loop(int tid, int cpu, uint32_t start_generation);
  void run_serial(void (*fn)(void*, int, int), void* ctx);
  void join_tasks();    // a worker's part of the open task region, if one is open
  void claim_tasks();   // run tasks until none is left to claim
  void publish(bool tasks);      // bumps generation_ (its low bit: a task region) and wakes the workers
  void pin_caller();             // the calling thread to caller_cpu_ (once per thread), as run() does

  int size_ = 1;
  int guided_ = 4;  // a claim takes 1 / (guided_ x size_) of the tasks left (0: one task)
  bool pin_ = true;
  int caller_cpu_ = -1;  // where callers of run() are pinned (-1: not pinned)
  bool caller_pinned_ = false;
  pthread_t pinned_caller_{};
  cpu_set_t caller_mask_{};  // its affinity before
  std::atomic<long> spin_ns_{0};  // how long a waiting thread spins before it sleeps
  std::unique_ptr<Slot[]> slots_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  int64_t wait_ns_ = 0, runs_ = 0;  // written by the caller under run_mutex_
  bool time_busy_ = false;  // GENESIS_PROFILE_UTILIZATION=1
  uint64_t tsc0_ = 0;  // the time-stamp counter and the clock when the pool was made (busy_ns' rate)
  long ns0_ = 0;

  // Published by run_raw() before generation_ is bumped (release); read by workers after they see the bump.
  void (*fn_)(void*, int, int) = nullptr;
  void* ctx_ = nullptr;
  alignas(64) std::atomic<uint32_t> generation_{0};
  std::atomic<bool> stop_{false};
  alignas(64) std::atomic<int> pending_{0};  // workers still running the current job

  // The task region (parallel_for): published before task_open_ is set; a worker reads them only after it counted
  // itself in task_active_ and then saw task_open_ (the caller closes the region, then waits for task_active_ == 0).
  void (*task_fn_)(void*, int64_t) = nullptr;
  void* task_ctx_ = nullptr;
  int64_t task_count_ = 0;
  std::exception_ptr task_error_;  // the first task's exception (under task_error_mutex_)
  std::mutex task_error_mutex_;
  alignas(64) std::atomic<int64_t> task_next_{0};
  alignas(64) std::atomic<int64_t> task_done_{0};
  alignas(64) std::atomic<int> task_active_{0};
  std::atomic<bool> task_open_{false};
};

// Process-wide pool of `threads` threads (0 = one per allowed cpu). One pool per distinct count, created on first
// request and kept for the life of the process, so a returned reference never dangles; idle pools sleep.
ThreadPool& default_pool(int threads = 0);

}  // namespace genesis::cpu
