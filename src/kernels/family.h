// The registry of kernel families: for each family its name, the weight formats it multiplies, its paths (with the
// ISA each needs, whether this CPU may use it, whether it is generated code, its stated error bound), the path it
// uses here, and what one product reads. `genesis info` lists it; `genesis bench gemv --format` finds the family of
// a format in it. Families are listed explicitly in family.cpp (no static registration: the library is static).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace genesis::kernels {

struct FamilyPath {
  std::string name;         // "avx512vnni"
  std::string needs;        // ISA, in words
  bool usable = false;      // on this CPU after GENESIS_MAX_ISA
  bool jit = false;         // generated through jit/ (else compiled C++)
  std::string error_bound;  // vs the family's fp64 reference
};

struct FamilyInfo {
  std::string name;                  // folder under src/kernels/
  std::string summary;
  std::vector<std::string> formats;  // weight formats ("NF4", "Q4_K", ...)
  std::vector<FamilyPath> paths;     // fastest first
  std::string path;                  // the path this CPU uses
  std::string bytes;                 // what one product reads (the roofline's bytes)
  bool benchmarked = false;          // `bench gemv --format` runs it
};

// Every family, in a fixed order (nf4_gemv, kq_gemv, ggml_gemv, q8_gemv).
std::vector<FamilyInfo> families();
// The family `bench gemv --format <format>` runs for a format name (case-insensitive), if any.
std::optional<FamilyInfo> bench_family_for(const std::string& format);
// "NF4, Q4_K, ..." : the formats `bench gemv --format` takes.
std::string bench_formats();

}  // namespace genesis::kernels
