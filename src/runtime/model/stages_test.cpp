// Stages (stages.h): a stage's tasks see every write of the stages before it and of their after(), and the profile's
// laps add up (none negative); an exception in a task or an after() is rethrown by run() without a hang, and the later stages do not
// run; with no pool the stages run in order on the caller. At 2 and 5 threads (more threads than this machine's cpus: waiting threads yield).
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "common/timing.h"
#include "cpu/thread_pool.h"
#include "runtime/model/stages.h"

namespace genesis::runtime {
namespace {

TEST(Stages, EachStageSeesTheStagesBefore) {
  for (int threads : {1, 2, 5}) {
    cpu::ThreadPool pool(threads);
    Profile prof;
    ProfileClock clock(prof, &pool);
    const int64_t t_start = steady_ns();
    clock.start();
    Stages st;
    constexpr int64_t kN = 300;
    std::vector<int64_t> a(kN, 0), b(kN, 0), c(kN, 0);
    int64_t sum_a = -1;
    std::atomic<int64_t> wrong{0};
    auto fa = [&](int64_t k) { a[size_t(k)] = k + 1; };
    auto after_a = [&] {  // every a written
      sum_a = 0;
      for (int64_t v : a) sum_a += v;
    };
    auto fb = [&](int64_t k) {
      if (sum_a != kN * (kN + 1) / 2) wrong.fetch_add(1);
      b[size_t(k)] = a[size_t(kN - 1 - k)] * 2;
    };
    auto nothing = [] {};
    auto fc = [&](int64_t k) {
      for (int64_t j = 0; j < kN; j += 37)
        if (b[size_t(j)] != 2 * (kN - j)) wrong.fetch_add(1);
      c[size_t(k)] = b[size_t(k)] + 1;
    };
    for (int rep = 0; rep < 20; ++rep) {
      std::fill(a.begin(), a.end(), 0);
      st.add(Op::dense, kN, fa, after_a);
      st.add(Op::attention, kN, fb);
      st.add(Op::elementwise, 0, fb, nothing);  // a stage of no tasks: its after() alone
      st.add(Op::dense, 7, fc);
      st.run(threads == 1 ? nullptr : &pool, clock);
      for (int64_t k = 0; k < 7; ++k) ASSERT_EQ(c[size_t(k)], 2 * (kN - k) + 1) << threads << " threads";
    }
    EXPECT_EQ(wrong.load(), 0) << threads << " threads";
    EXPECT_GT(prof.seconds[size_t(Op::attention)], 0.0);
    // The laps add up to the time since the clock started (up to the last lap: no more than that), none negative.
    const double elapsed = double(steady_ns() - t_start) * 1e-9;
    for (double v : prof.seconds) EXPECT_GE(v, 0.0) << threads << " threads";
    EXPECT_LE(prof.total(), elapsed) << threads << " threads";
    EXPECT_GT(prof.total(), 0.0) << threads << " threads";
  }
}

TEST(Stages, AnExceptionEndsTheRunWithoutAHang) {
  for (int threads : {1, 2, 5}) {
    cpu::ThreadPool pool(threads);
    Profile prof;
    ProfileClock clock(prof, &pool);
    clock.start();
    for (bool in_after : {false, true}) {
      Stages st;
      std::atomic<int64_t> later{0};
      auto fa = [&](int64_t k) {
        if (!in_after && k == 5) throw std::runtime_error("task 5");
      };
      auto after = [&] {
        if (in_after) throw std::runtime_error("after");
      };
      auto fb = [&](int64_t) { later.fetch_add(1); };
      st.add(Op::dense, 64, fa, after);
      st.add(Op::dense, 64, fb);
      EXPECT_THROW(st.run(threads == 1 ? nullptr : &pool, clock), std::runtime_error) << threads << " " << in_after;
      EXPECT_EQ(later.load(), 0) << threads << " threads: a stage after the failure ran";
      // the same object runs again afterwards
      auto ok = [&](int64_t) { later.fetch_add(1); };
      st.add(Op::dense, 10, ok);
      st.run(threads == 1 ? nullptr : &pool, clock);
      EXPECT_EQ(later.load(), 10);
    }
  }
}

}  // namespace
}  // namespace genesis::runtime
