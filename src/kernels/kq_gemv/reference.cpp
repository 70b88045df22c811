// kq_gemv's fp64 reference (quant::ggml_dequantize's weights times the quantized activations), its error bound,
// and the roofline's bytes and flops.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/kq_gemv/layout.h"
#include "quant/ggml.h"

namespace genesis::kernels::kq_gemv {
namespace {

size_t stored_row_bytes(uint32_t type, int64_t cols) {
  const auto b = quant::ggml_row_bytes(type, uint64_t(cols));
  if (!b || !format_of(type))
    fail("kq_gemv: no {} row of {} columns (supported: {})", quant::ggml_type_name(type), cols, format_names());
  return size_t(*b);
}

double h2d(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return double(quant::half_to_float(h));
}

void scale_min(int j, const uint8_t* q, int& d, int& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// |scale * code| + |min| of each element of one stored row, from the exact (fp64) block values.
void magnitudes(Format f, const uint8_t* row, int64_t cols, double* mag) {
  std::vector<float> v(256);
  const int bc = layout::stored_block_cols(f), bb = layout::stored_block_bytes(f);
  for (int64_t b = 0; b < cols / bc; ++b) {
    const uint8_t* blk = row + b * bb;
    double* m = mag + b * bc;
    switch (f) {
      case Format::q4_k:
      case Format::q5_k: {
        const double d = std::fabs(h2d(blk)), dmin = std::fabs(h2d(blk + 2));
        // the codes from the reference dequantizer with d = 1, dmin = 0 (exact small integers times sc)
        for (int j = 0; j < 8; ++j) {
          int sc, mn;
          scale_min(j, blk + 4, sc, mn);
          for (int i = 0; i < 32; ++i) {
            const int e = 32 * j + i;
            int c = (j % 2 == 0) ? blk[(f == Format::q4_k ? 16 : 48) + 32 * (j / 2) + i] & 0xF
                                 : blk[(f == Format::q4_k ? 16 : 48) + 32 * (j / 2) + i] >> 4;
            if (f == Format::q5_k) c += ((blk[16 + i] >> j) & 1) << 4;
            m[e] = d * sc * c + dmin * mn;
          }
        }
        break;
      }
      case Format::q6_k: {
        const double d = std::fabs(h2d(blk + 208));
        for (int e = 0; e < 256; ++e) {
          const int h = e / 128, l = e % 128, quarter = l / 32, i = l % 32;
          const uint8_t ql = blk[64 * h + (quarter % 2) * 32 + i];
          const int c = (quarter < 2 ? ql & 0xF : ql >> 4) | (((blk[128 + 32 * h + i] >> (2 * quarter)) & 3) << 4);
          m[e] = d * std::abs(int(int8_t(blk[192 + e / 16]))) * std::abs(c - 32);
        }
        break;
      }
      case Format::q8_0:
        for (int i = 0; i < 32; ++i) m[i] = std::fabs(h2d(blk)) * std::abs(int(int8_t(blk[2 + i])));
        break;
      case Format::q4_0:
      case Format::q4_1: {
        const int q0 = f == Format::q4_0 ? 2 : 4;
        const double mn = f == Format::q4_1 ? std::fabs(h2d(blk + 2)) : 0.0;
        for (int i = 0; i < 16; ++i) {
          const int lo = blk[q0 + i] & 0xF, hi = blk[q0 + i] >> 4;
          m[i] = std::fabs(h2d(blk)) * std::abs(f == Format::q4_0 ? lo - 8 : lo) + mn;
          m[i + 16] = std::fabs(h2d(blk)) * std::abs(f == Format::q4_0 ? hi - 8 : hi) + mn;
        }
        break;
      }
    }
  }
}

}  // namespace

void reference(uint32_t type, const uint8_t* stored, int64_t rows, int64_t cols, const Activations& a, double* y) {
  const size_t row = stored_row_bytes(type, cols);
  if (a.cols != cols) fail("kq_gemv: activations of {} columns for a matrix of {}", a.cols, cols);
  std::vector<float> wr(static_cast<size_t>(cols));
  std::vector<double> x(static_cast<size_t>(cols));
  for (int t = 0; t < a.n; ++t) {
    dequantize_activations(a, t, x.data());
    for (int64_t r = 0; r < rows; ++r) {
      quant::ggml_dequantize(type, stored + size_t(r) * row, wr.data(), cols);
      double s = 0;
      for (int64_t k = 0; k < cols; ++k) s += double(wr[size_t(k)]) * x[size_t(k)];
      y[size_t(t) * size_t(rows) + size_t(r)] = s;
    }
  }
}

double error_bound(uint32_t type, const uint8_t* stored, int64_t cols, int64_t r, const Activations& a, int t) {
  const size_t row = stored_row_bytes(type, cols);
  std::vector<double> mag(static_cast<size_t>(cols)), x(static_cast<size_t>(cols));
  magnitudes(*format_of(type), stored + size_t(r) * row, cols, mag.data());
  dequantize_activations(a, t, x.data());
  double s = 0;
  for (int64_t k = 0; k < cols; ++k) s += mag[size_t(k)] * std::fabs(x[size_t(k)]);
  return 1.01 * std::ldexp(1.0, -24) * double(a.units + 10) * s + 1e-30 * double(cols);
}

std::string error_bound_text() {
  return "1.01 * 2^-24 * (units + 10) * sum_k (|d sc q_k| + |dmin m|) |x_k| (+1e-30 cols), x_k the quantized "
         "activations: integer dots are exact; the fp32 fold per unit, the accumulation over units and the "
         "reference's own fp32 dequantization round";
}

double bytes_moved(const Matrix& w, int n) { return double(w.bytes()) + double(w.units) * n * kTokenRecord; }
double flops(const Matrix& w, int n) { return 2.0 * double(w.rows) * double(w.cols) * n; }

}  // namespace genesis::kernels::kq_gemv
