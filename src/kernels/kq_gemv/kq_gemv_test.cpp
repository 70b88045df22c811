// kq_gemv against its fp64 reference within the stated bound (every path, every format, edge shapes, 1..16
// activation rows, tiny and large scales, every code value), against ggml's own dot-product formula on the same
// quantized activations, a planted wrong weight caught by the bound, and bad input rejected with genesis::Error.
#include "kernels/kq_gemv/kq_gemv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "cpu/isa.h"
#include "jit/ir.h"
#include "kernels/amx/amx_gemm.h"
#include "kernels/kq_gemv/build.h"
#include "kernels/kq_gemv/layout.h"
#include "kernels/kq_gemv/tiles.h"
#include "kernels/linear.h"
#include "quant/ggml.h"
#include "quant/half.h"

namespace genesis::kernels::kq_gemv {
namespace {

// A random half with exponent field in [e_lo, e_hi] (0 = subnormal), random sign and mantissa.
uint16_t random_half(std::mt19937& g, int e_lo, int e_hi, bool positive = false) {
  const uint16_t e = uint16_t(std::uniform_int_distribution<int>(e_lo, e_hi)(g));
  const uint16_t m = uint16_t(g() & 0x3FF);
  const uint16_t s = positive ? 0 : uint16_t(g() & 1);
  return uint16_t(s << 15 | e << 10 | m);
}

// Stored GGUF bytes: every code byte random (so every code value occurs), scale fields as halves in [e_lo, e_hi].
std::vector<uint8_t> random_stored(Format f, int64_t rows, int64_t cols, uint32_t seed, int e_lo = 8, int e_hi = 14) {
  const auto info = quant::ggml_type_info(ggml_type(f));
  const int64_t blocks = rows * cols / info->block;
  std::vector<uint8_t> b(size_t(blocks * info->block_bytes));
  std::mt19937 g(seed);
  for (auto& v : b) v = uint8_t(g());
  auto put = [&](uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); };
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* blk = b.data() + i * info->block_bytes;
    switch (f) {
      case Format::q4_k:
      case Format::q5_k:
        put(blk, random_half(g, e_lo, e_hi));
        put(blk + 2, random_half(g, e_lo, e_hi));
        break;
      case Format::q6_k: put(blk + 208, random_half(g, e_lo, e_hi)); break;
      case Format::q4_1: put(blk + 2, random_half(g, e_lo, e_hi)); [[fallthrough]];
      default: put(blk, random_half(g, e_lo, e_hi)); break;
    }
  }
  return b;
}

std::vector<float> random_x(int n, int64_t cols, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> x(size_t(n * cols));
  for (auto& v : x) v = d(g);
  return x;
}

struct Case {
  Format f;
  int64_t rows, cols;
  int n;
  int e_lo = 8, e_hi = 14;
  float xscale = 1.0f;
};

void check_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << format_name(c.f) << " " << c.rows << "x" << c.cols << " n=" << c.n
                                  << " e=" << c.e_lo << ".." << c.e_hi << " xs=" << c.xscale);
  const auto stored = random_stored(c.f, c.rows, c.cols, seed, c.e_lo, c.e_hi);
  const Matrix m = make_matrix(ggml_type(c.f), c.rows, c.cols, stored.data(), stored.size());
  const auto x = random_x(c.n, c.cols, seed + 1, c.xscale);
  Activations a;
  quantize_activations(c.f, x.data(), c.n, c.cols, a);
  std::vector<double> ref(size_t(c.n * c.rows));
  reference(ggml_type(c.f), stored.data(), c.rows, c.cols, a, ref.data());
  for (Path p : available_paths()) {
    SCOPED_TRACE(path_name(p));
    const int64_t ldy = c.rows + 3;
    std::vector<float> y(size_t(c.n * ldy), -1e30f);
    // two calls on a split row range, as threads do
    const int64_t mid = c.rows / 2;
    run_rows(m, a, y.data(), ldy, 0, mid, p);
    run_rows(m, a, y.data(), ldy, mid, c.rows, p);
    int bad = 0;
    for (int t = 0; t < c.n; ++t)
      for (int64_t r = 0; r < c.rows; ++r) {
        const double b = error_bound(ggml_type(c.f), stored.data(), c.cols, r, a, t);
        const double e = std::fabs(double(y[size_t(t * ldy + r)]) - ref[size_t(t * c.rows + r)]);
        if (!(e <= b) && bad++ < 3)
          ADD_FAILURE() << "t=" << t << " r=" << r << " y=" << y[size_t(t * ldy + r)]
                        << " ref=" << ref[size_t(t * c.rows + r)] << " err=" << e << " bound=" << b;
      }
    for (int t = 0; t < c.n; ++t)  // the padding between ldy and rows is untouched
      for (int64_t r = c.rows; r < ldy; ++r) ASSERT_EQ(y[size_t(t * ldy + r)], -1e30f);
  }
}

TEST(KqGemv, EdgeShapesEveryFormat) {
  uint32_t seed = 1;
  for (Format f : kFormats) {
    const int64_t blk = is_k_quant(f) ? 256 : 32;
    for (int64_t rows : {int64_t(1), int64_t(37), int64_t(130)})
      for (int64_t cols : {blk, 3 * blk, int64_t(is_k_quant(f) ? 2048 : 640)})
        for (int n : {1, 3, 16}) check_case({f, rows, cols, n}, seed++);
  }
}

TEST(KqGemv, EveryTokenCount) {
  uint32_t seed = 100;
  for (Format f : kFormats)
    for (int n = 1; n <= kMaxTokens; ++n) check_case({f, 19, is_k_quant(f) ? 512 : 160, n}, seed++);
  for (Format f : kFormats)  // more rows than one kernel pass takes
    for (int n : {17, 40, kMaxRows}) check_case({f, 7, is_k_quant(f) ? 256 : 96, n}, seed++);
}

