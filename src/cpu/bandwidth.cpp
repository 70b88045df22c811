// Read-bandwidth probe: per-function target("avx512f") / target("avx2") read loops chosen with mayiuse() (the library
// is built for baseline x86-64), run on a pinned ThreadPool; the JSON cache keyed by the CPU signature.
#include "cpu/bandwidth.h"

#include <fmt/format.h>
#include <immintrin.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "common/util.h"
#include "cpu/info.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

namespace genesis::cpu {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kChunk = 256;    // bytes per loop iteration of every variant; slices are multiples of it
constexpr int kCacheVersion = 1;  // bump when the measuring method changes, so old figures are re-measured

// Read loops. XOR into several independent accumulators so the loop is bound by loads, not by a dependency chain;
// the result goes to a sink so the compiler cannot drop the reads.
__attribute__((target("avx512f"))) uint64_t read_avx512(const char* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += kChunk) {
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + i + 192));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  uint64_t r = 0;
  for (uint64_t v : lanes) r ^= v;
  return r;
}

__attribute__((target("avx2"))) uint64_t read_avx2(const char* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += kChunk) {
    for (size_t j = 0; j < kChunk; j += 128) {
      a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + j)));
      a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + j + 32)));
      a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + j + 64)));
      a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + j + 96)));
    }
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}

uint64_t read_plain(const char* p, size_t n) {
  const uint64_t* q = reinterpret_cast<const uint64_t*>(p);
  uint64_t a[8] = {};
  for (size_t i = 0; i < n / 8; i += 8)
    for (int k = 0; k < 8; ++k) a[k] ^= q[i + k];
  uint64_t r = 0;
  for (uint64_t v : a) r ^= v;
  return r;
}

using ReadFn = uint64_t (*)(const char*, size_t);

ReadFn pick_read_fn() {
  if (mayiuse(Isa::avx512f)) return read_avx512;
  if (mayiuse(Isa::avx2)) return read_avx2;
  return read_plain;
}

// 2 MiB-aligned anonymous mapping, transparent huge pages requested so TLB misses do not shape the figure.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes) {
    size_t map = bytes + 2 * kMiB;
    void* p = mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("bandwidth probe: cannot map a {} MiB buffer", bytes / kMiB);
    base_ = p;
    map_ = map;
    uintptr_t a = (reinterpret_cast<uintptr_t>(p) + 2 * kMiB - 1) & ~(2 * kMiB - 1);
    data_ = reinterpret_cast<char*>(a);
    (void)madvise(data_, bytes_, MADV_HUGEPAGE);
  }
  ~Buffer() { munmap(base_, map_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  char* data() const { return data_; }

 private:
  void* base_ = nullptr;
  size_t map_ = 0, bytes_ = 0;
  char* data_ = nullptr;
};

// Restores the caller's affinity on scope exit: the measurement pins the caller as tid 0 on the first allowed cpu.
class AffinityGuard {
 public:
  AffinityGuard() { ok_ = sched_getaffinity(0, sizeof(saved_), &saved_) == 0; }
  ~AffinityGuard() {
    if (ok_) (void)sched_setaffinity(0, sizeof(saved_), &saved_);
  }

 private:
  cpu_set_t saved_;
  bool ok_ = false;
};

std::atomic<uint64_t> g_sink{0};

std::mutex& measure_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

uint64_t xor_read(const char* p, size_t n, const std::string& path) {
  if (path == "avx512") return read_avx512(p, n);
  if (path == "avx2") return read_avx2(p, n);
  if (path == "plain") return read_plain(p, n);
  fail("xor_read: unknown path '{}' (avx512, avx2, plain)", path);
}

size_t bandwidth_buffer_bytes() {
  const CacheInfo& c = cpu_info().caches;
  size_t llc = std::max(c.l3_total, c.l3);
  size_t bytes = std::max(4 * llc, 256 * kMiB);
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) bytes = std::min(bytes, static_cast<size_t>(pages) * static_cast<size_t>(page) / 4);
  bytes = std::max(bytes / (2 * kMiB), size_t{1}) * 2 * kMiB;
  return bytes;
}

struct ReadProbe::Impl {
  Impl(size_t bytes, ThreadPool& p)
      : pool(p),
        slice(std::max(bytes / size_t(std::max(p.size(), 1)) / kChunk, size_t{1}) * kChunk),
        total(slice * size_t(std::max(p.size(), 1))),
        reps(std::max<size_t>(1, (64 * kMiB) / total)),  // small buffers: read several times, for the clock
        buf(total),
        read(pick_read_fn()) {}
  ThreadPool& pool;
  size_t slice, total, reps;
  Buffer buf;
  ReadFn read;
};

ReadProbe::ReadProbe(size_t bytes, ThreadPool& pool) : impl_(std::make_unique<Impl>(bytes, pool)) {
  Impl& m = *impl_;
  m.pool.run([&](int tid, int) {  // first touch by the reader (its NUMA node), non-zero bytes (no shared zero page)
    char* p = m.buf.data() + size_t(tid) * m.slice;
    for (size_t i = 0; i < m.slice; i += 64) p[i] = static_cast<char>(i >> 6 | 1);
  });
  (void)pass_seconds();  // warm-up: page tables, frequency
}

ReadProbe::~ReadProbe() = default;

size_t ReadProbe::bytes() const { return impl_->total; }

size_t ReadProbe::bytes_per_pass() const { return impl_->total * impl_->reps; }

