// Builds the `genesis info` JSON object from cpu_info(), host_isa(), read_bandwidth() and a ThreadPool measurement.
#include "cpu/report.h"

#include "cpu/bandwidth.h"
#include "cpu/info.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

namespace genesis::cpu {

nlohmann::json cpu_report(bool remeasure) {
  const CpuInfo& ci = cpu_info();
  const IsaSet& usable = host_isa();  // first: a bad GENESIS_MAX_ISA fails before any measurement
  nlohmann::json j;
  j["signature"] = ci.signature;
  j["vendor"] = ci.vendor;
  j["brand"] = ci.brand;
  j["family"] = ci.family;
  j["model"] = ci.model;
  j["stepping"] = ci.stepping;
  j["microcode"] = ci.microcode;
  j["logical_cpus"] = ci.logical_cpus;
  j["physical_cores"] = ci.physical_cores;
  j["caches"] = {{"l1d", ci.caches.l1d}, {"l2", ci.caches.l2}, {"l3", ci.caches.l3}, {"l3_total", ci.caches.l3_total}};
  // nlohmann::json objects are key-sorted; the terminal table iterates Isa order itself.
  nlohmann::json isa = nlohmann::json::object(), isa_usable = nlohmann::json::object();
  for (int k = 0; k < kIsaCount; ++k) {
    Isa i = static_cast<Isa>(k);
    isa[IsaSet::name(i)] = ci.isa.has(i);
    isa_usable[IsaSet::name(i)] = usable.has(i);
  }
  j["isa"] = isa;
  j["isa_usable"] = isa_usable;
  j["max_isa"] = max_isa_setting();

  Bandwidth bw = read_bandwidth(remeasure);
  j["read_bandwidth_gbps"] = {{"one_thread", bw.one_thread_gbps}, {"all_threads", bw.all_threads_gbps}};
  j["bandwidth_threads"] = bw.threads;
  j["bandwidth_buffer_bytes"] = bw.buffer_bytes;
  j["bandwidth_from_cache"] = bw.from_cache;

  ThreadPool pool;
  j["pool_overhead_us"] = {{"threads", pool.size()}, {"median_us", pool.measure_overhead_us(2000)}};
  return j;
}

}  // namespace genesis::cpu
