// Small shared helpers: hashing, the per-user cache directory, environment lookups, a monotonic clock.
// Nothing here knows about kernels or models.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace genesis {

// FNV-1a 64: stable across builds and machines; used for genome hashes and cache keys.
inline uint64_t fnv1a64(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex64(uint64_t v, int digits = 16);

// $GENESIS_CACHE_DIR, else $XDG_CACHE_HOME/genesis, else ~/.cache/genesis. Created on demand.
std::string cache_dir();

std::optional<std::string> env(const char* name);

inline double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Build identity: the version and git revision at configure time ("0.1.0+1a2b3c4d5e6f").
std::string build_id();
// What knowledge-base records carry: "k" and a digest of the kernel families' and the JIT's sources at configure
// time, so that tuning outlives the commits that do not change what a genome means.
std::string kernel_build_id();

}  // namespace genesis
