// The AMX bf16 GEMM: the packing's layout, the driver over software tiles (any CPU) against an fp64 reference of the
// bf16-rounded operands, edge shapes (rows, rows of x and columns not whole tiles); where AMX exists, the hardware
// against the software tiles and the widened product against the fp32 sgemm path.
#include "kernels/amx/amx_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/float_dense/float_dense.h"
#include "kernels/linear.h"
#include "quant/half.h"

namespace genesis::kernels::amx {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

float rounded(float x) { return quant::bf16_to_f32(quant::f32_to_bf16(x)); }

// The bound of a product with both operands rounded to bf16 (2^-9 relative each): 2^-8 of sum |w x|, plus fp32
// accumulation. mag[t * rows + r] = sum_k |w[r][k] x[t][k]|.
std::vector<double> magnitudes(const std::vector<float>& w, const std::vector<float>& x, int64_t rows, int64_t cols,
                               int64_t n) {
  std::vector<double> mag(size_t(n * rows));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double m = 0;
      for (int64_t k = 0; k < cols; ++k) m += std::fabs(double(w[size_t(r * cols + k)]) * x[size_t(t * cols + k)]);
      mag[size_t(t * rows + r)] = m;
    }
  return mag;
}
constexpr double kBf16Bound = 1.0 / 256 + 1e-5;

TEST(AmxGemm, PackedRowsFollowTheTileLayout) {
  const int64_t n = 19, cols = 70;  // two groups (the second padded), three column blocks (the last partial)
  const auto x = random_values(size_t(n * cols), 1);
  PackedRows p;
  pack_rows(x.data(), n, cols, p);
  ASSERT_EQ(p.groups, 2);
  ASSERT_EQ(p.kblocks, 3);
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t kb = 0; kb < p.kblocks; ++kb)
      for (int kk = 0; kk < 16; ++kk)
        for (int t = 0; t < 16; ++t)
          for (int j = 0; j < 2; ++j) {
            const int64_t row = g * 16 + t, col = kb * 32 + 2 * kk + j;
            const uint16_t want = row < n && col < cols ? quant::f32_to_bf16(x[size_t(row * cols + col)]) : 0;
            ASSERT_EQ(p.tile(g, kb)[kk * 32 + t * 2 + j], want) << g << " " << kb << " " << kk << " " << t << " " << j;
          }
  EXPECT_THROW(pack_rows(x.data(), 0, cols, p), std::exception);
}

struct Case {
  int64_t rows, n, cols;
};

// w bf16 [round_up(rows, 32)][ldw] (padding zero), x fp32; the reference in fp64 over the bf16-rounded operands.
void check_driver(const Case& c, bool hardware) {
  const int64_t ldw = (c.cols + 31) / 32 * 32 + 32 * (c.rows % 3 == 0);  // a stride wider than the columns, too
  const int64_t rows_pad = (c.rows + 31) / 32 * 32;
  const auto wf = random_values(size_t(c.rows * c.cols), uint32_t(c.rows * 7 + c.cols));
  const auto x = random_values(size_t(c.n * c.cols), uint32_t(c.n * 13 + c.cols));
  std::vector<uint16_t> w(size_t(rows_pad * ldw), 0);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t k = 0; k < c.cols; ++k) w[size_t(r * ldw + k)] = quant::f32_to_bf16(wf[size_t(r * c.cols + k)]);
  PackedRows p;
  pack_rows(x.data(), c.n, c.cols, p);
  const int64_t ldy = c.rows + 5;  // y's stride is the caller's: untouched columns stay as they were
  std::vector<float> soft(size_t(c.n * ldy), -7.0f), hard(soft);
  gemm_bf16_emulated(w.data(), ldw, c.rows, p, soft.data(), ldy);
  if (hardware) gemm_bf16(w.data(), ldw, c.rows, p, hard.data(), ldy);
  for (int64_t t = 0; t < c.n; ++t)
    for (int64_t r = 0; r < ldy; ++r) {
      const float got = soft[size_t(t * ldy + r)];
      if (r >= c.rows) {
        ASSERT_EQ(got, -7.0f) << "row " << r << " past the matrix was written";
        if (hardware) {
          ASSERT_EQ(hard[size_t(t * ldy + r)], -7.0f);
        }
        continue;
      }
      double want = 0, mag = 0;
      for (int64_t k = 0; k < c.cols; ++k) {
        const double a = rounded(wf[size_t(r * c.cols + k)]), b = rounded(x[size_t(t * c.cols + k)]);
        want += a * b;
        mag += std::fabs(a * b);
      }
      // fp32 accumulation of exact products: a few ulps of the magnitude per column block.
      const double bound = 1e-6 * mag + 1e-30;
      ASSERT_NEAR(got, want, bound) << "rows " << c.rows << " n " << c.n << " cols " << c.cols << " at " << t << ","
                                    << r;
      if (hardware) {
        ASSERT_NEAR(hard[size_t(t * ldy + r)], want, 4 * bound) << "hardware at " << t << "," << r;
      }
    }
}

