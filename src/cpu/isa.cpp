// ISA detection (cpuid bits gated by the OS-enabled XCR0 state) and the GENESIS_MAX_ISA cap.
#include "cpu/isa.h"

#include <fmt/format.h>

#include <array>

#include "common/error.h"
#include "common/util.h"
#include "cpu/cpuid.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace genesis::cpu {
namespace {

constexpr std::array<const char*, kIsaCount> kIsaNames = {
    "avx",      "avx2",       "fma",        "f16c",       "bmi2",       "avx512f",  "avx512bw", "avx512vl", "avx512dq",
    "avx512cd", "avx512vnni", "avx512bf16", "avx512fp16", "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16"};

// XCR0 state components (Intel SDM vol. 1, 13.1).
constexpr uint64_t kXcrSse = 1u << 1;
constexpr uint64_t kXcrYmm = 1u << 2;
constexpr uint64_t kXcrOpmask = 1u << 5;
constexpr uint64_t kXcrZmmHi256 = 1u << 6;
constexpr uint64_t kXcrHi16Zmm = 1u << 7;
constexpr uint64_t kXcrTileCfg = uint64_t{1} << 17;
constexpr uint64_t kXcrTileData = uint64_t{1} << 18;

// Linux keeps AMX tile data disabled per process until asked (kernel >= 5.16); without this, the first tile
// instruction faults even though cpuid and XCR0 advertise AMX.
bool request_amx_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return true;
#endif
}

}  // namespace

const char* IsaSet::name(Isa i) {
  int k = static_cast<int>(i);
  return k >= 0 && k < kIsaCount ? kIsaNames[k] : "?";
}

std::vector<std::string> IsaSet::names() const {
  std::vector<std::string> out;
  for (int k = 0; k < kIsaCount; ++k)
    if (has(static_cast<Isa>(k))) out.emplace_back(kIsaNames[k]);
  return out;
}

std::string IsaSet::to_string() const {
  auto n = names();
  return n.empty() ? std::string("none") : fmt::format("{}", fmt::join(n, " "));
}

IsaSet detect_isa() {
  IsaSet s;
  CpuidRegs l1 = cpuid(1);
  CpuidRegs l7 = cpuid(7, 0);
  CpuidRegs l7s1 = (l7.eax >= 1) ? cpuid(7, 1) : CpuidRegs{};

  // BMI2 works on general registers and needs no OS state.
  if (bit(l7.ebx, 8)) s.add(Isa::bmi2);

  if (!bit(l1.ecx, 27)) return s;  // no OSXSAVE: XGETBV unavailable, so no VEX/EVEX register state
  uint64_t xcr0 = xgetbv0();
  bool ymm_ok = (xcr0 & (kXcrSse | kXcrYmm)) == (kXcrSse | kXcrYmm);
  bool zmm_ok =
      ymm_ok && (xcr0 & (kXcrOpmask | kXcrZmmHi256 | kXcrHi16Zmm)) == (kXcrOpmask | kXcrZmmHi256 | kXcrHi16Zmm);
  bool tile_ok = (xcr0 & (kXcrTileCfg | kXcrTileData)) == (kXcrTileCfg | kXcrTileData);

  if (ymm_ok) {
    if (bit(l1.ecx, 28)) s.add(Isa::avx);
    if (s.has(Isa::avx)) {
      if (bit(l7.ebx, 5)) s.add(Isa::avx2);
      if (bit(l1.ecx, 12)) s.add(Isa::fma);
      if (bit(l1.ecx, 29)) s.add(Isa::f16c);
    }
  }
  if (zmm_ok && bit(l7.ebx, 16)) {
    s.add(Isa::avx512f);
    if (bit(l7.ebx, 30)) s.add(Isa::avx512bw);
    if (bit(l7.ebx, 31)) s.add(Isa::avx512vl);
    if (bit(l7.ebx, 17)) s.add(Isa::avx512dq);
    if (bit(l7.ebx, 28)) s.add(Isa::avx512cd);
    if (bit(l7.ecx, 11)) s.add(Isa::avx512vnni);
    if (bit(l7s1.eax, 5)) s.add(Isa::avx512bf16);
    if (bit(l7.edx, 23)) s.add(Isa::avx512fp16);
    if (bit(l7.ecx, 1)) s.add(Isa::avx512vbmi);
  }
  if (tile_ok && bit(l7.edx, 24)) {
    s.add(Isa::amx_tile);
    if (bit(l7.edx, 25)) s.add(Isa::amx_int8);
    if (bit(l7.edx, 22)) s.add(Isa::amx_bf16);
    if (!request_amx_permission()) {
      s.remove(Isa::amx_tile);
      s.remove(Isa::amx_int8);
      s.remove(Isa::amx_bf16);
    }
  }
  return s;
}

const std::vector<std::string>& isa_levels() {
  static const std::vector<std::string> levels = {"scalar", "avx2", "avx512", "amx"};
  return levels;
}

IsaSet cap_isa(IsaSet detected, std::string_view max_isa) {
  IsaSet keep;
  if (max_isa == "scalar") {
    // nothing
  } else if (max_isa == "avx2") {
    for (Isa i : {Isa::avx, Isa::avx2, Isa::fma, Isa::f16c, Isa::bmi2}) keep.add(i);
  } else if (max_isa == "avx512") {
    keep = IsaSet(~uint64_t{0});
    for (Isa i : {Isa::amx_tile, Isa::amx_int8, Isa::amx_bf16}) keep.remove(i);
  } else if (max_isa == "amx") {
    keep = IsaSet(~uint64_t{0});
  } else {
    fail("max ISA '{}' (GENESIS_MAX_ISA) is not one of: {}", max_isa, fmt::join(isa_levels(), ", "));
  }
  return IsaSet(detected.bits() & keep.bits());
}

bool mayiuse_avx_vnni() {
  static const bool has = [] {
    if (!mayiuse(Isa::avx2)) return false;  // also false when ymm state is off or the cap is below avx2
    const CpuidRegs l7 = cpuid(7, 0);
    const CpuidRegs l7s1 = (l7.eax >= 1) ? cpuid(7, 1) : CpuidRegs{};
    return bit(l7s1.eax, 4);
  }();
  return has;
}

std::string max_isa_setting() { return env("GENESIS_MAX_ISA").value_or(""); }

const IsaSet& host_isa() {
  // A throwing initializer leaves the static uninitialized, so a bad variable is reported on every call.
  static const IsaSet isa = [] {
    std::string cap = max_isa_setting();
    return cap.empty() ? detect_isa() : cap_isa(detect_isa(), cap);
  }();
  return isa;
}

}  // namespace genesis::cpu