// The four-unit kernels of the legacy formats (2..8 rows of x per pass on avx512vnni): whole groups only, groups and
// a tail of 1..3 units (SmolLM2's 576 columns: 18 blocks, one group and a unit of two blocks), several column chunks
// (a small xkb), passes over more rows; every output within the bound, the grouped records' regrouping checked
// against the plain records byte for byte.
TEST(KqGemv, FourUnitKernelsAgreeWithTheReference) {
  uint32_t seed = 900;
  for (Format f : {Format::q8_0, Format::q4_0, Format::q4_1}) {
    for (int64_t cols : {int64_t(512), int64_t(576), int64_t(1632), int64_t(4096)})
      for (int n : {2, 3, 5, 8, 11, 16}) check_case({f, 21, cols, n}, seed++);
    // the regrouping: lane 4 u + b of grouped vector 4 z + q is unit u's lane 4 q + b of vector z
    const int n = 3;
    const int64_t cols = 2048 + 96;
    const auto x = random_x(n, cols, seed++, 1.0f);
    Activations a;
    quantize_activations(f, x.data(), n, cols, a);
    if (best_path() != Path::avx512vnni) {  // only the AVX-512 kernels read them
      EXPECT_EQ(a.groups, 0);
      continue;
    }
    ASSERT_EQ(a.groups, a.units / 4);
    for (int64_t g = 0; g < a.groups; ++g)
      for (int t = 0; t < n; ++t) {
        const uint8_t* gr = a.grouped.data() + (size_t(g) * n + size_t(t)) * kGroupRecord;
        for (int u = 0; u < 4; ++u) {
          const uint8_t* rec = a.data.data() + (size_t(4 * g + u) * n + size_t(t)) * kTokenRecord;
          for (int z = 0; z < 2; ++z)
            for (int q = 0; q < 4; ++q)
              ASSERT_EQ(0, std::memcmp(gr + 64 * (4 * z + q) + 16 * u, rec + 64 * z + 16 * q, 16));
        }
      }
    Activations one;  // one row: no grouped copy (the one-unit kernels serve it)
    quantize_activations(f, x.data(), 1, cols, one);
    EXPECT_EQ(one.groups, 0);
  }
  const auto paths = available_paths();
  if (std::find(paths.begin(), paths.end(), Path::avx512vnni) == paths.end()) return;
  // several column chunks of groups: xkb=4 leaves one or two groups per chunk
  for (Format f : {Format::q8_0, Format::q4_1}) {
    const int64_t rows = 9, cols = 4096 + 64;
    const auto stored = random_stored(f, rows, cols, seed++);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    const auto x = random_x(6, cols, seed++, 1.0f);
    Activations a;
    quantize_activations(f, x.data(), 6, cols, a);
    std::vector<double> ref(size_t(6 * rows));
    reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
    std::vector<float> y(size_t(6 * rows));
    run_rows(m, a, y.data(), rows, 0, rows, Path::avx512vnni, Genome::parse("xkb=4"));
    for (int t = 0; t < 6; ++t)
      for (int64_t r = 0; r < rows; ++r)
        EXPECT_LE(std::fabs(double(y[size_t(t * rows + r)]) - ref[size_t(t * rows + r)]),
                  error_bound(ggml_type(f), stored.data(), cols, r, a, t))
            << format_name(f) << " t=" << t << " r=" << r;
  }
}

// The AMX int8 tiles (tiles.h) of the legacy formats against the fp64 reference within the family's bound: the
// software tiles (the SDM's definitions) wherever AVX-512 runs the unpacking and the fold, the hardware where AMX
// exists; edge shapes (one block, rows and rows of x not whole tiles, a row range split off a tile's middle as
// threads split it), the padding between ldy and rows untouched.
TEST(KqGemv, Int8TilesAgreeWithTheReference) {
  if (!tiles::emulation_available()) GTEST_SKIP() << "the int8 tiles' unpacking and fold need AVX-512 F/BW/VL/DQ";
  uint32_t seed = 700;
  for (Format f : {Format::q8_0, Format::q4_0, Format::q4_1})
    for (int64_t rows : {int64_t(1), int64_t(16), int64_t(37)})
      for (int64_t cols : {int64_t(32), int64_t(160), int64_t(640)})
        for (int n : {1, 3, 5, 8, 16, 17, 40}) {
          SCOPED_TRACE(testing::Message() << format_name(f) << " " << rows << "x" << cols << " n=" << n);
          const auto stored = random_stored(f, rows, cols, seed);
          const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
          const auto x = random_x(n, cols, seed + 1, 1.0f);
          ++seed;
          Activations a;
          quantize_activations(f, x.data(), n, cols, a);
          tiles::Packed p;
          tiles::pack(a, p);
          std::vector<double> ref(size_t(n * rows));
          reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
          for (bool emulated : {true, false}) {
            if (!emulated && !tiles::available()) continue;
            SCOPED_TRACE(emulated ? "software tiles" : "AMX");
            const int64_t ldy = rows + 5, mid = rows / 3;
            std::vector<float> y(size_t(n * ldy), -1e30f);
            tiles::run_rows(m, p, y.data(), ldy, 0, mid, emulated);
            tiles::run_rows(m, p, y.data(), ldy, mid, rows, emulated);
            int bad = 0;
            for (int t = 0; t < n; ++t) {
              for (int64_t r = 0; r < rows; ++r) {
                const double b = error_bound(ggml_type(f), stored.data(), cols, r, a, t);
                const double e = std::fabs(double(y[size_t(t * ldy + r)]) - ref[size_t(t * rows + r)]);
                if (!(e <= b) && bad++ < 3)
                  ADD_FAILURE() << "t=" << t << " r=" << r << " y=" << y[size_t(t * ldy + r)]
                                << " ref=" << ref[size_t(t * rows + r)] << " err=" << e << " bound=" << b;
              }
              for (int64_t r = rows; r < ldy; ++r) ASSERT_EQ(y[size_t(t * ldy + r)], -1e30f);
            }
          }
        }
  // A wrong weight is caught: one code of row 2 changed in the records.
  const int64_t rows = 20, cols = 256;
  const auto stored = random_stored(Format::q4_0, rows, cols, 9);
  Matrix m = make_matrix(ggml_type(Format::q4_0), rows, cols, stored.data(), stored.size());
  m.data[size_t(2 * m.row_bytes() + layout::codes_offset(Format::q4_0) + 5)] ^= 0x0F;
  const auto x = random_x(3, cols, 10, 1.0f);
  Activations a;
  quantize_activations(Format::q4_0, x.data(), 3, cols, a);
  tiles::Packed p;
  tiles::pack(a, p);
  std::vector<double> ref(size_t(3 * rows));
  reference(ggml_type(Format::q4_0), stored.data(), rows, cols, a, ref.data());
  std::vector<float> y(size_t(3 * rows));
  tiles::run_rows(m, p, y.data(), rows, 0, rows, true);
  double worst = 0;
  for (int t = 0; t < 3; ++t)
    worst = std::max(worst, std::fabs(double(y[size_t(t * rows + 2)]) - ref[size_t(t * rows + 2)]) /
                                error_bound(ggml_type(Format::q4_0), stored.data(), cols, 2, a, t));
  EXPECT_GT(worst, 1.0);
  EXPECT_THROW(tiles::run_rows(m, p, y.data(), rows, 0, rows + 1, true), Error);
  Activations k;
  const auto xk = random_x(1, 256, 11, 1.0f);
  quantize_activations(Format::q4_k, xk.data(), 1, 256, k);
  EXPECT_THROW(tiles::pack(k, p), Error);
}

