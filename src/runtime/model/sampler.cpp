// Greedy / temperature / top-k / top-p sampling.
#include "runtime/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "runtime/model/ops.h"

namespace genesis::runtime {

void SamplerOptions::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) fail("temperature must be >= 0, got {}", temperature);
  if (top_k < 0) fail("top-k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0 && top_p <= 1)) fail("top-p must be in (0, 1], got {}", top_p);
}

Sampler::Sampler(const SamplerOptions& opt) : opt_(opt), rng_(opt.seed) { opt.validate(); }

std::vector<std::pair<int32_t, double>> Sampler::distribution(std::span<const float> logits) const {
  std::vector<std::pair<int32_t, double>> d;
  if (opt_.temperature <= 0) return d;
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  size_t keep = idx.size();
  if (opt_.top_k > 0) keep = std::min(keep, size_t(opt_.top_k));
  const double mx = double(logits[size_t(idx[0])]) / opt_.temperature;
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    const double p = std::exp(double(logits[size_t(idx[i])]) / opt_.temperature - mx);
    d.emplace_back(idx[i], p);
    sum += p;
  }
  for (auto& e : d) e.second /= sum;
  if (opt_.top_p < 1) {
    // Keep the smallest prefix (most likely first) whose mass reaches top_p; at least one token.
    double cum = 0;
    size_t n = 0;
    while (n < d.size()) {
      cum += d[n].second;
      ++n;
      if (cum >= opt_.top_p) break;
    }
    d.resize(n);
    double s2 = 0;
    for (auto& e : d) s2 += e.second;
    for (auto& e : d) e.second /= s2;
  }
  return d;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (opt_.temperature <= 0) return int32_t(argmax(logits));
  const auto d = distribution(logits);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double r = u(rng_), cum = 0;
  for (const auto& [tok, p] : d) {
    cum += p;
    if (r < cum) return tok;
  }
  return d.back().first;
}

}  // namespace genesis::runtime
