// CPU identification: cpuid for vendor/brand/family, /proc/cpuinfo for microcode, sysfs for topology and caches
// (cpuid cache leaves when sysfs is missing, e.g. in some containers).
#include "cpu/info.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "cpu/cpuid.h"

namespace genesis::cpu {
namespace {

std::string read_first_line(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::string s;
  if (f) std::getline(f, s);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

std::string trim(std::string s) {
  size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  size_t e = s.size();
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string cpuid_vendor() {
  CpuidRegs r = cpuid(0);
  char v[13] = {};
  std::memcpy(v, &r.ebx, 4);
  std::memcpy(v + 4, &r.edx, 4);
  std::memcpy(v + 8, &r.ecx, 4);
  return std::string(v);
}

std::string cpuid_brand() {
  if (cpuid(0x80000000u).eax < 0x80000004u) return "";
  char b[49] = {};
  for (uint32_t i = 0; i < 3; ++i) {
    CpuidRegs r = cpuid(0x80000002u + i);
    std::memcpy(b + 16 * i, &r.eax, 4);
    std::memcpy(b + 16 * i + 4, &r.ebx, 4);
    std::memcpy(b + 16 * i + 8, &r.ecx, 4);
    std::memcpy(b + 16 * i + 12, &r.edx, 4);
  }
  return trim(b);
}

// First "microcode : 0x..." of /proc/cpuinfo. Kept as the kernel prints it, but only [0-9a-zA-Z] so the signature
// stays one token.
std::string read_microcode() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("microcode", 0) != 0) continue;
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string v = trim(line.substr(colon + 1));
    std::string clean;
    for (char c : v)
      if (std::isalnum(static_cast<unsigned char>(c))) clean += static_cast<char>(std::tolower(c));
    if (!clean.empty()) return clean;
  }
  return "unknown";
}

int count_logical_cpus() {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

int count_physical_cores(int logical) {
  namespace fs = std::filesystem;
  std::set<std::pair<std::string, std::string>> cores;
  std::error_code ec;
  for (int c = 0; c < logical + 64; ++c) {  // online cpus may have holes; look a little past the count
    fs::path topo = fmt::format("/sys/devices/system/cpu/cpu{}/topology", c);
    if (!fs::exists(topo, ec)) continue;
    std::string core = read_first_line(topo / "core_id");
    std::string pkg = read_first_line(topo / "physical_package_id");
    if (core.empty()) continue;
    cores.emplace(pkg, core);
  }
  if (!cores.empty()) return static_cast<int>(cores.size());
  // /proc/cpuinfo fallback: "physical id" and "core id" per processor.
  std::ifstream f("/proc/cpuinfo");
  std::string line, phys;
  while (std::getline(f, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = trim(line.substr(0, colon)), val = trim(line.substr(colon + 1));
    if (key == "physical id") phys = val;
    if (key == "core id") cores.emplace(phys, val);
  }
  return cores.empty() ? logical : static_cast<int>(cores.size());
}

CacheInfo caches_from_sysfs() {
  namespace fs = std::filesystem;
  CacheInfo c;
  for (int i = 0; i < 16; ++i) {
    fs::path d = fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}", i);
    std::error_code ec;
    if (!fs::exists(d, ec)) break;
    std::string level = read_first_line(d / "level"), type = read_first_line(d / "type");
    size_t size = parse_cache_size(read_first_line(d / "size"));
    if (type == "Instruction") continue;
    if (level == "1") c.l1d = size;
    if (level == "2") c.l2 = size;
    if (level == "3") c.l3 = size;
  }
  return c;
}

// Number of distinct L3 instances, from the cpus each one is shared by; 0 if sysfs does not say.
int count_l3_instances(int logical) {
  namespace fs = std::filesystem;
  std::set<std::string> groups;
  std::error_code ec;
  for (int c = 0; c < logical + 64; ++c) {
    for (int i = 0; i < 16; ++i) {
      fs::path d = fmt::format("/sys/devices/system/cpu/cpu{}/cache/index{}", c, i);
      if (!fs::exists(d, ec)) break;
      if (read_first_line(d / "level") != "3") continue;
      std::string shared = read_first_line(d / "shared_cpu_list");
      if (!shared.empty()) groups.insert(shared);
    }
  }
  return static_cast<int>(groups.size());
}

// Deterministic cache parameters: leaf 4 (Intel) or 0x8000001D (AMD with TOPOEXT); same register layout.
CacheInfo caches_from_cpuid(const std::string& vendor) {
  CacheInfo c;
  uint32_t leaf = 4;
  if (vendor == "AuthenticAMD" || vendor == "HygonGenuine") {
    if (!bit(cpuid(0x80000001u).ecx, 22)) return c;  // no TOPOEXT
    leaf = 0x8000001Du;
  }
  for (uint32_t sub = 0; sub < 16; ++sub) {
    CpuidRegs r = cpuid(leaf, sub);
    uint32_t type = r.eax & 0x1f;  // 0 = no more caches, 1 = data, 2 = instruction, 3 = unified
    if (type == 0) break;
    if (type == 2) continue;
    uint32_t level = (r.eax >> 5) & 0x7;
    size_t ways = ((r.ebx >> 22) & 0x3ff) + 1, parts = ((r.ebx >> 12) & 0x3ff) + 1, line = (r.ebx & 0xfff) + 1;
    size_t sets = size_t{r.ecx} + 1;
    size_t size = ways * parts * line * sets;
    if (level == 1) c.l1d = size;
    if (level == 2) c.l2 = size;
    if (level == 3) c.l3 = size;
  }
  return c;
}

CpuInfo detect() {
  CpuInfo ci;
  ci.vendor = cpuid_vendor();
  ci.brand = cpuid_brand();
  decode_family_model(ci.vendor, cpuid(1).eax, ci.family, ci.model, ci.stepping);
  ci.microcode = read_microcode();
  ci.logical_cpus = count_logical_cpus();
  ci.physical_cores = count_physical_cores(ci.logical_cpus);
  ci.isa = detect_isa();
  ci.caches = caches_from_sysfs();
  CacheInfo alt = caches_from_cpuid(ci.vendor);
  if (ci.caches.l1d == 0) ci.caches.l1d = alt.l1d;
  if (ci.caches.l2 == 0) ci.caches.l2 = alt.l2;
  if (ci.caches.l3 == 0) ci.caches.l3 = alt.l3;
  ci.caches.l3_total = ci.caches.l3 * std::max(1, count_l3_instances(ci.logical_cpus));
  std::string vendor = ci.vendor.empty() ? std::string("unknown") : ci.vendor;
  ci.signature =
      fmt::format("{}-f{}-m{}-s{}-mc{}-isa{:x}", vendor, ci.family, ci.model, ci.stepping, ci.microcode, ci.isa.bits());
  return ci;
}

}  // namespace

void decode_family_model(const std::string& vendor, uint32_t eax, int& family, int& model, int& stepping) {
  int base_family = (eax >> 8) & 0xf, ext_family = (eax >> 20) & 0xff;
  int base_model = (eax >> 4) & 0xf, ext_model = (eax >> 16) & 0xf;
  stepping = eax & 0xf;
  family = base_family == 0xf ? base_family + ext_family : base_family;
  // Intel applies the extended model for family 6 and 15; AMD (and Hygon) only for family 15 and up.
  bool amd = vendor == "AuthenticAMD" || vendor == "HygonGenuine";
  bool use_ext_model = amd ? base_family == 0xf : (base_family == 0x6 || base_family == 0xf);
  model = use_ext_model ? (ext_model << 4) + base_model : base_model;
}

size_t parse_cache_size(const std::string& text) {
  std::string t = trim(text);
  if (t.empty() || !std::isdigit(static_cast<unsigned char>(t[0]))) return 0;
  size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(t, &pos);
  } catch (...) {
    return 0;
  }
  std::string unit = trim(t.substr(pos));
  if (unit.empty() || unit == "B") return v;
  if (unit == "K" || unit == "KB" || unit == "KiB") return v << 10;
  if (unit == "M" || unit == "MB" || unit == "MiB") return v << 20;
  if (unit == "G" || unit == "GB" || unit == "GiB") return v << 30;
  return 0;
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

}  // namespace genesis::cpu