// All-zero activation rows and blocks: scale 0, codes 0, the product exactly 0 where the whole row is zero.
TEST(KqGemv, ZeroActivationBlocks) {
  for (Format f : kFormats) {
    const int64_t rows = 5, cols = is_k_quant(f) ? 768 : 160;
    const auto stored = random_stored(f, rows, cols, 61);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    auto x = random_x(3, cols, 62, 1.0f);
    for (int64_t k = 0; k < cols; ++k) x[size_t(k)] = 0.0f;                        // row 0: all zero
    for (int64_t k = 0; k < (is_k_quant(f) ? 256 : 32); ++k) x[size_t(cols + k)] = 0.0f;  // row 1: first block zero
    Activations a;
    quantize_activations(f, x.data(), 3, cols, a);
    std::vector<double> ref(size_t(3 * rows));
    reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
    for (Path p : available_paths()) {
      std::vector<float> y(size_t(3 * rows), 1.0f);
      run_rows(m, a, y.data(), rows, 0, rows, p);
      for (int64_t r = 0; r < rows; ++r) {
        EXPECT_EQ(y[size_t(r)], 0.0f) << format_name(f) << " " << path_name(p);
        for (int t = 1; t < 3; ++t)
          EXPECT_LE(std::fabs(y[size_t(t * rows + r)] - ref[size_t(t * rows + r)]),
                    error_bound(ggml_type(f), stored.data(), cols, r, a, t));
      }
    }
  }
}

TEST(KqGemv, TinyAndLargeScales) {
  uint32_t seed = 300;
  for (Format f : kFormats) {
    check_case({f, 17, is_k_quant(f) ? 512 : 96, 2, 0, 2, 1e-3f}, seed++);    // subnormal / tiny halves
    check_case({f, 17, is_k_quant(f) ? 512 : 96, 2, 24, 29, 1e3f}, seed++);   // halves up to ~6e4
    check_case({f, 17, is_k_quant(f) ? 512 : 96, 2, 1, 29, 1.0f}, seed++);    // mixed within one row
  }
}

// ggml's vec_dot_*_q8_* formula: the exact integer dot per (sub-)block, then the block's scale products in fp32.
double ggml_formula(Format f, const uint8_t* row, int64_t cols, const Activations& a, int t) {
  std::vector<double> xd(static_cast<size_t>(cols));
  dequantize_activations(a, t, xd.data());
  const int bc = is_k_quant(f) ? 256 : 32;
  const auto info = quant::ggml_type_info(ggml_type(f));
  float sumf = 0;
  auto h = [](const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return quant::half_to_float(v);
  };
  for (int64_t b = 0; b < cols / bc; ++b) {
    const uint8_t* blk = row + b * info->block_bytes;
    // the activation block's scale and integer codes (exact: q = x / scale)
    double amax_scale = 0;
    for (int i = 0; i < bc; ++i) amax_scale = std::max(amax_scale, std::fabs(xd[size_t(b * bc + i)]));
    float dy = 0;
    std::vector<int> q(static_cast<size_t>(bc));
    {
      // recover the scale: the largest |q| is 127 unless the block is zero
      dy = float(amax_scale / 127.0);
      for (int i = 0; i < bc; ++i) q[size_t(i)] = dy > 0 ? int(std::lround(xd[size_t(b * bc + i)] / double(dy))) : 0;
    }
    if (is_k_quant(f)) {
      int codes[256], sc[16], mn[8] = {};
      int nsub = f == Format::q6_k ? 16 : 8;
      if (f == Format::q6_k) {
        for (int e = 0; e < 256; ++e) {
          const int hh = e / 128, l = e % 128, quarter = l / 32, i = l % 32;
          const uint8_t ql = blk[64 * hh + (quarter % 2) * 32 + i];
          codes[e] = ((quarter < 2 ? ql & 0xF : ql >> 4) | (((blk[128 + 32 * hh + i] >> (2 * quarter)) & 3) << 4)) - 32;
        }
        for (int j = 0; j < 16; ++j) sc[j] = int8_t(blk[192 + j]);
      } else {
        const int qs = f == Format::q4_k ? 16 : 48;
        for (int j = 0; j < 8; ++j) {
          const uint8_t* s = blk + 4;
          if (j < 4) {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
          } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
          }
          for (int i = 0; i < 32; ++i) {
            const uint8_t byte = blk[qs + 32 * (j / 2) + i];
            codes[32 * j + i] = (j % 2 ? byte >> 4 : byte & 0xF) + (f == Format::q5_k ? ((blk[16 + i] >> j) & 1) << 4 : 0);
          }
        }
      }
      const int sub = 256 / nsub;
      int sumi = 0, summ = 0;
      for (int j = 0; j < nsub; ++j) {
        int s = 0, bs = 0;
        for (int i = 0; i < sub; ++i) {
          s += codes[j * sub + i] * q[size_t(j * sub + i)];
          bs += q[size_t(j * sub + i)];
        }
        sumi += sc[j] * s;
        summ += mn[j % 8] * (f == Format::q6_k ? 0 : bs);
      }
      if (f == Format::q6_k) {
        sumf += h(blk + 208) * dy * float(sumi);
      } else {
        const float d = h(blk) * dy, dmin = h(blk + 2) * dy;
        sumf += d * float(sumi) - dmin * float(summ);
      }
    } else {
      int sumi = 0, sumq = 0;
      for (int i = 0; i < 32; ++i) {
        int c;
        if (f == Format::q8_0) c = int8_t(blk[2 + i]);
        else {
          const uint8_t byte = blk[(f == Format::q4_1 ? 4 : 2) + i % 16];
          c = (i < 16 ? byte & 0xF : byte >> 4) - (f == Format::q4_0 ? 8 : 0);
        }
        sumi += c * q[size_t(i)];
        sumq += q[size_t(i)];
      }
      sumf += float(sumi) * (h(blk) * dy);
      if (f == Format::q4_1) sumf += h(blk + 2) * (dy * float(sumq));
    }
  }
  return sumf;
}

TEST(KqGemv, AgreesWithGgmlFormula) {
  uint32_t seed = 500;
  for (Format f : kFormats) {
    SCOPED_TRACE(format_name(f));
    const int64_t rows = 9, cols = is_k_quant(f) ? 1024 : 256;
    const int n = 3;
    const auto stored = random_stored(f, rows, cols, seed++);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    const auto x = random_x(n, cols, seed++, 1.0f);
    Activations a;
    quantize_activations(f, x.data(), n, cols, a);
    const size_t row_bytes = stored.size() / size_t(rows);
    for (Path p : available_paths()) {
      std::vector<float> y(size_t(n * rows));
      run_rows(m, a, y.data(), rows, 0, rows, p);
      for (int t = 0; t < n; ++t)
        for (int64_t r = 0; r < rows; ++r) {
          const double g = ggml_formula(f, stored.data() + size_t(r) * row_bytes, cols, a, t);
          EXPECT_LE(std::fabs(double(y[size_t(t * rows + r)]) - g),
                    error_bound(ggml_type(f), stored.data(), cols, r, a, t))
              << path_name(p) << " t=" << t << " r=" << r;
        }
    }
  }
}

