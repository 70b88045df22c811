// The factory's random numbers: a small generator whose sequence is fixed by the seed on every platform and standard
// library (std:: distributions are not), so that the same --seed gives the same sequence of genomes.
#pragma once

#include <cstdint>
#include <vector>

namespace genesis::evolve {

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed ^ 0x9e3779b97f4a7c15ull) { next(); }
  uint64_t next() {  // splitmix64
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); n > 0. The modulo bias is below 2^-40 for the n used here.
  int below(int n) { return int(next() % uint64_t(n)); }
  int range(int lo, int hi) { return lo + below(hi - lo + 1); }  // inclusive
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  bool chance(double p) { return uniform() < p; }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[size_t(below(int(v.size())))];
  }

 private:
  uint64_t s_;
};

}  // namespace genesis::evolve
