// What CPU this is: vendor, brand, family/model/stepping, microcode, core counts, cache sizes, detected ISA, and the
// canonical signature string that keys the knowledge base and the bandwidth cache. No measurements here.
#pragma once

#include <cstddef>
#include <string>

#include "cpu/isa.h"

namespace genesis::cpu {

// Bytes per instance (one core's L1d / L2; one L3 as the OS reports it, e.g. one AMD CCD's). 0 = unknown.
struct CacheInfo {
  size_t l1d = 0, l2 = 0, l3 = 0;
  size_t l3_total = 0;  // all L3 instances together (sizes a buffer that must miss every last-level cache)
};

struct CpuInfo {
  std::string vendor;                       // cpuid leaf 0, e.g. "GenuineIntel", "AuthenticAMD"
  std::string brand;                        // cpuid 0x80000002..4, trimmed
  int family = 0, model = 0, stepping = 0;  // display values (extended family/model applied)
  std::string microcode;                    // from /proc/cpuinfo, e.g. "0xa101148"; "unknown" if absent
  int logical_cpus = 0;                     // online logical cpus
  int physical_cores = 0;                   // distinct (package, core) pairs
  IsaSet isa;                               // detect_isa(): not capped by GENESIS_MAX_ISA
  CacheInfo caches;
  // "<vendor>-f<family>-m<model>-s<stepping>-mc<microcode>-isa<hex bits>": equal on the same CPU and microcode,
  // different when any of those or the detected ISA differ.
  std::string signature;
};

// Computed once (thread-safe).
const CpuInfo& cpu_info();

// Exposed for tests: display family/model from cpuid.1:EAX per the Intel/AMD extended-family rules.
void decode_family_model(const std::string& vendor, uint32_t eax, int& family, int& model, int& stepping);

// Exposed for tests: parses a sysfs cache size such as "32K", "1024K", "32M" (0 if malformed).
size_t parse_cache_size(const std::string& text);

}  // namespace genesis::cpu
