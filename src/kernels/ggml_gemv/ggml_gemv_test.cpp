// ggml_gemv against the dequantize-then-dot ground truth (quant::ggml_dequantize, bit-exact with the gguf package,
// and an fp64 dot product), every supported format, both paths, several token counts, edge row counts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "kernels/ggml_gemv/ggml_gemv.h"
#include "kernels/linear.h"
#include "quant/ggml.h"

namespace genesis::kernels::ggml_gemv {
namespace {

using quant::GgmlType;

// Random blocks with finite fp16 scales (and mins) of moderate size; quants are random bytes.
std::vector<uint8_t> random_blocks(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const auto info = *quant::ggml_type_info(uint32_t(t));
  const int64_t nb = rows * cols / info.block;
  std::vector<uint8_t> b(size_t(nb * info.block_bytes));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& x : b) x = uint8_t(byte(rng));
  // fp16 scales: random sign and mantissa, exponent 5..13 (magnitudes 2^-10 .. 2^-1).
  std::uniform_int_distribution<int> expo(5, 13), mant(0, 1023), sign(0, 1);
  auto put_half = [&](uint8_t* p) {
    const uint16_t h = uint16_t((sign(rng) << 15) | (expo(rng) << 10) | mant(rng));
    std::memcpy(p, &h, 2);
  };
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* blk = b.data() + i * info.block_bytes;
    if (t == GgmlType::q6_k) {
      put_half(blk + info.block_bytes - 2);
      continue;
    }
    put_half(blk);
    if (t == GgmlType::q4_1 || t == GgmlType::q5_1 || t == GgmlType::q4_k || t == GgmlType::q5_k) put_half(blk + 2);
  }
  return b;
}

struct Case {
  GgmlType type;
  int64_t rows, cols, tokens;
};

class GgmlGemv : public ::testing::TestWithParam<Case> {};

TEST_P(GgmlGemv, MatchesDequantizedDot) {
  const Case c = GetParam();
  std::mt19937 rng(uint32_t(c.rows * 31 + c.cols + c.tokens));
  const auto bytes = random_blocks(c.type, c.rows, c.cols, rng);
  const GgmlMatrix w = make_matrix(uint32_t(c.type), c.rows, c.cols, bytes.data(), bytes.size());
  std::vector<float> deq(size_t(c.rows * c.cols));
  quant::ggml_dequantize(uint32_t(c.type), bytes.data(), deq.data(), c.rows * c.cols);
  std::normal_distribution<float> nd;
  std::vector<float> x(size_t(c.tokens * c.cols));
  for (auto& v : x) v = nd(rng);
  std::vector<double> want(size_t(c.tokens * c.rows));
  double scale = 1e-30;
  for (int64_t t = 0; t < c.tokens; ++t)
    for (int64_t r = 0; r < c.rows; ++r) {
      double s = 0;
      for (int64_t k = 0; k < c.cols; ++k) s += double(deq[size_t(r * c.cols + k)]) * double(x[size_t(t * c.cols + k)]);
      want[size_t(t * c.rows + r)] = s;
      scale = std::max(scale, std::fabs(s));
    }
  std::vector<Path> paths = {Path::scalar};
  if (best_path() == Path::avx512) paths.push_back(Path::avx512);
  for (Path p : paths) {
    std::vector<float> y(size_t(c.tokens * c.rows), -1.0f);
    gemv_rows(w, x.data(), y.data(), c.tokens, 0, c.rows, p);
    double worst = 0;
    for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(double(y[i]) - want[i]));
    EXPECT_LE(worst / scale, 1e-5) << quant::ggml_type_name(uint32_t(c.type)) << " " << path_name(p);
  }
  // Through the pool: the same as the rows alone.
  cpu::ThreadPool pool(3);
  std::vector<float> a(size_t(c.tokens * c.rows)), b(a.size());
  gemv(w, x.data(), a.data(), c.tokens, &pool);
  gemv(w, x.data(), b.data(), c.tokens, nullptr);
  EXPECT_EQ(a, b);
}

INSTANTIATE_TEST_SUITE_P(Formats, GgmlGemv,
                         ::testing::Values(Case{GgmlType::q8_0, 64, 256, 1}, Case{GgmlType::q4_0, 64, 256, 1},
                                           Case{GgmlType::q4_1, 64, 256, 1}, Case{GgmlType::q8_0, 7, 32, 3},
                                           Case{GgmlType::q4_0, 130, 96, 9}, Case{GgmlType::q4_1, 200, 576, 17},
                                           Case{GgmlType::q4_1, 1, 32, 1}, Case{GgmlType::q5_0, 40, 64, 2},
                                           Case{GgmlType::q5_1, 40, 64, 9}, Case{GgmlType::q4_k, 48, 512, 1}, Case{GgmlType::q4_k, 33, 768, 5},
                                           Case{GgmlType::q5_k, 17, 256, 3}, Case{GgmlType::q6_k, 64, 768, 10}));

// The Linear seam's stored rows: the file's bytes of each row, its type, and an error past the last row.
TEST(GgmlGemvLinear, StoredRowsAreTheFileBytes) {
  std::mt19937 rng(7);
  for (GgmlType t : {GgmlType::q4_0, GgmlType::q8_0, GgmlType::q4_k, GgmlType::q6_k}) {
    const int64_t rows = 5, cols = 512;
    const auto bytes = random_blocks(t, rows, cols, rng);
    const auto lin = make_linear(std::make_shared<const GgmlMatrix>(
        make_matrix(uint32_t(t), rows, cols, bytes.data(), bytes.size())));
    EXPECT_EQ(lin->stored_type(), uint32_t(t));
    const size_t rb = bytes.size() / size_t(rows);
    ASSERT_EQ(lin->stored_row_bytes(), rb);
    std::vector<uint8_t> row(rb);
    for (int64_t r = 0; r < rows; ++r) {
      lin->stored_row(r, row.data());
      EXPECT_EQ(0, std::memcmp(row.data(), bytes.data() + size_t(r) * rb, rb)) << "row " << r;
    }
    EXPECT_THROW(lin->stored_row(rows, row.data()), Error);
  }
}

TEST(GgmlGemvErrors, UnsupportedOrMisshapenMatricesAreClearErrors) {
  std::vector<uint8_t> b(144, 0);
  EXPECT_THROW(make_matrix(uint32_t(GgmlType::q2_k), 1, 256, b.data(), b.size()), Error);   // no dequantizer
  EXPECT_THROW(make_matrix(uint32_t(GgmlType::q8_0), 1, 48, b.data(), 34), Error);          // 48 % 32 != 0
  EXPECT_THROW(make_matrix(uint32_t(GgmlType::q8_0), 2, 32, b.data(), 34), Error);          // bytes for 1 row
  EXPECT_TRUE(supported(uint32_t(GgmlType::q4_1)));
  EXPECT_TRUE(supported(uint32_t(GgmlType::q6_k)));
  EXPECT_FALSE(supported(uint32_t(GgmlType::f32)));  // not a block format: dense paths serve it
  EXPECT_THROW(make_matrix(uint32_t(GgmlType::q4_k), 1, 128, b.data(), 72), Error);  // 128 % 256 != 0
}

}  // namespace
}  // namespace genesis::kernels::ggml_gemv
