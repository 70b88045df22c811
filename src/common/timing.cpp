// Implementation of the timing protocol (see timing.h).
#include "common/timing.h"

#include <algorithm>
#include <cmath>

#include "common/util.h"

namespace genesis {

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

double median(std::vector<double> v) { return quantile(std::move(v), 0.5); }

namespace {

// Calls needed for one sample to last >= min_s, from a short calibration.
int calibrate(const std::function<void()>& fn, double min_s) {
  int n = 1;
  while (true) {
    const double t0 = now_seconds();
    for (int i = 0; i < n; ++i) fn();
    const double dt = now_seconds() - t0;
    if (dt >= min_s || n >= (1 << 24)) {
      if (dt <= 0) return n;
      return std::max(1, int(std::ceil(double(n) * min_s / dt)));
    }
    n = dt > min_s / 64 ? int(std::ceil(double(n) * 1.2 * min_s / dt)) : n * 8;
  }
}

double one_sample(const std::function<void()>& fn, int calls) {
  const double t0 = now_seconds();
  for (int i = 0; i < calls; ++i) fn();
  return (now_seconds() - t0) * 1e6 / double(calls);
}

void warmup(const std::function<void()>& fn, double s) {
  const double end = now_seconds() + s;
  do fn();
  while (now_seconds() < end);
}

TimingStats summarize(std::vector<double> us, int calls) {
  TimingStats st;
  st.calls_per_sample = calls;
  st.samples = int(us.size());
  st.median_us = median(us);
  st.iqr_us = quantile(us, 0.75) - quantile(us, 0.25);
  st.min_us = us.empty() ? 0 : *std::min_element(us.begin(), us.end());
  st.sample_us = std::move(us);
  return st;
}

}  // namespace

TimingStats time_calls(const std::function<void()>& fn, const TimingOptions& opt) {
  warmup(fn, opt.warmup_s);
  const int calls = calibrate(fn, opt.min_sample_s);
  std::vector<double> us;
  for (int s = 0; s < std::max(1, opt.samples); ++s) us.push_back(one_sample(fn, calls));
  return summarize(std::move(us), calls);
}

AbResult ab_compare(const std::function<void()>& a, const std::function<void()>& b, int rounds,
                    const TimingOptions& opt) {
  warmup(a, opt.warmup_s / 2);
  warmup(b, opt.warmup_s / 2);
  const int ca = calibrate(a, opt.min_sample_s), cb = calibrate(b, opt.min_sample_s);
  std::vector<double> ta, tb, ratios;
  AbResult r;
  for (int i = 0; i < rounds; ++i) {
    // Alternate which goes first so that a drift inside a pair does not favour one side.
    double x, y;
    if (i % 2 == 0) {
      x = one_sample(a, ca);
      y = one_sample(b, cb);
    } else {
      y = one_sample(b, cb);
      x = one_sample(a, ca);
    }
    ta.push_back(x);
    tb.push_back(y);
    ratios.push_back(x / y);
    if (x < y) ++r.a_wins;
  }
  r.rounds = rounds;
  r.median_ratio = median(ratios);
  r.a = summarize(std::move(ta), ca);
  r.b = summarize(std::move(tb), cb);
  return r;
}

}  // namespace genesis