// {96, 64, 2048} and {40, 33, 600}: many column blocks, the last partial.
const Case kCases[] = {{32, 32, 64},   {1, 1, 32},     {45, 37, 70}, {16, 17, 576},
                       {96, 64, 2048}, {33, 130, 100}, {40, 33, 600}};

TEST(AmxGemm, SoftwareTilesMatchTheReference) {
  for (const Case& c : kCases)
    check_driver(c, false);
}

TEST(AmxGemm, HardwareMatchesTheReference) {
  if (!available()) GTEST_SKIP() << "no AMX bf16 tiles here (or GENESIS_MAX_ISA / GENESIS_AMX=0)";
  for (const Case& c : kCases)
    check_driver(c, true);
}

// Widening a Linear's rows over the software tiles, in two ranges.
TEST(AmxGemm, EmulatedWidenedRowsMatchTheSgemmPath) {
  const int64_t rows = 300, cols = 600, n = 40;  // more than kWidenRows: several widened blocks, the last partial
  const auto w = random_values(size_t(rows * cols), 7);
  const auto x = random_values(size_t(n * cols), 8);
  const auto lin = float_dense::make_f32(rows, cols, w);
  std::vector<float> want(size_t(n * rows));
  widened_gemm_rows(*lin, x.data(), n, want.data(), 0, rows);
  PackedRows p;
  pack_rows(x.data(), n, cols, p);
  const auto mag = magnitudes(w, x, rows, cols, n);
  std::vector<float> got(size_t(n * rows), 0.0f);
  widened_rows_emulated(*lin, p, got.data(), 0, 50);
  widened_rows_emulated(*lin, p, got.data(), 50, rows);  // 250 rows: blocks of 128, 122
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], kBf16Bound * mag[i]) << i;
}

TEST(AmxGemm, WidenedRowsMatchTheSgemmPath) {
  if (!available()) GTEST_SKIP() << "no AMX bf16 tiles here (or GENESIS_MAX_ISA / GENESIS_AMX=0)";
  const int64_t rows = 200, cols = 320, n = 150;
  const auto w = random_values(size_t(rows * cols), 5);
  const auto x = random_values(size_t(n * cols), 6);
  const auto lin = float_dense::make_f32(rows, cols, w);
  std::vector<float> want(size_t(n * rows)), got(size_t(n * rows), 0.0f);
  widened_gemm_rows(*lin, x.data(), n, want.data(), 0, rows);
  PackedRows p;
  pack_rows(x.data(), n, cols, p);
  widened_rows(*lin, p, got.data(), 0, 100);  // two calls, as two threads' shares
  widened_rows(*lin, p, got.data(), 100, rows);
  const auto mag = magnitudes(w, x, rows, cols, n);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], kBf16Bound * mag[i]) << i;
}

}  // namespace
}  // namespace genesis::kernels::amx
