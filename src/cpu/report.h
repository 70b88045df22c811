// The `genesis info` report as one JSON object (CPU identity, ISA detected and usable, caches, read bandwidth,
// thread-pool overhead). Frontends print it; other modules may add sections (e.g. which kernel path each family uses).
#pragma once

#include <nlohmann/json.hpp>

namespace genesis::cpu {

// Keys: signature, vendor, brand, family, model, stepping, microcode, logical_cpus, physical_cores,
// caches {l1d, l2, l3, l3_total} (bytes), isa {flag: bool} (detected), isa_usable {flag: bool} (after
// GENESIS_MAX_ISA), max_isa ("" when unset), read_bandwidth_gbps {one_thread, all_threads}, bandwidth_threads,
// bandwidth_buffer_bytes, bandwidth_from_cache, pool_overhead_us {threads, median_us}.
// Measures bandwidth (or reads its cache; remeasure forces a measurement) and the pool overhead: ~1-3 s.
// Throws genesis::Error if GENESIS_MAX_ISA is not a known level.
nlohmann::json cpu_report(bool remeasure);

}  // namespace genesis::cpu
