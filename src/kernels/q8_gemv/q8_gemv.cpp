// q8_gemv: quantization of weights and activations, the scalar (exact integer) and AVX-512 VNNI products, and the
// fp64 reference; see q8_gemv.h.
#include "kernels/q8_gemv/q8_gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "cpu/isa.h"

namespace genesis::kernels::q8_gemv {

namespace {

constexpr int64_t kChunk = 64;  // columns per zmm of int8: two blocks

int8_t round_q(float v) { return int8_t(std::clamp(std::lround(v), -127L, 127L)); }

int64_t chunks_of(int64_t cols) { return (cols + kChunk - 1) / kChunk; }

}  // namespace

Q8Matrix quantize(const float* w, int64_t rows, int64_t cols) {
  if (cols % kBlock != 0 || cols <= 0 || rows <= 0)
    fail("q8_gemv: a [{}, {}] matrix: the columns must be a positive multiple of {}", rows, cols, kBlock);
  Q8Matrix m;
  m.rows = rows, m.cols = cols;
  const int64_t nb = cols / kBlock;
  m.w.resize(size_t(rows * cols));
  m.scale.resize(size_t(rows * nb + 16), 0.0f);  // padding: the AVX-512 loop loads 16 scales at a time
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const float* src = w + r * cols + b * kBlock;
      float amax = 0;
      for (int64_t k = 0; k < kBlock; ++k) amax = std::max(amax, std::fabs(src[k]));
      const float s = amax / 127.0f;
      m.scale[size_t(r * nb + b)] = s;
      const float inv = s > 0 ? 1.0f / s : 0.0f;
      for (int64_t k = 0; k < kBlock; ++k)
        m.w[size_t(r * cols + b * kBlock + k)] = uint8_t(int(round_q(src[k] * inv)) + 128);
    }
  return m;
}

namespace {
void dequantize_row_scalar(const Q8Matrix& m, int64_t r, float* out) {
  const int64_t nb = m.blocks();
  for (int64_t k = 0; k < m.cols; ++k)
    out[k] = float(int(m.w[size_t(r * m.cols + k)]) - 128) * m.scale[size_t(r * nb + k / kBlock)];
}

// The same values (an exact int -> float conversion, then one rounding in the multiply), 16 at a time: prefill widens
// every weight once per chunk of rows, and the scalar loop was a third of its dense products.
__attribute__((target("avx512f"))) void dequantize_row_avx512(const Q8Matrix& m, int64_t r, float* out) {
  const int64_t nb = m.blocks();
  const uint8_t* w = &m.w[size_t(r * m.cols)];
  const __m512i off = _mm512_set1_epi32(128);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 s = _mm512_set1_ps(m.scale[size_t(r * nb + b)]);
    for (int64_t h = 0; h < kBlock; h += 16) {
      const __m512i q = _mm512_sub_epi32(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + b * kBlock + h))), off);
      _mm512_storeu_ps(out + b * kBlock + h, _mm512_mul_ps(_mm512_cvtepi32_ps(q), s));
    }
  }
  _mm256_zeroupper();
}
}  // namespace

void dequantize_row(const Q8Matrix& m, int64_t r, float* out) {
  static const bool wide = cpu::mayiuse(cpu::Isa::avx512f);
  (wide ? dequantize_row_avx512 : dequantize_row_scalar)(m, r, out);
}

void quantize_activations(const float* x, int64_t cols, Q8Activations& out) {
  if (cols % kBlock != 0) fail("q8_gemv: activations of {} elements are not whole blocks of {}", cols, kBlock);
  const int64_t nc = chunks_of(cols);
  out.cols = cols;
  out.q.assign(size_t(nc * kChunk), 0);
  out.sx.assign(size_t(nc * 16), 0.0f);
  out.negk.assign(size_t(nc * 16), 0);
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    const float* src = x + b * kBlock;
    float amax = 0;
    for (int64_t k = 0; k < kBlock; ++k) amax = std::max(amax, std::fabs(src[k]));
    const float s = amax / 127.0f, inv = s > 0 ? 1.0f / s : 0.0f;
    int8_t* q = &out.q[size_t(b * kBlock)];
    for (int64_t k = 0; k < kBlock; ++k) q[k] = round_q(src[k] * inv);
    // Block b holds lanes (b % 2) * 8 .. + 8 of chunk b / 2; each lane sums 4 consecutive products.
    const int64_t lane0 = (b / 2) * 16 + (b % 2) * 8;
    for (int64_t l = 0; l < 8; ++l) {
      out.sx[size_t(lane0 + l)] = s;
      out.negk[size_t(lane0 + l)] = -128 * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
    }
  }
}

Path best_path() {
  return cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512vnni) ? Path::avx512vnni : Path::scalar;
}

const char* path_name(Path p) { return p == Path::avx512vnni ? "avx512vnni" : "scalar"; }

namespace {

void rows_scalar(const Q8Matrix& m, const Q8Activations& x, float* y, int64_t r0, int64_t r1) {
  const int64_t nb = m.blocks();
  for (int64_t r = r0; r < r1; ++r) {
    float acc = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t d = 0;
      for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k)
        d += (int32_t(m.w[size_t(r * m.cols + k)]) - 128) * int32_t(x.q[size_t(k)]);
      acc += float(d) * (m.scale[size_t(r * nb + b)] * x.sx[size_t((b / 2) * 16 + (b % 2) * 8)]);
    }
    y[r] = acc;
  }
}