double ReadProbe::pass_seconds() {
  Impl& m = *impl_;
  const double t0 = now_seconds();
  m.pool.run([&](int tid, int) {
    const char* p = m.buf.data() + size_t(tid) * m.slice;
    uint64_t r = 0;
    for (size_t k = 0; k < m.reps; ++k) r ^= m.read(p, m.slice);
    g_sink.fetch_xor(r, std::memory_order_relaxed);
  });
  return std::max(now_seconds() - t0, 1e-12);
}

double ReadProbe::pass() { return double(bytes_per_pass()) / pass_seconds() / 1e9; }

namespace {

// Runs `timed(pass)` after the set-up every measurement shares: its own pinned pool and a probe (the buffer, first
// touch by its reader, one warm-up pass). `timed` gets a function that runs one pass and returns its seconds.
template <typename Timed>
void with_read_passes(size_t bytes, int threads, Timed&& timed, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(measure_mutex());
  AffinityGuard guard;
  pin_current_thread(allowed_cpus()[0]);
  ThreadPool pool(std::max(threads, 1), /*pin=*/true);
  ReadProbe probe(bytes, pool);
  *total_bytes = probe.bytes_per_pass();
  timed([&] { return probe.pass_seconds(); });
}

}  // namespace

double measure_read_gbps(size_t bytes, int threads) {
  double best = 1e30;
  size_t total = 0;
  with_read_passes(
      bytes, threads,
      [&](auto&& one_pass) {
        constexpr int kMinPasses = 3, kMaxPasses = 8;
        constexpr double kBudgetS = 0.4;
        double start = now_seconds();
        for (int i = 0; i < kMaxPasses; ++i) {
          best = std::min(best, one_pass());
          if (i + 1 >= kMinPasses && now_seconds() - start > kBudgetS) break;
        }
      },
      &total);
  return static_cast<double>(total) / best / 1e9;
}

ReadSample measure_read_sample(size_t bytes, int threads, double seconds, int min_passes) {
  ReadSample r;
  size_t total = 0;
  std::vector<double> secs;
  with_read_passes(
      bytes, threads,
      [&](auto&& one_pass) {
        double start = now_seconds();
        constexpr int kMaxPasses = 100000;  // a clock that stands still must not loop forever
        while (static_cast<int>(secs.size()) < kMaxPasses &&
               (static_cast<int>(secs.size()) < std::max(min_passes, 1) || now_seconds() - start < seconds))
          secs.push_back(one_pass());
      },
      &total);
  for (double s : secs) r.pass_gbps.push_back(static_cast<double>(total) / std::max(s, 1e-12) / 1e9);
  std::vector<double> sorted = r.pass_gbps;
  std::sort(sorted.begin(), sorted.end());
  r.passes = static_cast<int>(sorted.size());
  r.worst_gbps = sorted.front();
  r.best_gbps = sorted.back();
  const size_t n = sorted.size();
  r.median_gbps = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  return r;
}

std::string bandwidth_cache_path() {
  std::string name = "bandwidth-" + cpu_info().signature + ".json";
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') c = '_';
  return (std::filesystem::path(cache_dir()) / name).string();
}

namespace {

// The cached figure, if the file exists, parses, and was taken on this CPU with today's method and parameters.
std::optional<Bandwidth> load_cached(const std::string& path, int threads, size_t bytes) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  try {
    nlohmann::json j = nlohmann::json::parse(f);
    if (j.at("version").get<int>() != kCacheVersion) return std::nullopt;
    if (j.at("signature").get<std::string>() != cpu_info().signature) return std::nullopt;
    Bandwidth b;
    b.one_thread_gbps = j.at("one_thread_gbps").get<double>();
    b.all_threads_gbps = j.at("all_threads_gbps").get<double>();
    b.threads = j.at("threads").get<int>();
    b.buffer_bytes = j.at("buffer_bytes").get<size_t>();
    if (b.threads != threads || b.buffer_bytes != bytes) return std::nullopt;
    for (double v : {b.one_thread_gbps, b.all_threads_gbps})
      if (!std::isfinite(v) || v <= 0) return std::nullopt;
    b.from_cache = true;
    return b;
  } catch (const std::exception&) {
    return std::nullopt;  // corrupt or foreign: measure again and overwrite
  }
}

void store_cached(const std::string& path, const Bandwidth& b) {
  nlohmann::json j = {{"version", kCacheVersion},
                      {"signature", cpu_info().signature},
                      {"one_thread_gbps", b.one_thread_gbps},
                      {"all_threads_gbps", b.all_threads_gbps},
                      {"threads", b.threads},
                      {"buffer_bytes", b.buffer_bytes},
                      {"build", build_id()}};
  // Write then rename, so a concurrent reader never sees half a file. A cache that cannot be written is not an error.
  std::string tmp = fmt::format("{}.tmp{}", path, getpid());
  bool ok = false;
  {
    std::ofstream f(tmp);
    if (!f) return;
    f << j.dump(2) << "\n";
    f.close();
    ok = !f.fail();
  }
  std::error_code ec;
  if (ok) std::filesystem::rename(tmp, path, ec);
  if (!ok || ec) std::filesystem::remove(tmp, ec);
}

}  // namespace

Bandwidth read_bandwidth(bool remeasure) {
  int threads = static_cast<int>(allowed_cpus().size());
  size_t bytes = bandwidth_buffer_bytes();
  std::string path = bandwidth_cache_path();
  if (!remeasure) {
    if (auto b = load_cached(path, threads, bytes)) return *b;
  }
  Bandwidth b;
  b.threads = threads;
  b.buffer_bytes = bytes;
  b.one_thread_gbps = measure_read_gbps(bytes, 1);
  b.all_threads_gbps = threads > 1 ? measure_read_gbps(bytes, threads) : b.one_thread_gbps;
  store_cached(path, b);
  return b;
}

}  // namespace genesis::cpu