TEST(KqGemv, PlantedWrongWeightExceedsBound) {
  for (Format f : kFormats) {
    const int64_t rows = 4, cols = is_k_quant(f) ? 512 : 128;
    auto stored = random_stored(f, rows, cols, 900);
    const auto x = random_x(1, cols, 901, 1.0f);
    Activations a;
    quantize_activations(f, x.data(), 1, cols, a);
    std::vector<double> ref(static_cast<size_t>(rows));
    reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
    // flip one code bit of row 2 in a block whose scale is nonzero
    const int off = f == Format::q6_k ? 0 : f == Format::q8_0 ? 2 : f == Format::q4_0 ? 2 : f == Format::q4_1 ? 4
                    : f == Format::q4_k ? 16 : 48;
    auto bad = stored;
    bad[2 * stored.size() / rows + size_t(off)] ^= 0x04;
    const Matrix m = make_matrix(ggml_type(f), rows, cols, bad.data(), bad.size());
    for (Path p : available_paths()) {
      std::vector<float> y(static_cast<size_t>(rows));
      run_rows(m, a, y.data(), rows, 0, rows, p);
      const double b = error_bound(ggml_type(f), stored.data(), cols, 2, a, 0);
      EXPECT_GT(std::fabs(double(y[2]) - ref[2]), 10 * b) << format_name(f) << " " << path_name(p);
    }
  }
}

// The load-time rearrangement loses nothing: every row widens to exactly what ggml's dequantizer gives for the file.
TEST(KqGemv, RowsWidenBitExact) {
  for (Format f : kFormats) {
    const int64_t rows = 3, cols = is_k_quant(f) ? 768 : 224;  // 224: seven 32-blocks, a padded legacy unit
    const auto stored = random_stored(f, rows, cols, 77, 1, 29);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    std::vector<float> a(static_cast<size_t>(cols)), b(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(m, r, a.data());
      quant::ggml_dequantize(ggml_type(f), stored.data() + size_t(r) * stored.size() / rows, b.data(), cols);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << format_name(f) << " row " << r;
    }
  }
}

// Records in a caller's memory: the same bytes and products as owned records; and the stored bits recovered from the
// records through record_bits() (what the GPU's prefill undoes), a padded legacy unit included.
TEST(KqGemv, RecordsInPlaceAndTheirBitMap) {
  for (Format f : kFormats) {
    SCOPED_TRACE(format_name(f));
    const int64_t rows = 3, cols = is_k_quant(f) ? 768 : 224;  // 224: seven 32-blocks, a padded legacy unit
    const auto stored = random_stored(f, rows, cols, 78, 1, 29);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    const size_t bytes = record_bytes_of(ggml_type(f), rows, cols);
    ASSERT_EQ(bytes, m.bytes());
    auto arena = std::make_shared<std::vector<uint8_t>>(bytes + 64 + 7, 0xAB);
    const Matrix e = make_matrix_in(ggml_type(f), rows, cols, stored.data(), stored.size(), arena->data() + 7, arena);
    EXPECT_TRUE(e.data.empty());
    ASSERT_EQ(0, std::memcmp(e.records(), m.records(), bytes));
    std::vector<float> a(static_cast<size_t>(cols)), b(static_cast<size_t>(cols));
    dequantize_row(e, 2, a.data());
    dequantize_row(m, 2, b.data());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));

    const RecordBits rb = record_bits(f);
    ASSERT_EQ(rb.record_bytes, m.record_bytes);
    const int bb = layout::stored_block_bytes(f), per_unit = rb.stored_bytes / bb;
    const int64_t blocks = cols / layout::stored_block_cols(f), row_stored = blocks * bb;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t u = 0; u < m.units; ++u) {
        const uint8_t* rec = m.records() + r * m.row_bytes() + u * m.record_bytes;
        const int nb = int(std::min<int64_t>(per_unit, blocks - u * per_unit));
        std::vector<uint8_t> got(size_t(rb.stored_bytes), 0);
        for (int i = 0; i < rb.stored_bytes * 8; ++i) {
          const int k = rb.source[size_t(i)];
          const int v = ((rec[k / 8] >> (k % 8)) & 1) ^ rb.invert[size_t(i)];
          got[size_t(i / 8)] = uint8_t(got[size_t(i / 8)] | (v << (i % 8)));
        }
        ASSERT_EQ(0, std::memcmp(got.data(), stored.data() + r * row_stored + u * per_unit * bb, size_t(nb * bb)))
            << "row " << r << " unit " << u;
      }
    // stored_row(): the same recovery, a whole row at a time (what the hybrid mode's GPU uploads).
    ASSERT_EQ(stored_row_bytes(e), size_t(row_stored));
    std::vector<uint8_t> row(static_cast<size_t>(row_stored) + 8, 0xCD);
    for (int64_t r = 0; r < rows; ++r) {
      stored_row(e, r, row.data());
      ASSERT_EQ(0, std::memcmp(row.data(), stored.data() + r * row_stored, size_t(row_stored))) << "row " << r;
      EXPECT_EQ(row[size_t(row_stored)], 0xCD) << "stored_row wrote past the row";
    }
    EXPECT_THROW(stored_row(e, rows, row.data()), genesis::Error);
  }
  EXPECT_THROW(record_bytes_of(ggml_type(Format::q4_k), 2, 100), Error);
}

// Through the Linear seam: few rows on the int8 kernels, many rows widened + sgemm; both within the bound of their
// own semantics (int8 activations / fp32 activations, or bf16 operands on AMX tiles where the CPU has them: each
// operand rounded to 2^-9 relative, so a product to 2^-8 of its magnitude), Q4_K's activations accepted by a Q5_K
// matrix.
// The AMX widening's straight paths (Q4_K and Q6_K records to bf16) give the bits of the fp32 row rounded to nearest
// even, on rows with wide exponent ranges; the other formats say they have no such path.
TEST(KqGemv, RowsToBf16AsTheFp32RowRounded) {
  const bool fast = cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512bf16) &&
                    cpu::mayiuse(cpu::Isa::avx512vl);
  for (Format fmt : {Format::q4_k, Format::q6_k})
  for (const int64_t cols : {int64_t(256), int64_t(768), int64_t(2048)}) {
    SCOPED_TRACE(format_name(fmt));
    const int64_t rows = 9;
    const auto stored = random_stored(fmt, rows, cols, uint32_t(61 + cols), 2, 20);
    const Matrix m = make_matrix(ggml_type(fmt), rows, cols, stored.data(), stored.size());
    std::vector<float> f(static_cast<size_t>(cols));
    std::vector<uint16_t> b(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_EQ(dequantize_row_bf16(m, r, b.data()), fast);
      if (!fast) continue;
      dequantize_row(m, r, f.data());
      for (int64_t k = 0; k < cols; ++k)
        ASSERT_EQ(b[size_t(k)], quant::f32_to_bf16(f[size_t(k)])) << "row " << r << " column " << k;
    }
    EXPECT_THROW(dequantize_row_bf16(m, rows, b.data()), Error);
  }
  for (Format f : kFormats) {
    if (f == Format::q4_k || f == Format::q6_k) continue;
    const int64_t cols = is_k_quant(f) ? 256 : 128;
    const auto stored = random_stored(f, 2, cols, 67);
    const Matrix m = make_matrix(ggml_type(f), 2, cols, stored.data(), stored.size());
    std::vector<uint16_t> b(static_cast<size_t>(cols));
    EXPECT_FALSE(dequantize_row_bf16(m, 0, b.data())) << format_name(f);
  }
}

