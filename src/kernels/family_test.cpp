// The family registry: every family listed once, each uses a path this CPU may run, formats map to the family
// `bench gemv --format` runs.
#include "kernels/family.h"

#include <gtest/gtest.h>

#include <set>

namespace genesis::kernels {
namespace {

TEST(Family, RegistryListsEveryFamilyWithAUsablePath) {
  const auto fs = families();
  std::set<std::string> names;
  for (const auto& f : fs) {
    EXPECT_TRUE(names.insert(f.name).second) << f.name << " listed twice";
    EXPECT_FALSE(f.formats.empty()) << f.name;
    bool found = false;
    for (const auto& p : f.paths) {
      EXPECT_FALSE(p.error_bound.empty()) << f.name << " " << p.name;
      if (p.name == f.path) found = p.usable;
    }
    EXPECT_TRUE(found) << f.name << " uses " << f.path << ", which is not a usable path of its own";
  }
  EXPECT_EQ(names, (std::set<std::string>{"nf4_gemv", "kq_gemv", "ggml_gemv", "q8_gemv"}));
}

TEST(Family, BenchFormatsMapToTheirFamily) {
  EXPECT_EQ(bench_family_for("NF4")->name, "nf4_gemv");
  EXPECT_EQ(bench_family_for("q4_k")->name, "kq_gemv");
  EXPECT_EQ(bench_family_for("Q6_K")->name, "kq_gemv");
  EXPECT_FALSE(bench_family_for("Q5_0").has_value());  // ggml_gemv only: not benchmarked by --format
  EXPECT_FALSE(bench_family_for("Q3_K").has_value());
  EXPECT_EQ(bench_formats(), "NF4, Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1");
}

}  // namespace
}  // namespace genesis::kernels
