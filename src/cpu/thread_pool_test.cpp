// ThreadPool: each tid runs once per run(), many runs, exceptions reach the caller, 1 thread and oversubscribed
// pools, nesting, default_pool identity, and an overhead figure.
#include "cpu/thread_pool.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <vector>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <thread>

#include "common/error.h"

namespace genesis::cpu {
namespace {

void check_each_tid_once(ThreadPool& pool, int runs) {
  const int n = pool.size();
  std::vector<std::atomic<int>> hits(n);
  std::atomic<int> bad_n{0};
  for (int r = 0; r < runs; ++r) {
    pool.run([&](int tid, int nthreads) {
      if (nthreads != n || tid < 0 || tid >= n) {
        bad_n.fetch_add(1);
        return;
      }
      hits[tid].fetch_add(1, std::memory_order_relaxed);
    });
    // run() returns only when every thread is done, so the counts are exact after each run.
    for (int t = 0; t < n; ++t) ASSERT_EQ(hits[t].load(), r + 1) << "tid " << t << " run " << r;
  }
  EXPECT_EQ(bad_n.load(), 0);
}

TEST(ThreadPool, DefaultSizeIsAllowedCpus) {
  ThreadPool pool;
  EXPECT_EQ(pool.size(), static_cast<int>(allowed_cpus().size()));
  EXPECT_GE(pool.size(), 1);
}

TEST(ThreadPool, EveryTidOncePerRunManyRuns) {
  ThreadPool pool(2);
  check_each_tid_once(pool, 5000);
}

TEST(ThreadPool, OneThread) {
  ThreadPool pool(1);
  EXPECT_EQ(pool.size(), 1);
  std::thread::id caller = std::this_thread::get_id(), ran;
  pool.run([&](int tid, int n) {
    EXPECT_EQ(tid, 0);
    EXPECT_EQ(n, 1);
    ran = std::this_thread::get_id();
  });
  EXPECT_EQ(ran, caller);
  check_each_tid_once(pool, 100);
}

TEST(ThreadPool, MoreThreadsThanCores) {
  int n = static_cast<int>(allowed_cpus().size()) * 3 + 1;
  ThreadPool pool(n);
  EXPECT_EQ(pool.size(), n);
  check_each_tid_once(pool, 300);
}

TEST(ThreadPool, CallerIsTidZeroAndWorkersAreDistinctThreads) {
  ThreadPool pool(4, /*pin=*/false);
  std::vector<std::thread::id> ids(4);
  pool.run([&](int tid, int) { ids[tid] = std::this_thread::get_id(); });
  EXPECT_EQ(ids[0], std::this_thread::get_id());
  for (int a = 0; a < 4; ++a)
    for (int b = a + 1; b < 4; ++b) EXPECT_NE(ids[a], ids[b]);
}

TEST(ThreadPool, ResultsVisibleAfterRun) {
  ThreadPool pool(3);
  std::vector<long> part(3);
  for (int r = 0; r < 200; ++r) {
    pool.run([&](int tid, int n) {
      long s = 0;
      for (long i = tid; i < 10000; i += n) s += i;
      part[tid] = s;  // plain writes: run() must order them before its return
    });
    EXPECT_EQ(part[0] + part[1] + part[2], 10000L * 9999 / 2);
  }
}

TEST(ThreadPool, ExceptionFromWorkerPropagates) {
  ThreadPool pool(3);
  for (int r = 0; r < 50; ++r) {
    std::atomic<int> done{0};
    EXPECT_THROW(pool.run([&](int tid, int) {
      done.fetch_add(1);
      if (tid == 2) throw Error("worker failed");
    }),
                 Error);
    EXPECT_EQ(done.load(), 3);  // the other threads still ran to completion
  }
  check_each_tid_once(pool, 100);  // and the pool is still usable
}

TEST(ThreadPool, ExceptionFromCallerAndLowestTidWins) {
  ThreadPool pool(2);
  try {
    pool.run([](int tid, int) { throw std::runtime_error("tid" + std::to_string(tid)); });
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "tid0");
  }
  EXPECT_THROW(pool.run([](int tid, int) {
    if (tid == 0) throw std::logic_error("caller");
  }),
               std::logic_error);
  check_each_tid_once(pool, 10);
}

TEST(ThreadPool, NestedRunIsSerial) {
  ThreadPool pool(2);
  std::atomic<int> inner{0};
  pool.run([&](int, int) { pool.run([&](int, int) { inner.fetch_add(1); }); });
  EXPECT_EQ(inner.load(), 4);
}

TEST(ThreadPool, RunRawPassesContext) {
  ThreadPool pool(2);
  int sums[2] = {0, 0};
  pool.run_raw([](void* c, int tid, int n) { static_cast<int*>(c)[tid] = tid + 10 * n; }, sums);
  EXPECT_EQ(sums[0], 20);
  EXPECT_EQ(sums[1], 21);
}

TEST(ThreadPool, IdleThenRunAgain) {
  // Workers fall asleep after the spin window; the next run must wake them.
  ThreadPool pool(2);
  check_each_tid_once(pool, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  check_each_tid_once(pool, 3);
}

TEST(ThreadPool, OverheadIsFinite) {
  ThreadPool pool(2);
  double us = pool.measure_overhead_us(500);
  EXPECT_TRUE(std::isfinite(us));
  EXPECT_GT(us, 0.0);
  std::cout << "empty run(), 2 threads: median " << us << " us\n";
}

// parallel_for's regions end when their tasks are done, with or without every worker: a worker that comes late
// joins the open region or skips a closed one, and never runs a task twice or a run() region out of turn. Task
// regions of 1..40 tasks (some sleeping, so that workers fall asleep and come late) alternate with run() regions.
TEST(ThreadPool, TaskRegionsRunEachTaskOnceAmongRunRegions) {
  for (int threads : {2, 3, 5}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> hits(40);
    std::vector<std::atomic<int>> tids(static_cast<size_t>(threads));
    for (int region = 0; region < 600; ++region) {
      const int tasks = 1 + (region * 7) % 40;
      for (auto& h : hits) h.store(0);
      pool.parallel_for(tasks, [&](int64_t t) {
        if ((region + t) % 97 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        hits[size_t(t)].fetch_add(1);
      });
      for (int t = 0; t < 40; ++t) ASSERT_EQ(hits[size_t(t)].load(), t < tasks ? 1 : 0) << region << " " << t;
      if (region % 3 == 0) {
        for (auto& c : tids) c.store(0);
        pool.run([&](int tid, int) { tids[size_t(tid)].fetch_add(1); });
        for (int t = 0; t < threads; ++t) ASSERT_EQ(tids[size_t(t)].load(), 1) << region;
      }
      if (region % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // workers go to sleep
    }
  }
}

// A task may wait for tasks of lower index (the MoE region's down tasks wait for their unit's gate+up): claims run in
// index order, so the tasks waited on are done or running. Here the last task waits for all 63 others, and whoever
// claims it early holds it while the other thread does the rest: the region completes.
TEST(ThreadPool, TaskRegionEndsWhenItsTasksAreDone) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::atomic<int> done{0};
    constexpr int kTasks = 64;
    pool.parallel_for(kTasks, [&](int64_t t) {
      if (t == kTasks - 1)
        while (done.load() < kTasks - 1) std::this_thread::yield();
      done.fetch_add(1);
    });
    EXPECT_EQ(done.load(), kTasks);
  }
}

// Claims are guided: early ones take runs of neighbouring tasks (a share of those left), the last ones single tasks.
// 4096 tasks on 2 threads: some thread runs a run of at least 64 consecutive tasks, and each task runs once.
TEST(ThreadPool, EarlyClaimsTakeRunsOfNeighbouringTasks) {
  ThreadPool pool(2);
  constexpr int kTasks = 4096;
  std::vector<std::atomic<int>> hits(kTasks);
  std::vector<std::thread::id> owner(kTasks);
  pool.parallel_for(kTasks, [&](int64_t t) {
    hits[size_t(t)].fetch_add(1);
    owner[size_t(t)] = std::this_thread::get_id();
  });
  int longest = 1, run = 1;
  for (int t = 0; t < kTasks; ++t) {
    ASSERT_EQ(hits[size_t(t)].load(), 1) << t;
    if (t > 0) run = owner[size_t(t)] == owner[size_t(t - 1)] ? run + 1 : 1;
    longest = std::max(longest, run);
  }
  EXPECT_GE(longest, 64);
}

TEST(ThreadPool, ExceptionFromATaskPropagatesAndThePoolGoesOn) {
  ThreadPool pool(3);
  std::atomic<int> ran{0};
  EXPECT_THROW(pool.parallel_for(30,
                                 [&](int64_t t) {
                                   ran.fetch_add(1);
                                   if (t == 17) throw std::runtime_error("task 17");
                                 }),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 30);  // the other tasks still ran
  std::atomic<int> again{0};
  pool.parallel_for(8, [&](int64_t) { again.fetch_add(1); });
  EXPECT_EQ(again.load(), 8);
}

// busy_ns() counts the threads' time inside regions: 2 threads working 3 ms each in a run() region, then 6 tasks of
// 1 ms, add at least about 12 ms (each thread spins the whole time, so a slow machine only adds), and an empty region
// almost nothing.
TEST(ThreadPool, BusyTimeCountsTheThreadsWorkInRegions) {
  {
    ThreadPool off(2);  // counted only on request (two counter reads per claim are not free on every machine)
    off.parallel_for(4, [](int64_t) {});
    if (!std::getenv("GENESIS_PROFILE_UTILIZATION")) {
      EXPECT_EQ(off.busy_ns(), 0);
    }
  }
  setenv("GENESIS_PROFILE_UTILIZATION", "1", 1);
  ThreadPool pool(2);
  unsetenv("GENESIS_PROFILE_UTILIZATION");
  auto spin_ms = [](double ms) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(int64_t(ms * 1000));
    while (std::chrono::steady_clock::now() < end) {
    }
  };
  const int64_t b0 = pool.busy_ns();
  pool.run([&](int, int) { spin_ms(3); });
  pool.parallel_for(6, [&](int64_t) { spin_ms(1); });
  const int64_t b1 = pool.busy_ns();
  EXPECT_GE(b1 - b0, int64_t(11.5e6));
  pool.parallel_for(64, [](int64_t) {});
  EXPECT_LT(pool.busy_ns() - b1, int64_t(5e6));
}

TEST(DefaultPool, SameCountSamePool) {
  ThreadPool& a = default_pool(2);
  ThreadPool& b = default_pool(2);
  EXPECT_EQ(&a, &b);
  EXPECT_EQ(a.size(), 2);
  ThreadPool& c = default_pool(3);
  EXPECT_EQ(c.size(), 3);
  EXPECT_EQ(&default_pool(2), &a);  // other counts do not invalidate earlier references
  EXPECT_EQ(default_pool(0).size(), static_cast<int>(allowed_cpus().size()));
}

TEST(ThreadPool, PinnedCallerDoesNotShrinkNewPools) {
  // A caller pinned to one cpu (as the bandwidth probe pins itself) must still get workers on the other cpus.
  std::vector<int> cpus = allowed_cpus();
  std::vector<int> seen(cpus.size(), -1);
  std::thread t([&] {
    pin_current_thread(cpus[0]);
    EXPECT_EQ(allowed_cpus(), cpus);
    ThreadPool pool(static_cast<int>(cpus.size()));
    pool.run([&](int tid, int) { seen[tid] = sched_getcpu(); });
  });
  t.join();
  for (size_t i = 1; i < cpus.size(); ++i) EXPECT_EQ(seen[i], cpus[i]) << "worker " << i;
}

TEST(PinCurrentThread, ToleratesBadCpu) {
  std::thread t([] {
    pin_current_thread(allowed_cpus().back());
    pin_current_thread(-1);
    pin_current_thread(1 << 20);
  });
  t.join();
}

}  // namespace
}  // namespace genesis::cpu
