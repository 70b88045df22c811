// q8_gemv against its fp64 reference on edge shapes (one row, row tails of the 4-row tiles, a trailing half chunk,
// zero blocks), every path this CPU runs, and the documented bound against the exact product with fp32 activations.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/error.h"
#include "kernels/q8_gemv/q8_gemv.h"

namespace genesis::kernels::q8_gemv {
namespace {

std::vector<Path> paths() {
  std::vector<Path> p = {Path::scalar};
  if (best_path() == Path::avx512vnni) p.push_back(Path::avx512vnni);
  else std::printf("q8_gemv: avx512vnni not available here; only the scalar path is tested\n");
  return p;
}

TEST(Q8Gemv, EveryPathMatchesTheReferenceOnEdgeShapes) {
  std::mt19937 rng(11);
  std::normal_distribution<float> g;
  for (int64_t rows : {1, 3, 4, 5, 17}) {
    for (int64_t cols : {32, 64, 96, 2080}) {
      std::vector<float> w(static_cast<size_t>(rows * cols)), x(static_cast<size_t>(cols));
      for (auto& v : w) v = g(rng);
      for (auto& v : x) v = g(rng);
      for (int64_t k = 0; k < 32; ++k) w[size_t(k)] = 0.0f;  // a zero block: scale 0
      const Q8Matrix m = quantize(w.data(), rows, cols);
      Q8Activations xa;
      quantize_activations(x.data(), cols, xa);
      for (Path p : paths()) {
        std::vector<float> y(static_cast<size_t>(rows + 2), -7.0f);
        gemv_rows(m, xa, y.data() + 1, 0, rows, p);
        EXPECT_EQ(y[0], -7.0f) << "no write before the rows";
        EXPECT_EQ(y[size_t(rows + 1)], -7.0f) << "no write after the rows";
        for (int64_t r = 0; r < rows; ++r) {
          std::vector<float> wr(static_cast<size_t>(cols));
          dequantize_row(m, r, wr.data());
          double exact = 0, mag = 0;
          for (int64_t k = 0; k < cols; ++k) {
            exact += double(wr[size_t(k)]) * double(x[size_t(k)]);
            mag += std::fabs(double(wr[size_t(k)]) * double(x[size_t(k)]));
          }
          const double ref = reference_row(m, xa, r);
          const double got = y[size_t(r + 1)];
          EXPECT_NEAR(got, ref, 2e-6 * mag + 1e-30) << path_name(p) << " " << rows << "x" << cols << " row " << r;
          EXPECT_LE(std::fabs(got - exact), error_bound(m, x.data(), r))
              << path_name(p) << " " << rows << "x" << cols << " row " << r;
        }
      }
    }
  }
}

TEST(Q8Gemv, SubsetOfRowsAndPathsAgree) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  const int64_t rows = 37, cols = 160;
  std::vector<float> w(static_cast<size_t>(rows * cols)), x(static_cast<size_t>(cols));
  for (auto& v : w) v = u(rng);
  for (auto& v : x) v = u(rng);
  const Q8Matrix m = quantize(w.data(), rows, cols);
  Q8Activations xa;
  quantize_activations(x.data(), cols, xa);
  std::vector<float> all(static_cast<size_t>(rows)), part(static_cast<size_t>(rows), 0.0f);
  gemv_rows(m, xa, all.data(), 0, rows, best_path());
  gemv_rows(m, xa, part.data(), 9, 30, best_path());
  for (int64_t r = 9; r < 30; ++r) EXPECT_EQ(part[size_t(r)], all[size_t(r)]) << "row " << r;
}

TEST(Q8Gemv, Q8_0LikeValuesRoundTripExactly) {
  // Values d * q with |q| <= 127 and 127 reached in each block, as ggml's Q8_0 quantizer writes them.
  std::mt19937 rng(2);
  std::uniform_int_distribution<int> q(-127, 127);
  const int64_t rows = 3, cols = 64;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (int64_t b = 0; b < rows * cols / 32; ++b) {
    const float d = 0.01f * float(b + 1);
    for (int64_t k = 0; k < 32; ++k) w[size_t(b * 32 + k)] = d * float(k == 0 ? 127 : q(rng));
  }
  const Q8Matrix m = quantize(w.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> back(static_cast<size_t>(cols));
    dequantize_row(m, r, back.data());
    for (int64_t k = 0; k < cols; ++k)
      EXPECT_NEAR(back[size_t(k)], w[size_t(r * cols + k)], 1e-6f * std::fabs(w[size_t(r * cols + k)]));
  }
}

// dequantize_row (AVX-512 where the CPU has it) gives exactly q * scale for every weight.
TEST(Q8Gemv, DequantizedRowsAreQTimesScale) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  const int64_t rows = 3, cols = 96;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (auto& v : w) v = g(rng);
  const Q8Matrix m = quantize(w.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> out(static_cast<size_t>(cols));
    dequantize_row(m, r, out.data());
    for (int64_t k = 0; k < cols; ++k)
      EXPECT_EQ(out[size_t(k)], float(int(m.w[size_t(r * cols + k)]) - 128) * m.scale[size_t(r * (cols / 32) + k / 32)]);
  }
}

TEST(Q8Gemv, BadShapesAreClearErrors) {
  std::vector<float> w(48, 1.0f);
  EXPECT_THROW(quantize(w.data(), 1, 48), Error);
  Q8Activations xa;
  EXPECT_THROW(quantize_activations(w.data(), 48, xa), Error);
  const Q8Matrix m = quantize(w.data(), 1, 32);
  quantize_activations(w.data(), 32, xa);
  float y[2];
  EXPECT_THROW(gemv_rows(m, xa, y, 0, 2, Path::scalar), Error);
}

}  // namespace
}  // namespace genesis::kernels::q8_gemv