TEST(KqGemv, LinearSeam) {
  for (Format f : kFormats) {
    SCOPED_TRACE(format_name(f));
    const int64_t rows = 40, cols = is_k_quant(f) ? 512 : 192;
    const auto stored = random_stored(f, rows, cols, 55);
    auto lin = make_linear(std::make_shared<const Matrix>(make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size())));
    EXPECT_EQ(lin->format(), format_name(f));
    EXPECT_EQ(lin->rows(), rows);
    for (int n : {1, 5, 16, 17, kMaxRows, kMaxRows + 1}) {
      const auto x = random_x(n, cols, 56, 1.0f);
      auto a = lin->new_activations();
      lin->prepare(x.data(), n, *a);
      std::vector<float> y(size_t(n * rows));
      lin->run_rows(*a, y.data(), 0, 7);
      lin->run_rows(*a, y.data(), 7, rows);
      const bool tiles = lin->tile_rows() > 0 && n >= lin->tile_rows();
      if (n <= kMaxRows && !tiles) {
        Activations q;
        quantize_activations(f, x.data(), n, cols, q);
        std::vector<double> ref(size_t(n * rows));
        reference(ggml_type(f), stored.data(), rows, cols, q, ref.data());
        for (int t = 0; t < n; ++t)
          for (int64_t r = 0; r < rows; ++r)
            EXPECT_LE(std::fabs(y[size_t(t * rows + r)] - ref[size_t(t * rows + r)]),
                      error_bound(ggml_type(f), stored.data(), cols, r, q, t));
      } else {
        std::vector<float> w(static_cast<size_t>(cols));
        for (int64_t r = 0; r < rows; ++r) {
          quant::ggml_dequantize(ggml_type(f), stored.data() + size_t(r) * stored.size() / rows, w.data(), cols);
          for (int t = 0; t < n; ++t) {
            double s = 0, mag = 0;
            for (int64_t k = 0; k < cols; ++k) {
              s += double(w[size_t(k)]) * x[size_t(t * cols + k)];
              mag += std::fabs(double(w[size_t(k)]) * x[size_t(t * cols + k)]);
            }
            EXPECT_NEAR(y[size_t(t * rows + r)], s, (tiles ? 4.0e-3 : 1e-5) * mag + 1e-30);
          }
        }
      }
    }
  }
  // Q4_K and Q5_K share an activation layout; Q6_K's differs.
  const auto s4 = random_stored(Format::q4_k, 2, 256, 1), s5 = random_stored(Format::q5_k, 2, 256, 2),
             s6 = random_stored(Format::q6_k, 2, 256, 3);
  auto l4 = make_linear(std::make_shared<const Matrix>(make_matrix(ggml_type(Format::q4_k), 2, 256, s4.data(), s4.size())));
  auto l5 = make_linear(std::make_shared<const Matrix>(make_matrix(ggml_type(Format::q5_k), 2, 256, s5.data(), s5.size())));
  auto l6 = make_linear(std::make_shared<const Matrix>(make_matrix(ggml_type(Format::q6_k), 2, 256, s6.data(), s6.size())));
  EXPECT_EQ(l4->activation_kind(), l5->activation_kind());
  EXPECT_NE(l4->activation_kind(), l6->activation_kind());
  const auto x = random_x(1, 256, 9, 1.0f);
  auto a4 = l4->new_activations(), a5 = l5->new_activations();
  l4->prepare(x.data(), 1, *a4);
  l5->prepare(x.data(), 1, *a5);
  std::vector<float> y1(2), y2(2);
  l5->run_rows(*a4, y1.data(), 0, 2);
  l5->run_rows(*a5, y2.data(), 0, 2);
  EXPECT_EQ(y1, y2);
  EXPECT_THROW(l6->run_rows(*a4, y1.data(), 0, 2), Error);
}

TEST(KqGemv, GenomeTextRangesAndResults) {
  const Genome b = Genome::baseline();
  EXPECT_NO_THROW(b.validate());
  EXPECT_EQ(Genome::parse(b.serialize()), b);
  Genome g;
  g.pf_dist = 0;
  g.pf_kind = PrefetchKind::nta;
  g.loop_align = 0;
  g.row_chunk = 7;
  g.x_budget_kb = 1;
  g.rows_per_pass = 3;
  EXPECT_EQ(Genome::parse(g.serialize()), g);
  EXPECT_NE(g.code_key(), b.code_key());
  EXPECT_THROW(Genome::parse("pf=100"), Error);   // not a multiple of 64
  EXPECT_THROW(Genome::parse("rows=0"), Error);
  EXPECT_THROW(Genome::parse("align=8"), Error);
  EXPECT_THROW(Genome::parse("pfk=t3"), Error);
  EXPECT_THROW(Genome::parse("pass=17"), Error);
  EXPECT_THROW(Genome::parse("speed=11"), Error);
  EXPECT_THROW(Genome::parse("pf"), Error);
  EXPECT_THROW(Genome::parse("pfm=65"), Error);
  EXPECT_THROW(Genome::parse("pfp=65"), Error);
  EXPECT_THROW(Genome::parse("pfp=65600"), Error);
  EXPECT_EQ(Genome::parse("pf=1024 pfm=8192").pf_pair, b.pf_pair);  // text without pfp (older knowledge bases)
  EXPECT_NE(Genome::parse("pfp=512").code_key(), b.code_key());
  // pf for one-row passes, pfm for passes of more; text without pfm keeps its baseline (older knowledge bases).
  Genome m = Genome::parse("pf=1024 pfm=8192");
  EXPECT_EQ(m.pf_for(1), 1024);
  EXPECT_EQ(m.pf_for(4), 8192);
  EXPECT_EQ(Genome::parse("pf=1024").pf_multi, b.pf_multi);
  EXPECT_NE(m.code_key(), Genome::parse("pf=1024").code_key());
  g.pf_multi = 512;
  g.pf_pair = 1024;
  // Another schedule computes the same products: rows in chunks of 7, one unit per column chunk, no prefetch in
  // one-row passes, 512 bytes ahead in passes of more, the next row pair 1024 bytes ahead in the two-row kernels.
  for (Format f : kFormats) {
    const int64_t rows = 23, cols = is_k_quant(f) ? 768 : 224;
    const auto stored = random_stored(f, rows, cols, 31);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    const auto x = random_x(5, cols, 32, 1.0f);
    Activations a;
    quantize_activations(f, x.data(), 5, cols, a);
    std::vector<float> y0(size_t(5 * rows)), y1(size_t(5 * rows));
    run_rows(m, a, y0.data(), rows, 0, rows, best_path());
    run_rows(m, a, y1.data(), rows, 0, rows, best_path(), g);
    std::vector<double> ref(size_t(5 * rows));
    reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
    for (int t = 0; t < 5; ++t)
      for (int64_t r = 0; r < rows; ++r) {
        const double bound = error_bound(ggml_type(f), stored.data(), cols, r, a, t);
        EXPECT_LE(std::fabs(y1[size_t(t * rows + r)] - ref[size_t(t * rows + r)]), bound) << format_name(f);
        EXPECT_LE(std::fabs(y1[size_t(t * rows + r)] - y0[size_t(t * rows + r)]), 2 * bound) << format_name(f);
      }
  }
}

