// Helpers shared by the model tests (golden_test.cpp, gguf_test.cpp).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace genesis::runtime::test {

// Largest |got - want| over the logits, relative to the largest |reference logit|.
inline double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double mx = 0, ref = 1e-30;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    mx = std::max(mx, double(std::fabs(got[i] - want[i])));
    ref = std::max(ref, double(std::fabs(want[i])));
  }
  return mx / ref;
}

}  // namespace genesis::runtime::test
