// NF4 reference: byte layout (high nibble first), code choice, round trip, blocksize checks, double quantization.
#include "quant/nf4.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/error.h"

namespace genesis::quant {
namespace {

TEST(Nf4, HighNibbleFirst) {
  // Element 0 -> -1.0 (code 0), element 1 -> 1.0 (code 15), element 2 -> 0 (code 7), element 3 -> -1 (code 0).
  std::vector<float> w = {-2.0f, 2.0f, 0.0f, -2.0f};
  for (int i = 4; i < 64; ++i) w.push_back(0.0f);
  auto m = quantize_nf4(w, 1, 64, 64);
  ASSERT_EQ(m.packed.size(), 32u);
  EXPECT_EQ(m.packed[0], 0x0F);
  EXPECT_EQ(m.packed[1], 0x70);
  EXPECT_FLOAT_EQ(m.absmax[0], 2.0f);
  EXPECT_FLOAT_EQ(m.at(0, 1), 2.0f);
}

TEST(Nf4, NearestCodeMatchesArgmin) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int t = 0; t < 100000; ++t) {
    float v = u(rng);
    int best = 0;
    for (int c = 1; c < 16; ++c)
      if (std::fabs(kNf4Codes[c] - v) < std::fabs(kNf4Codes[best] - v)) best = c;
    ASSERT_EQ(nf4_nearest_code(v), best) << v;
  }
  for (int c = 0; c < 16; ++c) EXPECT_EQ(nf4_nearest_code(kNf4Codes[c]), c);
}

TEST(Nf4, RoundTripErrorWithinHalfGap) {
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int bs : {32, 64, 128, 256, 4096}) {
    std::vector<float> w(size_t(8 * 4096));
    for (auto& v : w) v = g(rng);
    auto m = quantize_nf4(w, 8, 4096, bs);
    auto d = dequantize_nf4(m);
    for (size_t i = 0; i < w.size(); ++i) {
      const float amax = m.absmax[i / size_t(bs)];
      ASSERT_LE(std::fabs(d[i] - w[i]), amax * 0.1621f) << i;  // largest half gap between codes is (1-0.7230)/2*...
    }
  }
}

TEST(Nf4, BlocksizeValidation) {
  std::vector<float> w(128, 1.0f);
  EXPECT_THROW(quantize_nf4(w, 1, 128, 48), Error);
  EXPECT_THROW(quantize_nf4(w, 1, 128, 8192), Error);
  EXPECT_NO_THROW(quantize_nf4(w, 1, 128, 96));
}

TEST(Nf4, DynamicMapShape) {
  auto map = dynamic_map_signed();
  EXPECT_FLOAT_EQ(map[255], 1.0f);
  for (int i = 1; i < 256; ++i) EXPECT_LE(map[i - 1], map[i]);
  EXPECT_LT(map[0], -0.99f);
}

TEST(Nf4, DoubleQuantRoundTrip) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.01f, 3.0f);
  std::vector<float> absmax(1000);
  for (auto& a : absmax) a = u(rng);
  auto dq = encode_double_quant(absmax);
  EXPECT_EQ(dq.nested_absmax.size(), 4u);
  auto back = decode_double_quant(dq);
  for (size_t i = 0; i < absmax.size(); ++i) EXPECT_NEAR(back[i], absmax[i], 0.02f * 3.0f) << i;
}

TEST(Nf4, DoubleQuantDecodeFormula) {
  Nf4DoubleQuant dq;
  dq.nested_blocksize = 2;
  dq.q = {0, 1, 2};
  dq.nested_absmax = {2.0f, 4.0f};
  dq.nested_quant_map[0] = 0.5f;
  dq.nested_quant_map[1] = -1.0f;
  dq.nested_quant_map[2] = 0.25f;
  dq.offset = 0.125f;
  auto a = decode_double_quant(dq);
  EXPECT_FLOAT_EQ(a[0], 1.125f);
  EXPECT_FLOAT_EQ(a[1], -1.875f);
  EXPECT_FLOAT_EQ(a[2], 1.125f);
  dq.nested_absmax.resize(1);
  EXPECT_THROW(decode_double_quant(dq), Error);
}

}  // namespace
}  // namespace genesis::quant