// The largest codes against the largest activations of either sign: every code byte (and high bit) set, the K-quants'
// sub-block scales at their largest, x all +1 or all -1 (so every block quantizes to +-127): the kernels that sum
// vpmaddubsw pairs of several code vectors as int16 words (the avx2 path's Q4_K unit: eight vectors, 30720 at most)
// must not wrap. Every path against the reference, 1 to 4 activation rows.
TEST(KqGemv, LargestCodesAndActivationsDoNotWrap) {
  const auto avail = available_paths();
  for (Format f : kFormats) {
    SCOPED_TRACE(format_name(f));
    const int64_t rows = 12, cols = 512;
    auto stored = random_stored(f, rows, cols, 5, 8, 10);
    const auto info = quant::ggml_type_info(ggml_type(f));
    for (int64_t i = 0; i < rows * cols / info->block; ++i) {
      uint8_t* blk = stored.data() + i * info->block_bytes;
      switch (f) {
        case Format::q4_k: std::memset(blk + 4, 0xFF, 12 + 128); break;  // scales and mins 63, codes 15
        case Format::q5_k: std::memset(blk + 4, 0xFF, 12 + 32 + 128); break;  // codes 31
        case Format::q6_k:
          std::memset(blk, 0xFF, 128 + 64);   // codes 63
          std::memset(blk + 192, 0x7F, 16);  // scales 127
          break;
        case Format::q8_0: std::memset(blk + 2, 0x7F, 32); break;
        case Format::q4_0: std::memset(blk + 2, 0xFF, 16); break;
        case Format::q4_1: std::memset(blk + 4, 0xFF, 16); break;
      }
    }
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    for (int n = 1; n <= 4; ++n) {
      std::vector<float> x(size_t(n * cols));
      for (int t = 0; t < n; ++t)
        for (int64_t k = 0; k < cols; ++k) x[size_t(t * cols + k)] = t % 2 ? -1.0f : 1.0f;
      Activations a;
      quantize_activations(f, x.data(), n, cols, a);
      std::vector<double> ref(size_t(n * rows));
      reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
      for (Path path : avail) {
        std::vector<float> y(size_t(n * rows));
        run_rows(m, a, y.data(), rows, 0, rows, path);
        for (int t = 0; t < n; ++t)
          for (int64_t r = 0; r < rows; ++r) {
            const double bound = error_bound(ggml_type(f), stored.data(), cols, r, a, t);
            EXPECT_LE(std::fabs(y[size_t(t * rows + r)] - ref[size_t(t * rows + r)]), bound)
                << path_name(path) << " n=" << n << " t=" << t << " r=" << r;
          }
      }
    }
  }
}

// A genome's order of the unit loop's body goes through jit::is_legal_order: a legal reorder (independent neighbours
// swapped, every swap at once) computes the same bits; swapping a dependent pair is an error naming the edge.
TEST(KqGemv, GenomeOrderCheckedByDefUse) {
  const auto avail = available_paths();
  for (Path path : {Path::avx512vnni, Path::avx2vnni, Path::avx2})
  for (Format f : kFormats) {
    SCOPED_TRACE(std::string(format_name(f)) + " " + path_name(path));
    const int n = 2;
    const Conf conf = make_conf(f, n, Genome::baseline(), path);
    const auto body = canonical_body(conf);
    const auto g = jit::def_use(body);
    auto depends = [&](size_t a, size_t b) {
      for (int p : g.preds[b])
        if (size_t(p) == a) return true;
      return false;
    };
    Genome legal, illegal;
    for (size_t i = 0; i < body.size(); ++i) legal.order.push_back(uint16_t(i));
    illegal.order = legal.order;
    int swaps = 0;
    bool bad_set = false;
    for (size_t i = 0; i + 1 < body.size(); ++i) {
      if (!depends(i, i + 1) && legal.order[i] == i && legal.order[i + 1] == i + 1) {
        std::swap(legal.order[i], legal.order[i + 1]);
        ++swaps;
      } else if (depends(i, i + 1) && !bad_set) {
        std::swap(illegal.order[i], illegal.order[i + 1]);
        bad_set = true;
      }
    }
    ASSERT_GT(swaps, 3);
    ASSERT_TRUE(bad_set);
    EXPECT_EQ(Genome::parse(legal.serialize()), legal);
    const int64_t rows = 9, cols = is_k_quant(f) ? 512 : 256;
    const auto stored = random_stored(f, rows, cols, 41);
    const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
    const auto x = random_x(n, cols, 42, 1.0f);
    Activations a;
    quantize_activations(f, x.data(), n, cols, a);
    std::vector<float> y0(size_t(n * rows)), y1(size_t(n * rows));
    run_rows(m, a, y0.data(), rows, 0, rows, Path::scalar);  // any path: the JIT one needs the CPU
    if (std::find(avail.begin(), avail.end(), path) == avail.end()) continue;
    run_rows(m, a, y0.data(), rows, 0, rows, path);
    run_rows(m, a, y1.data(), rows, 0, rows, path, legal);
    EXPECT_EQ(y0, y1);
    EXPECT_THROW(run_rows(m, a, y1.data(), rows, 0, rows, path, illegal), Error);
    Genome short_order;
    short_order.order = {0, 1, 2};
    EXPECT_THROW(run_rows(m, a, y1.data(), rows, 0, rows, path, short_order), Error);
  }
}