// R rows share each chunk of activations: per row and chunk one vpdpbusd (started from -128 * sum q so that the
// unsigned weights' +128 cancels), one conversion, one permute that spreads the chunk's two weight scales over their
// lanes (16 scales, eight chunks' worth, are loaded at once), and the two blocks' scales (weight x activation) in one
// multiply.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void rows_tile(const Q8Matrix& m, const Q8Activations& x,
                                                                       float* y, int64_t r) {
  const int64_t nb = m.blocks(), nc = chunks_of(m.cols);
  __m512i pair_idx[8];
  for (int c = 0; c < 8; ++c)
    pair_idx[c] = _mm512_set_epi32(2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1,
                                   2 * c + 1, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c);
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  // The next tile's rows are prefetched one tile ahead (the hardware prefetchers alone left a core at ~70% of its
  // stream: 151936x2048 on 2 threads 19.1 -> 25.6 GB/s of 28.5); past the last row, the tile's own rows.
  const uint8_t* ahead[R];
  for (int i = 0; i < R; ++i)
    ahead[i] = m.w.data() + size_t((r + R + i < m.rows ? r + R + i : r + i) * m.cols);
  for (int64_t c0 = 0; c0 < nc; c0 += 8) {
    __m512 sw16[R];
    for (int i = 0; i < R; ++i) sw16[i] = _mm512_loadu_ps(&m.scale[size_t((r + i) * nb + 2 * c0)]);  // padded
    const int64_t c1 = std::min(nc, c0 + 8);
    for (int64_t c = c0; c < c1; ++c) {
      const __mmask64 mask =
          (c + 1) * kChunk <= m.cols ? ~__mmask64(0) : (__mmask64(1) << (m.cols - c * kChunk)) - 1;
      const __m512i xq = _mm512_loadu_si512(&x.q[size_t(c * kChunk)]);
      const __m512i nk = _mm512_loadu_si512(&x.negk[size_t(c * 16)]);
      const __m512 sx = _mm512_loadu_ps(&x.sx[size_t(c * 16)]);
      for (int i = 0; i < R; ++i) {
        // Into L2, not L1 (kq_gemv's README has the why): the 8-layer 30B shape with --dense q8, 2 threads on the
        // Xeon with AMX, decoded 26.0 / 27.6 -> 28.2 / 28.5 tokens/s (stop 29, alternating builds).
        _mm_prefetch(reinterpret_cast<const char*>(ahead[i] + c * kChunk), _MM_HINT_T2);
        const __m512i wq = _mm512_maskz_loadu_epi8(mask, &m.w[size_t((r + i) * m.cols + c * kChunk)]);
        const __m512i d = _mm512_dpbusd_epi32(nk, wq, xq);
        const __m512 sw = _mm512_permutexvar_ps(pair_idx[c - c0], sw16[i]);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw, sx), acc[i]);
      }
    }
  }
  for (int i = 0; i < R; ++i) y[r + i] = _mm512_reduce_add_ps(acc[i]);
}

__attribute__((target("avx512f"))) void rows_avx512(const Q8Matrix& m, const Q8Activations& x, float* y, int64_t r0,
                                                    int64_t r1) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) rows_tile<4>(m, x, y, r);
  for (; r < r1; ++r) rows_tile<1>(m, x, y, r);
  _mm256_zeroupper();
}

}  // namespace

void gemv_rows(const Q8Matrix& m, const Q8Activations& x, float* y, int64_t r0, int64_t r1, Path path) {
  if (x.cols != m.cols) fail("q8_gemv: activations of {} elements for a matrix of {} columns", x.cols, m.cols);
  if (r0 < 0 || r1 > m.rows || r0 > r1) fail("q8_gemv: rows [{}, {}) outside 0..{}", r0, r1, m.rows);
  if (path == Path::avx512vnni) {
    if (best_path() != Path::avx512vnni) fail("q8_gemv: this CPU (or GENESIS_MAX_ISA) does not allow avx512vnni");
    rows_avx512(m, x, y, r0, r1);
  } else {
    rows_scalar(m, x, y, r0, r1);
  }
}

double reference_row(const Q8Matrix& m, const Q8Activations& x, int64_t r) {
  const int64_t nb = m.blocks();
  double acc = 0;
  for (int64_t k = 0; k < m.cols; ++k) {
    const int64_t b = k / kBlock;
    const double w = double(int(m.w[size_t(r * m.cols + k)]) - 128) * double(m.scale[size_t(r * nb + b)]);
    acc += w * double(x.q[size_t(k)]) * double(x.sx[size_t((b / 2) * 16 + (b % 2) * 8)]);
  }
  return acc;
}

double error_bound(const Q8Matrix& m, const float* x, int64_t r) {
  const int64_t nb = m.blocks();
  double act = 0, mag = 0;
  for (int64_t b = 0; b < nb; ++b) {
    float amax = 0;
    for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) amax = std::max(amax, std::fabs(x[k]));
    double sq = 0;
    for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) {
      const double w = double(int(m.w[size_t(r * m.cols + k)]) - 128) * double(m.scale[size_t(r * nb + b)]);
      sq += std::fabs(w);
      mag += std::fabs(w * double(x[k]));
    }
    act += sq * double(amax) / 127.0 / 2.0;
  }
  return 1.01 * act + 1e-6 * mag + 1e-30;
}

}  // namespace genesis::kernels::q8_gemv
