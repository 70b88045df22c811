// CPU identity: family/model decoding rules, cache size parsing, signature stability, caches on this machine.
#include "cpu/info.h"

#include <gtest/gtest.h>

#include <iostream>

namespace genesis::cpu {
namespace {

TEST(FamilyModel, AmdExtendedFamily) {
  // Zen 4 EPYC Genoa: family 0x19 (0xf + 0xa), model 0x11, stepping 1.
  int f, m, s;
  decode_family_model("AuthenticAMD", 0x00A10F11, f, m, s);
  EXPECT_EQ(f, 25);
  EXPECT_EQ(m, 17);
  EXPECT_EQ(s, 1);
  // Below base family 0xf, AMD ignores the extended model nibble; Intel applies it for family 6.
  decode_family_model("AuthenticAMD", 0x00010661, f, m, s);
  EXPECT_EQ(f, 6);
  EXPECT_EQ(m, 6);
  decode_family_model("GenuineIntel", 0x00010661, f, m, s);
  EXPECT_EQ(m, 0x16);
}

TEST(FamilyModel, IntelFamily6UsesExtendedModel) {
  // Sapphire Rapids: family 6, model 0x8f, stepping 8.
  int f, m, s;
  decode_family_model("GenuineIntel", 0x000806F8, f, m, s);
  EXPECT_EQ(f, 6);
  EXPECT_EQ(m, 0x8f);
  EXPECT_EQ(s, 8);
}

TEST(CacheSize, Parse) {
  EXPECT_EQ(parse_cache_size("32K"), 32u << 10);
  EXPECT_EQ(parse_cache_size("1024K\n"), 1u << 20);
  EXPECT_EQ(parse_cache_size("32M"), 32u << 20);
  EXPECT_EQ(parse_cache_size("512"), 512u);
  EXPECT_EQ(parse_cache_size(""), 0u);
  EXPECT_EQ(parse_cache_size("K"), 0u);
  EXPECT_EQ(parse_cache_size("12Q"), 0u);
}

TEST(CpuInfo, SignatureStableAndDescriptive) {
  const CpuInfo& a = cpu_info();
  ASSERT_FALSE(a.signature.empty());
  EXPECT_EQ(a.signature, cpu_info().signature);
  EXPECT_EQ(&a, &cpu_info());
  EXPECT_NE(a.signature.find(a.vendor), std::string::npos);
  EXPECT_NE(a.signature.find("-f" + std::to_string(a.family) + "-"), std::string::npos);
  EXPECT_NE(a.signature.find("-mc" + a.microcode + "-"), std::string::npos);
  EXPECT_EQ(a.signature.find(' '), std::string::npos);
  EXPECT_EQ(a.isa, detect_isa());
  std::cout << "signature: " << a.signature << "\nbrand: " << a.brand << "\n";
}

TEST(CpuInfo, CountsAndCachesOnThisMachine) {
  const CpuInfo& c = cpu_info();
  EXPECT_GT(c.logical_cpus, 0);
  EXPECT_GT(c.physical_cores, 0);
  EXPECT_LE(c.physical_cores, c.logical_cpus);
  EXPECT_GT(c.caches.l1d, 0u);
  EXPECT_GT(c.caches.l2, 0u);
  EXPECT_GT(c.caches.l3, 0u);
  EXPECT_LT(c.caches.l1d, c.caches.l2);
  EXPECT_GE(c.caches.l3_total, c.caches.l3);
  EXPECT_EQ(c.caches.l3_total % c.caches.l3, 0u);
  EXPECT_FALSE(c.vendor.empty());
  EXPECT_GT(c.family, 0);
}

}  // namespace
}  // namespace genesis::cpu
