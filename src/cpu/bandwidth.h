// The memory roofline: streaming read bandwidth with 1 thread and all threads over a buffer that misses every
// last-level cache, measured once per CPU signature and cached as JSON in genesis::cache_dir().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace genesis::cpu {

struct Bandwidth {
  double one_thread_gbps = 0, all_threads_gbps = 0;  // 1 GB = 1e9 bytes
  int threads = 0;                                   // thread count of all_threads_gbps
  size_t buffer_bytes = 0;
  bool from_cache = false;  // read from the cache file rather than measured by this call
};

// Cached figure for this CPU, or a fresh measurement (written to the cache) when remeasure, when there is no cache
// file, or when the file is unreadable, corrupt, or belongs to another signature / thread count / buffer size.
// Takes well under a few seconds; thread-safe (measurements are serialized).
Bandwidth read_bandwidth(bool remeasure = false);

// One measurement: `threads` pinned threads each read their own slice of a `bytes` buffer (touched first) with the
// widest loads mayiuse() allows; best of a few passes, in GB/s. Small buffers are read several times per pass.
double measure_read_gbps(size_t bytes, int threads);

// The passes of one sustained measurement (the same read as measure_read_gbps), for figures that must hold over a
// run rather than its best moment: a shared host's bandwidth moves between passes.
struct ReadSample {
  double best_gbps = 0, median_gbps = 0, worst_gbps = 0;
  int passes = 0;
  std::vector<double> pass_gbps;  // every timed pass, in order
};

// Passes over `bytes` with `threads` pinned threads for at least `seconds` (and at least min_passes passes).
ReadSample measure_read_sample(size_t bytes, int threads, double seconds, int min_passes = 5);

class ThreadPool;

// Read passes a benchmark interleaves with its own timed work, on its own pool's threads, so that each timed part can
// be set against the bandwidth of the moments around it (a shared host's bandwidth moves by tens of percent within a
// run). The buffer is allocated and first touched by the pool's threads once; pass() reads it with every thread of
// the pool and returns GB/s. measure_read_gbps and measure_read_sample use it on a pool of their own.
class ReadProbe {
 public:
  ReadProbe(size_t bytes, ThreadPool& pool);
  ~ReadProbe();
  ReadProbe(const ReadProbe&) = delete;
  ReadProbe& operator=(const ReadProbe&) = delete;
  double pass();
  double pass_seconds();          // one pass, its seconds
  size_t bytes() const;           // the buffer
  size_t bytes_per_pass() const;  // what one pass reads: small buffers are read several times, for the clock

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// max(4 x all L3, 256 MiB), rounded to 2 MiB and capped at a quarter of physical memory.
size_t bandwidth_buffer_bytes();

// Exposed for tests: XOR of the 64-bit words of p[0, n) through the read loop of `path` ("avx512", "avx2" or
// "plain"); p 64-byte aligned, n a multiple of 256. The caller checks that the CPU has the path's ISA.
uint64_t xor_read(const char* p, size_t n, const std::string& path);

// Where read_bandwidth() keeps its figure for this CPU signature.
std::string bandwidth_cache_path();

}  // namespace genesis::cpu
