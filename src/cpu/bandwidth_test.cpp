// Read-bandwidth probe: the read loops agree, small measurements are sane, the cache is used, and a corrupt or
// foreign cache file is ignored and replaced; cpu_report() reads that cache and has every key.
#include "cpu/bandwidth.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "cpu/info.h"
#include "cpu/isa.h"
#include "cpu/report.h"
#include "cpu/thread_pool.h"

namespace genesis::cpu {
namespace {

TEST(Bandwidth, ReadLoopsAgree) {
  constexpr size_t n = 64 * 1024 + 256;
  alignas(64) static uint64_t words[n / 8];
  std::mt19937_64 rng(7);
  uint64_t want = 0;
  for (auto& w : words) {
    w = rng();
    want ^= w;
  }
  const char* p = reinterpret_cast<const char*>(words);
  EXPECT_EQ(xor_read(p, n, "plain"), want);
  IsaSet d = detect_isa();
  if (d.has(Isa::avx2)) {
    EXPECT_EQ(xor_read(p, n, "avx2"), want);
  } else {
    std::cout << "[  SKIPPED ] avx2 read loop: CPU lacks AVX2\n";
  }
  if (d.has(Isa::avx512f)) {
    EXPECT_EQ(xor_read(p, n, "avx512"), want);
  } else {
    std::cout << "[  SKIPPED ] avx512 read loop: CPU lacks AVX-512F\n";
  }
}

TEST(Bandwidth, SmallBufferPositiveFinite) {
  for (auto [bytes, threads] : {std::pair<size_t, int>{1 << 20, 1}, {4 << 20, 2}, {1000, 3}, {1, 1}}) {
    double g = measure_read_gbps(bytes, threads);
    EXPECT_TRUE(std::isfinite(g)) << bytes << " " << threads;
    EXPECT_GT(g, 0.0) << bytes << " " << threads;
    EXPECT_LT(g, 1e5) << bytes << " " << threads;  // 100 TB/s: the clock or the byte count is wrong
  }
}

TEST(Bandwidth, SampleOrdersItsPasses) {
  ReadSample r = measure_read_sample(4 << 20, 2, 0.05, 7);
  ASSERT_GE(r.passes, 7);
  ASSERT_EQ(r.pass_gbps.size(), static_cast<size_t>(r.passes));
  EXPECT_LE(r.worst_gbps, r.median_gbps);
  EXPECT_LE(r.median_gbps, r.best_gbps);
  for (double g : r.pass_gbps) {
    EXPECT_TRUE(std::isfinite(g));
    EXPECT_GE(g, r.worst_gbps);
    EXPECT_LE(g, r.best_gbps);
  }
  // Zero seconds still runs the minimum; a minimum below one still runs one pass.
  EXPECT_EQ(measure_read_sample(1 << 20, 1, 0.0, 3).passes, 3);
  EXPECT_EQ(measure_read_sample(1 << 20, 1, 0.0, 0).passes, 1);
}

// The probe a benchmark interleaves with its steps: whole chunks per thread of the caller's pool, and every pass a
// finite positive figure, on a pool it shares with other work.
TEST(Bandwidth, ProbeReadsWithTheCallersPool) {
  ThreadPool pool(2);
  ReadProbe probe(4 << 20, pool);
  EXPECT_EQ(probe.bytes() % (256 * 2), 0u);
  EXPECT_GT(probe.bytes(), size_t(2) << 20);
  EXPECT_LE(probe.bytes(), size_t(4) << 20);
  for (int i = 0; i < 3; ++i) {
    const double g = probe.pass();
    EXPECT_TRUE(std::isfinite(g));
    EXPECT_GT(g, 0.0);
    EXPECT_LT(g, 1e5);
  }
  std::atomic<int> ran{0};
  pool.run([&](int, int) { ran.fetch_add(1); });  // the pool still serves its owner
  EXPECT_EQ(ran.load(), 2);
  ReadProbe tiny(1, pool);  // below a chunk per thread: one chunk each
  EXPECT_EQ(tiny.bytes(), 512u);
  EXPECT_GT(tiny.pass(), 0.0);
}

TEST(Bandwidth, BufferExceedsLastLevelCache) {
  size_t b = bandwidth_buffer_bytes();
  EXPECT_EQ(b % (2u << 20), 0u);
  EXPECT_GE(b, std::min<size_t>(256u << 20, b));
  if (b >= (256u << 20)) {
    EXPECT_GE(b, 4 * cpu_info().caches.l3_total);
  }
}

// One full measurement on this machine (~1 s); also checks the cache round trip and that bad files are replaced.
TEST(Bandwidth, CacheFileRoundTripAndRecovery) {
  auto dir = std::filesystem::temp_directory_path() / ("genesis-bw-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ASSERT_EQ(setenv("GENESIS_CACHE_DIR", dir.c_str(), 1), 0);
  std::string path = bandwidth_cache_path();
  EXPECT_EQ(std::filesystem::path(path).parent_path(), dir);
  { std::ofstream(path) << "{ not json"; }

  Bandwidth a = read_bandwidth();
  EXPECT_FALSE(a.from_cache);  // corrupt file ignored
  EXPECT_GT(a.one_thread_gbps, 0.0);
  EXPECT_GT(a.all_threads_gbps, 0.0);
  EXPECT_EQ(a.buffer_bytes, bandwidth_buffer_bytes());
  EXPECT_GE(a.threads, 1);
  std::cout << "read bandwidth: 1 thread " << a.one_thread_gbps << " GB/s, " << a.threads << " threads "
            << a.all_threads_gbps << " GB/s, buffer " << (a.buffer_bytes >> 20) << " MiB\n";

  Bandwidth b = read_bandwidth();
  EXPECT_TRUE(b.from_cache);
  EXPECT_DOUBLE_EQ(b.one_thread_gbps, a.one_thread_gbps);
  EXPECT_DOUBLE_EQ(b.all_threads_gbps, a.all_threads_gbps);

  // A file from another CPU (signature differs) is not trusted.
  nlohmann::json j = nlohmann::json::parse(std::ifstream(path));
  j["signature"] = "GenuineIntel-f6-m143-s8-mc0x2b000590-isa1ffff";
  j["one_thread_gbps"] = 12345.0;
  { std::ofstream(path) << j.dump(); }
  Bandwidth c = read_bandwidth();
  EXPECT_FALSE(c.from_cache);
  EXPECT_NE(c.one_thread_gbps, 12345.0);

  // The `genesis info` report reads the same cache and carries every documented key.
  nlohmann::json r = cpu_report(false);
  EXPECT_TRUE(r["bandwidth_from_cache"].get<bool>());
  EXPECT_DOUBLE_EQ(r["read_bandwidth_gbps"]["one_thread"].get<double>(), c.one_thread_gbps);
  EXPECT_DOUBLE_EQ(r["read_bandwidth_gbps"]["all_threads"].get<double>(), c.all_threads_gbps);
  for (const char* k :
       {"signature", "vendor", "brand", "family", "model", "stepping", "microcode", "logical_cpus", "physical_cores",
        "caches", "isa", "isa_usable", "max_isa", "bandwidth_buffer_bytes", "pool_overhead_us"})
    EXPECT_TRUE(r.contains(k)) << k;
  EXPECT_EQ(r["signature"].get<std::string>(), cpu_info().signature);
  EXPECT_EQ(r["isa"].size(), static_cast<size_t>(kIsaCount));
  EXPECT_EQ(r["isa_usable"]["avx2"].get<bool>(), mayiuse(Isa::avx2));
  EXPECT_GT(r["pool_overhead_us"]["median_us"].get<double>(), 0.0);
  EXPECT_GT(r["caches"]["l3"].get<uint64_t>(), 0u);

  unsetenv("GENESIS_CACHE_DIR");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace genesis::cpu