// Random (type, rows, cols, byte count) triples, most of them wrong: make_matrix either builds a matrix that then
// multiplies (and widens) without fault, or throws genesis::Error; nothing else.
TEST(KqGemv, RandomShapesAndSizesFailCleanly) {
  std::mt19937 g(7);
  const uint32_t types[] = {0, 1, 2, 3, 6, 8, 10, 12, 13, 14, 15, 30, 99};
  std::vector<uint8_t> buf(1 << 16);
  for (auto& v : buf) v = uint8_t(g());
  int built = 0, errors = 0;
  for (int i = 0; i < 400; ++i) {
    const uint32_t type = types[g() % std::size(types)];
    int64_t rows = int64_t(g() % 5) - 1, cols = int64_t(g() % 600) - 50;
    const auto info = quant::ggml_type_info(type);
    size_t nbytes = g() % buf.size();
    if (info && g() % 2) {  // often a valid shape and the right size
      rows = 1 + int64_t(g() % 3);
      cols = info->block * (1 + int64_t(g() % 3));
      nbytes = size_t(rows * (cols / info->block) * info->block_bytes) - (g() % 8 == 0 ? 1 : 0);
    }
    try {
      const Matrix m = make_matrix(type, rows, cols, buf.data(), nbytes);
      ++built;
      std::vector<float> x(size_t(2 * cols), 0.5f), y(size_t(2 * rows)), w(static_cast<size_t>(cols));
      Activations a;
      quantize_activations(m.format, x.data(), 2, cols, a);
      for (Path p : available_paths()) run_rows(m, a, y.data(), rows, 0, rows, p);
      dequantize_row(m, rows - 1, w.data());
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(built, 10);
  EXPECT_GT(errors, 100);
}

// Every activation quantizer this CPU runs gives the scalar one's bits: random values, exact ties at .5 (round to
// even), an all-zero block, one huge value; and each refuses a non-finite value.
TEST(KqGemv, ActivationQuantizersAgreeBitForBit) {
  const auto variants = layout::quantize_block_variants();
  std::mt19937 gen(11);
  std::normal_distribution<float> nd;
  for (int c = 0; c < 40; ++c) {
    const int len = c % 2 ? 256 : 32;
    std::vector<float> x(static_cast<size_t>(len));
    for (auto& v : x) v = nd(gen) * (c % 5 == 0 ? 1e-30f : c % 5 == 1 ? 3e4f : 1.0f);
    if (c == 2) std::fill(x.begin(), x.end(), 0.0f);
    if (c == 3)  // amax 127: x * 1 lands on every .5 tie
      for (int i = 0; i < len; ++i) x[size_t(i)] = i == 0 ? 127.0f : float(i % 64) - 31.5f;
    std::vector<int8_t> q0(static_cast<size_t>(len));
    std::vector<int32_t> s0(static_cast<size_t>(len / 16));
    const float d0 = variants[0].second(x.data(), len, q0.data(), s0.data());
    for (const auto& [name, fn] : variants) {
      std::vector<int8_t> q(static_cast<size_t>(len));
      std::vector<int32_t> s(static_cast<size_t>(len / 16));
      const float d = fn(x.data(), len, q.data(), s.data());
      EXPECT_EQ(std::memcmp(&d, &d0, 4), 0) << name << " case " << c;
      EXPECT_EQ(q, q0) << name << " case " << c;
      EXPECT_EQ(s, s0) << name << " case " << c;
      const float keep = x[size_t(len / 2)];
      x[size_t(len / 2)] = std::nanf("");
      EXPECT_THROW(fn(x.data(), len, q.data(), s.data()), Error) << name;
      x[size_t(len / 2)] = keep;
    }
  }
}

// Every format's unit quantizers (the AVX-512 one, where it runs) write the generic one's bytes: codes in the lane
// order, the legacy offset corrections, scales and Q4_1's scaled sums, the K-quants' sums, seeds and scale; random
// values, .5 ties, a zero block, tiny and huge blocks; each refuses a non-finite value.
TEST(KqGemv, UnitQuantizersAgreeByteForByte) {
  const auto variants = layout::quantize_unit_variants();
  std::mt19937 gen(12);
  std::normal_distribution<float> nd;
  for (Format f : {Format::q8_0, Format::q4_0, Format::q4_1, Format::q4_k, Format::q5_k, Format::q6_k})
    for (int c = 0; c < 24; ++c) {
      std::vector<float> x(256);
      for (size_t i = 0; i < x.size(); ++i)
        x[i] = nd(gen) * (c % 5 == 0 ? 1e-30f : c % 5 == 1 ? 3e4f : (i / 32) % 2 ? 0.01f : 1.0f);
      if (c == 2) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // one block all zero
      if (c == 3)
        for (int i = 0; i < 256; ++i) x[size_t(i)] = i % 32 == 0 ? 127.0f : float(i % 64) - 31.5f;  // ties
      std::vector<uint8_t> r0(kTokenRecord, 0xAB);
      variants[0].second(f, x.data(), r0.data());
      for (const auto& [name, fn] : variants) {
        std::vector<uint8_t> r(kTokenRecord, 0xAB);
        fn(f, x.data(), r.data());
        const auto diff = std::mismatch(r.begin(), r.end(), r0.begin());
        EXPECT_TRUE(diff.first == r.end()) << name << " " << format_name(f) << " case " << c << ": byte "
                                           << (diff.first - r.begin()) << " of the record differs";
        const float keep = x[77];
        x[77] = std::nanf("");
        EXPECT_THROW(fn(f, x.data(), r.data()), Error) << name;
        x[77] = keep;
      }
    }
}

// The K-quants' two-row kernels (avx512vnni, 2..8 activation rows) compute each row with the one-row kernel's operations in
// its order: the same bits as rows run one at a time (a one-row range never takes the pair kernel) where the lanes
// are summed the same way (sum_lanes' transposing tree for any number of rows: 70 rows are also checked against the
// fp64 reference); odd row counts end on the one-row kernel;
// several column chunks (xkb=1) start and then add to the lanes.
TEST(KqGemv, TwoRowKernelsAgreeBitForBitWithOneRowKernels) {
  EXPECT_TRUE(has_pair_kernel(Path::avx512vnni, Format::q4_k, 8));
  EXPECT_FALSE(has_pair_kernel(Path::avx512vnni, Format::q4_k, 9));
  EXPECT_TRUE(has_pair_kernel(Path::avx512vnni, Format::q6_k, 8));
  EXPECT_TRUE(has_pair_kernel(Path::avx512vnni, Format::q5_k, 4));
  EXPECT_FALSE(has_pair_kernel(Path::avx2, Format::q4_k, 4));
  EXPECT_THROW(make_conf_pair(Format::q4_k, 9), Error);
  EXPECT_THROW(make_conf_pair(Format::q8_0, 2), Error);
  for (Format f : {Format::q4_k, Format::q5_k, Format::q6_k})
    for (int n = 1; n <= 8; ++n) {
      const Conf c = make_conf_pair(f, n);
      EXPECT_NE(c.id.find("_r2_"), std::string::npos);
      EXPECT_NO_THROW(build(c));
    }
  bool avx512 = false;
  for (Path p : available_paths()) avx512 |= p == Path::avx512vnni;
  if (!avx512) GTEST_SKIP() << "no avx512vnni path on this CPU";
  Genome chunks;
  chunks.x_budget_kb = 1;
  chunks.row_chunk = 6;
  uint32_t seed = 700;
  for (Format f : {Format::q4_k, Format::q5_k, Format::q6_k})
  for (const Genome& g : {Genome::baseline(), chunks})
    for (int64_t rows : {int64_t(2), int64_t(7), int64_t(15), int64_t(70)})
      for (int n : {2, 3, 8, 13}) {
        SCOPED_TRACE(testing::Message() << format_name(f) << " " << rows << " rows, n=" << n << ", genome "
                                        << g.serialize());
        const int64_t cols = 768;
        const auto stored = random_stored(f, rows, cols, seed++);
        const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
        const auto x = random_x(n, cols, seed++, 1.0f);
        Activations a;
        quantize_activations(f, x.data(), n, cols, a);
        std::vector<float> y2(size_t(n * rows)), y1(size_t(n * rows));
        run_rows(m, a, y2.data(), rows, 0, rows, Path::avx512vnni, g);
        for (int64_t r = 0; r < rows; ++r) run_rows(m, a, y1.data(), rows, r, r + 1, Path::avx512vnni, g);
        for (size_t i = 0; i < y1.size(); ++i) ASSERT_EQ(y2[i], y1[i]) << "output " << i;
        if (rows < 16) continue;
        std::vector<double> ref(size_t(n * rows));
        reference(ggml_type(f), stored.data(), rows, cols, a, ref.data());
        for (int t = 0; t < n; ++t)
          for (int64_t r = 0; r < rows; ++r) {
            const double b = error_bound(ggml_type(f), stored.data(), cols, r, a, t);
            ASSERT_LE(std::fabs(double(y2[size_t(t * rows + r)]) - ref[size_t(t * rows + r)]), b) << t << " " << r;
          }
      }
}

// Activations quantized row by row on their own (shape_activations, then quantize_activation_rows over any split of
// the rows: what a region's tasks do, Linear::prepare_shape / prepare_rows) are quantize_activations()'s bytes, the
// four-unit kernels' grouped records included; a non-finite value in a row is an error from that row's part. And a
// product's rows split into ranges anywhere give the whole range's bits (sum_lanes takes the same tree for the last
// rows of a range as for the others), with 1 and several activation rows.
TEST(KqGemv, RowsQuantizedApartAndRangesSplitAnywhereKeepTheBits) {
  uint32_t seed = 900;
  for (Format f : kFormats)
    for (int64_t cols : {is_k_quant(f) ? int64_t(256) : int64_t(576), int64_t(2048)})
      for (int n : {2, 3, 8, 13}) {
        SCOPED_TRACE(testing::Message() << format_name(f) << " cols " << cols << " n " << n);
        const auto x = random_x(n, cols, seed++, 1.0f);
        Activations whole, apart;
        quantize_activations(f, x.data(), n, cols, whole);
        shape_activations(f, n, cols, apart);
        for (int t = n; t-- > 0;) quantize_activation_rows(x.data(), t, t + 1, apart);  // last row first
        ASSERT_EQ(apart.units, whole.units);
        ASSERT_EQ(apart.groups, whole.groups);
        const size_t bytes = size_t(whole.units) * size_t(n) * kTokenRecord;
        const size_t gbytes = size_t(whole.groups) * size_t(n) * kGroupRecord;
        ASSERT_EQ(std::memcmp(apart.data.data(), whole.data.data(), bytes), 0);
        ASSERT_EQ(std::memcmp(apart.grouped.data(), whole.grouped.data(), gbytes), 0);
        auto bad = x;
        bad[size_t(cols + 3)] = std::nanf("");
        EXPECT_NO_THROW(quantize_activation_rows(bad.data(), 0, 1, apart));
        EXPECT_THROW(quantize_activation_rows(bad.data(), 1, 2, apart), Error);
        EXPECT_THROW(quantize_activation_rows(x.data(), 0, n + 1, apart), Error);

        const int64_t rows = 75;  // ranges below and above 16 rows, ending anywhere
        const auto stored = random_stored(f, rows, cols, seed++);
        const Matrix m = make_matrix(ggml_type(f), rows, cols, stored.data(), stored.size());
        for (int na : {1, n}) {
          Activations a;
          quantize_activations(f, x.data(), na, cols, a);
          std::vector<float> y1(size_t(na * rows)), y2(y1.size());
          run_rows(m, a, y1.data(), rows, 0, rows, best_path());
          for (int64_t r0 : {int64_t(0), int64_t(4), int64_t(7), int64_t(23), int64_t(40)}) {
            const int64_t r1 = r0 == 40 ? rows : r0 == 23 ? 40 : r0 == 7 ? 23 : r0 == 4 ? 7 : 4;
            run_rows(m, a, y2.data(), rows, r0, r1, best_path());
          }
          for (size_t i = 0; i < y1.size(); ++i) ASSERT_EQ(y1[i], y2[i]) << na << " rows of x, output " << i;
        }
      }
}

TEST(KqGemv, BadInputIsAnError) {
  std::vector<uint8_t> b(144 * 2);
  EXPECT_THROW(make_matrix(ggml_type(Format::q4_k), 1, 512, b.data(), b.size() - 1), Error);  // byte count
  EXPECT_THROW(make_matrix(ggml_type(Format::q4_k), 1, 300, b.data(), b.size()), Error);      // not whole blocks
  EXPECT_THROW(make_matrix(uint32_t(quant::GgmlType::q2_k), 1, 256, b.data(), 84), Error);     // not supported
  EXPECT_THROW(make_matrix(12345, 1, 256, b.data(), 84), Error);                               // unknown type
  const Matrix m = make_matrix(ggml_type(Format::q4_k), 1, 512, b.data(), b.size());
  std::vector<float> x((kMaxRows + 1) * 512, 1.0f), y(17);
  Activations a;
  EXPECT_THROW(quantize_activations(Format::q4_k, x.data(), kMaxRows + 1, 512, a), Error);  // too many rows
  EXPECT_THROW(quantize_activations(Format::q4_k, x.data(), 1, 500, a), Error);   // not whole blocks
  quantize_activations(Format::q4_k, x.data(), 1, 256, a);
  EXPECT_THROW(run_rows(m, a, y.data(), 1, 0, 1, best_path()), Error);  // cols differ
  quantize_activations(Format::q6_k, x.data(), 1, 512, a);
  EXPECT_THROW(run_rows(m, a, y.data(), 1, 0, 1, best_path()), Error);  // format differs
  quantize_activations(Format::q4_k, x.data(), 1, 512, a);
  EXPECT_THROW(run_rows(m, a, y.data(), 1, 0, 2, best_path()), Error);  // rows out of range
  x[3] = std::nanf("");
  EXPECT_THROW(quantize_activations(Format::q4_k, x.data(), 1, 512, a), Error);
  EXPECT_FALSE(parse_format("Q3_K").has_value());
  EXPECT_EQ(*parse_format("q4_k"), Format::q4_k);
}

}  // namespace
}  // namespace genesis::kernels::kq_gemv
