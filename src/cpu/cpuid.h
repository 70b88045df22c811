// Raw cpuid / xgetbv access for the cpu module (isa.cpp, info.cpp). Decoding of the bits lives with their users.
#pragma once

#include <cpuid.h>

#include <cstdint>

namespace genesis::cpu {

struct CpuidRegs {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// Leaf `leaf`, subleaf `sub`; all zero when the leaf is above the maximum the CPU reports for its range
// (basic 0x0..., extended 0x8000_0000...), so callers can test bits without checking ranges first.
inline CpuidRegs cpuid(uint32_t leaf, uint32_t sub = 0) {
  CpuidRegs r;
  uint32_t max_leaf = __get_cpuid_max(leaf & 0x80000000u, nullptr);
  if (max_leaf == 0 || leaf > max_leaf) return r;
  __cpuid_count(leaf, sub, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

inline bool bit(uint32_t reg, int b) { return (reg >> b) & 1u; }

// XCR0: which register state the OS saves and restores. Only valid when cpuid.1:ECX.OSXSAVE is set. Inline asm
// rather than _xgetbv(): the library is built without -mxsave.
inline uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

}  // namespace genesis::cpu
