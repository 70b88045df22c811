// The timing protocol of BENCHMARKING.md, shared by `genesis bench` and the kernel factory: warm up by elapsed
// time, repeat a call until one sample lasts >= min_sample_s, take >= samples samples, report median and IQR;
// A/B comparisons interleave the two and count pair-by-pair wins.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

namespace genesis {

// The monotonic clock in nanoseconds: the step profile's laps, the stages' stamps taken on pool threads and the pool's
// own waits read this one clock.
inline int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct TimingOptions {
  double warmup_s = 0.02;
  double min_sample_s = 0.002;  // one sample = enough calls to last this long
  int samples = 15;
};

struct TimingStats {
  double median_us = 0;  // per call
  double iqr_us = 0;     // per call (q3 - q1)
  double min_us = 0;
  int calls_per_sample = 0;
  int samples = 0;
  std::vector<double> sample_us;  // per-call time of each sample
};

// Times fn() (one call of the thing measured); per-call setup belongs inside fn and must be cheap.
TimingStats time_calls(const std::function<void()>& fn, const TimingOptions& opt = {});

struct AbResult {
  double median_ratio = 0;  // median over pairs of time(A) / time(B); < 1 means A is faster
  int a_wins = 0;           // pairs where A was faster
  int rounds = 0;
  TimingStats a, b;
};

// Interleaves A and B (A B A B ...) for `rounds` pairs of samples, each sample >= opt.min_sample_s.
AbResult ab_compare(const std::function<void()>& a, const std::function<void()>& b, int rounds,
                    const TimingOptions& opt = {});

double median(std::vector<double> v);
double quantile(std::vector<double> v, double q);

}  // namespace genesis
