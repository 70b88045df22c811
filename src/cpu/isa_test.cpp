// IsaSet bit operations and names, the GENESIS_MAX_ISA cap for every level, detection consistency.
#include "cpu/isa.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>

#include "common/error.h"

namespace genesis::cpu {
namespace {

IsaSet all_isa() { return IsaSet(~uint64_t{0}); }

TEST(IsaSet, AddRemoveHas) {
  IsaSet s;
  EXPECT_TRUE(s.empty());
  s.add(Isa::avx2);
  s.add(Isa::amx_bf16);
  EXPECT_TRUE(s.has(Isa::avx2));
  EXPECT_TRUE(s.has(Isa::amx_bf16));
  EXPECT_FALSE(s.has(Isa::avx));
  EXPECT_EQ(s.bits(), (uint64_t{1} << 1) | (uint64_t{1} << 16));
  s.remove(Isa::avx2);
  EXPECT_FALSE(s.has(Isa::avx2));
  EXPECT_EQ(s.names(), std::vector<std::string>{"amx_bf16"});
  // Bits beyond the enum are not members.
  EXPECT_EQ(all_isa().bits(), (uint64_t{1} << kIsaCount) - 1);
}

TEST(IsaSet, Names) {
  EXPECT_STREQ(IsaSet::name(Isa::avx), "avx");
  EXPECT_STREQ(IsaSet::name(Isa::avx512vnni), "avx512vnni");
  EXPECT_STREQ(IsaSet::name(Isa::avx512bf16), "avx512bf16");
  EXPECT_STREQ(IsaSet::name(Isa::amx_tile), "amx_tile");
  EXPECT_EQ(all_isa().names().size(), static_cast<size_t>(kIsaCount));
  IsaSet s;
  EXPECT_EQ(s.to_string(), "none");
  s.add(Isa::fma);
  s.add(Isa::avx);
  EXPECT_EQ(s.to_string(), "avx fma");
  // Every name is distinct and non-empty.
  auto n = all_isa().names();
  std::sort(n.begin(), n.end());
  EXPECT_EQ(std::unique(n.begin(), n.end()), n.end());
  for (auto& x : n) EXPECT_FALSE(x.empty());
}

TEST(CapIsa, Scalar) { EXPECT_TRUE(cap_isa(all_isa(), "scalar").empty()); }

TEST(CapIsa, Avx2) {
  IsaSet c = cap_isa(all_isa(), "avx2");
  IsaSet want;
  for (Isa i : {Isa::avx, Isa::avx2, Isa::fma, Isa::f16c, Isa::bmi2}) want.add(i);
  EXPECT_EQ(c, want) << c.to_string();
}

TEST(CapIsa, Avx512DropsOnlyAmx) {
  IsaSet c = cap_isa(all_isa(), "avx512");
  for (int k = 0; k < kIsaCount; ++k) {
    Isa i = static_cast<Isa>(k);
    bool amx = i == Isa::amx_tile || i == Isa::amx_int8 || i == Isa::amx_bf16;
    EXPECT_EQ(c.has(i), !amx) << IsaSet::name(i);
  }
}

TEST(CapIsa, AmxKeepsAll) { EXPECT_EQ(cap_isa(all_isa(), "amx"), all_isa()); }

TEST(CapIsa, NeverAddsBits) {
  IsaSet s;
  s.add(Isa::avx);
  s.add(Isa::avx512f);
  for (const auto& level : isa_levels()) EXPECT_EQ(cap_isa(s, level).bits() & ~s.bits(), 0u) << level;
  EXPECT_EQ(cap_isa(s, "avx2").to_string(), "avx");
}

TEST(CapIsa, UnknownValueThrowsWithChoices) {
  for (const char* bad : {"", "AVX2", "avx512f", "sse"}) {
    try {
      cap_isa(all_isa(), bad);
      ADD_FAILURE() << "no error for '" << bad << "'";
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("scalar"), std::string::npos) << m;
      EXPECT_NE(m.find("avx512"), std::string::npos) << m;
      EXPECT_NE(m.find("amx"), std::string::npos) << m;
    }
  }
}

TEST(DetectIsa, Consistent) {
  IsaSet d = detect_isa();
  EXPECT_EQ(d, detect_isa());
  // Implications detection must respect: each extension needs its base to have OS support.
  if (d.has(Isa::avx2) || d.has(Isa::fma) || d.has(Isa::f16c)) {
    EXPECT_TRUE(d.has(Isa::avx));
  }
  for (Isa i : {Isa::avx512bw, Isa::avx512vl, Isa::avx512dq, Isa::avx512cd, Isa::avx512vnni, Isa::avx512bf16,
                Isa::avx512fp16, Isa::avx512vbmi})
    if (d.has(i)) {
      EXPECT_TRUE(d.has(Isa::avx512f)) << IsaSet::name(i);
    }
  if (d.has(Isa::amx_int8) || d.has(Isa::amx_bf16)) {
    EXPECT_TRUE(d.has(Isa::amx_tile));
  }
  std::cout << "detected: " << d.to_string() << "\n";
}

TEST(HostIsa, IsDetectedCappedByEnv) {
  std::string cap = max_isa_setting();
  const auto& levels = isa_levels();
  if (!cap.empty() && std::find(levels.begin(), levels.end(), cap) == levels.end()) {
    EXPECT_THROW(host_isa(), Error);  // a bad GENESIS_MAX_ISA is an error, reported on every call
    EXPECT_THROW(host_isa(), Error);
    return;
  }
  IsaSet want = cap.empty() ? detect_isa() : cap_isa(detect_isa(), cap);
  EXPECT_EQ(host_isa(), want);
  for (int k = 0; k < kIsaCount; ++k) EXPECT_EQ(mayiuse(static_cast<Isa>(k)), want.has(static_cast<Isa>(k)));
}

}  // namespace
}  // namespace genesis::cpu
