// Picking the next token from logits: greedy, or temperature -> top-k -> top-p (the order transformers applies its
// logits processors) then a draw from a seeded generator, so a run is reproducible.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace genesis::runtime {

struct SamplerOptions {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
  void validate() const;     // throws genesis::Error for out-of-range values
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opt);
  int32_t sample(std::span<const float> logits);
  // The distribution sample() draws from (after temperature, top-k, top-p), for tests; empty when greedy.
  std::vector<std::pair<int32_t, double>> distribution(std::span<const float> logits) const;

 private:
  SamplerOptions opt_;
  std::mt19937_64 rng_;
};

}  // namespace genesis::runtime
