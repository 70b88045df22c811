// Which x86 instruction-set extensions this process may use: cpuid + OS state checks -> IsaSet, capped by
// GENESIS_MAX_ISA. Kernels and JIT emitters ask mayiuse(); nothing here emits code.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace genesis::cpu {

// Order is part of the CPU signature (IsaSet::bits()) stored in the knowledge base: append only.
enum class Isa : uint8_t {
  avx,
  avx2,
  fma,
  f16c,
  bmi2,
  avx512f,
  avx512bw,
  avx512vl,
  avx512dq,
  avx512cd,
  avx512vnni,
  avx512bf16,
  avx512fp16,
  avx512vbmi,
  amx_tile,
  amx_int8,
  amx_bf16,
  count_
};

inline constexpr int kIsaCount = static_cast<int>(Isa::count_);
static_assert(kIsaCount <= 64, "IsaSet stores one bit per Isa in a uint64_t");

class IsaSet {
 public:
  IsaSet() = default;
  explicit IsaSet(uint64_t bits) : bits_(bits & kAllBits) {}

  bool has(Isa i) const { return (bits_ >> static_cast<int>(i)) & 1u; }
  void add(Isa i) { bits_ |= uint64_t{1} << static_cast<int>(i); }
  void remove(Isa i) { bits_ &= ~(uint64_t{1} << static_cast<int>(i)); }
  uint64_t bits() const { return bits_; }
  bool empty() const { return bits_ == 0; }

  // Names of the members, in enum order ("avx", "avx512vnni", "amx_tile", ...).
  std::vector<std::string> names() const;
  // Space-separated names, or "none".
  std::string to_string() const;
  static const char* name(Isa i);

  friend bool operator==(const IsaSet& a, const IsaSet& b) = default;

 private:
  static constexpr uint64_t kAllBits = (uint64_t{1} << kIsaCount) - 1;
  uint64_t bits_ = 0;
};

// What the CPU reports and the OS has enabled (XCR0 state components; AMX tile data permission on Linux).
// Not capped by GENESIS_MAX_ISA.
IsaSet detect_isa();

// Keeps what an ISA level allows: "scalar" (nothing from AVX up, BMI2 included: it is VEX-encoded and belongs to our
// avx2 level), "avx2" (AVX, AVX2, FMA, F16C, BMI2), "avx512" (all but AMX), "amx" (all).
// Throws genesis::Error naming the possible values for anything else.
IsaSet cap_isa(IsaSet detected, std::string_view max_isa);

// Possible values of GENESIS_MAX_ISA / cap_isa(), lowest first.
const std::vector<std::string>& isa_levels();

// detect_isa() capped by $GENESIS_MAX_ISA; computed once, thread-safe. Throws genesis::Error if the variable holds
// an unknown value.
const IsaSet& host_isa();
inline bool mayiuse(Isa i) { return host_isa().has(i); }

// AVX-VNNI (the VEX-encoded vpdpbusd / vpdpwssd on ymm; CPUID leaf 7 subleaf 1 EAX bit 4), where the OS enables
// ymm state and GENESIS_MAX_ISA allows AVX2. Kept out of IsaSet so that the CPU signature stored in the knowledge
// base stays what it was.
bool mayiuse_avx_vnni();

// $GENESIS_MAX_ISA as given ("" when unset).
std::string max_isa_setting();

}  // namespace genesis::cpu
