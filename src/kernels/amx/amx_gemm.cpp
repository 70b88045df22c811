// bf16 GEMM on AMX tiles; see amx_gemm.h.
#include "kernels/amx/amx_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/error.h"
#include "cpu/isa.h"
#include "kernels/amx/tile_ops.h"
#include "kernels/linear.h"
#include "quant/half.h"

namespace genesis::kernels::amx {
namespace {

bool vector_bf16() {
  static const bool v =
      cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512bf16);
  return v;
}

// n floats -> bf16 (round to nearest even). The vector instruction flushes denormal inputs to zero; the scalar
// conversion keeps them: the two differ only there.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void to_bf16_avx512(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i, reinterpret_cast<const __m512i&>(v));
  }
  for (; i < n; ++i) out[i] = quant::f32_to_bf16(x[i]);
}

void to_bf16(const float* x, uint16_t* out, int64_t n) {
  if (vector_bf16()) {
    to_bf16_avx512(x, out, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = quant::f32_to_bf16(x[i]);
}

// out[j * 16 + i] = in[i * 16 + j] over 16 x 16 dwords (bf16 pairs): four 8 x 8 transposes in AVX2 registers where the
// CPU has them (every AMX CPU does), else element by element.
__attribute__((target("avx2"))) void transpose_8x8(const uint32_t* in, uint32_t* out) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i)
    r[i] = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i * 16)));
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * 16),
                        _mm256_castps_si256(_mm256_permute2f128_ps(u[i], u[i + 4], 0x20)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i + 4) * 16),
                        _mm256_castps_si256(_mm256_permute2f128_ps(u[i], u[i + 4], 0x31)));
  }
}

void transpose_16x16(const uint16_t* in, uint16_t* out) {
  static const bool avx2 = cpu::mayiuse(cpu::Isa::avx2);
  if (avx2) {
    const auto* i32 = reinterpret_cast<const uint32_t*>(in);  // read and written through __m256i only
    auto* o32 = reinterpret_cast<uint32_t*>(out);
    for (int bi = 0; bi < 2; ++bi)
      for (int bj = 0; bj < 2; ++bj) transpose_8x8(i32 + bi * 8 * 16 + bj * 8, o32 + bj * 8 * 16 + bi * 8);
    return;
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) std::memcpy(out + 2 * (j * 16 + i), in + 2 * (i * 16 + j), 4);
}

// The tile configuration of every call: palette 1, tiles 0..7 of 16 rows x 64 bytes.
TileConfig tile_config() {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.colsb[i] = 64;
    c.rows[i] = kTileRows;
  }
  return c;
}

// The hardware tiles, through the compiler's intrinsics (tile numbers are immediates).
struct HardTiles {
  __attribute__((target("amx-tile"))) HardTiles() {
    static const TileConfig cfg = tile_config();
    _tile_loadconfig(&cfg);
  }
  __attribute__((target("amx-tile"))) ~HardTiles() { _tile_release(); }
  template <int T>
  void zero() {
    tile_zero<T>();
  }
  template <int T>
  void load(const void* p, int64_t stride) {
    tile_load<T>(p, stride);
  }
  template <int T>
  void store(void* p, int64_t stride) {
    tile_store<T>(p, stride);
  }
  template <int C, int A, int B>
  void dp() {
    if constexpr (C == 0 && A == 4 && B == 6) {
      _tile_dpbf16ps(0, 4, 6);
    } else if constexpr (C == 1 && A == 4 && B == 7) {
      _tile_dpbf16ps(1, 4, 7);
    } else if constexpr (C == 2 && A == 5 && B == 6) {
      _tile_dpbf16ps(2, 5, 6);
    } else {
      static_assert(C == 3 && A == 5 && B == 7, "a tile product the driver does not use");
      _tile_dpbf16ps(3, 5, 7);
    }
  }
};

// Software tiles after the instructions' pseudocode (Intel SDM, TDPBF16PS: per element of C, over the pairs k of a
// row of A, tmp += A[m][2k] * B[k][2n] then tmp += A[m][2k + 1] * B[k][2n + 1], in fp32).
struct SoftTiles {
  alignas(64) uint8_t t[8][kTileRows][64];
  template <int T>
  void zero() {
    std::memset(t[T], 0, sizeof t[T]);
  }
  template <int T>
  void load(const void* p, int64_t stride) {
    for (int r = 0; r < kTileRows; ++r) std::memcpy(t[T][r], static_cast<const uint8_t*>(p) + r * stride, 64);
  }
  template <int T>
  void store(void* p, int64_t stride) {
    for (int r = 0; r < kTileRows; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, t[T][r], 64);
  }
  template <int C, int A, int B>
  void dp() {
    for (int m = 0; m < kTileRows; ++m)
      for (int n = 0; n < 16; ++n) {
        float acc;
        std::memcpy(&acc, &t[C][m][4 * n], 4);
        for (int k = 0; k < 16; ++k)
          for (int j = 0; j < 2; ++j) {
            uint16_t a, b;
            std::memcpy(&a, &t[A][m][4 * k + 2 * j], 2);
            std::memcpy(&b, &t[B][k][4 * n + 2 * j], 2);
            acc += quant::bf16_to_f32(a) * quant::bf16_to_f32(b);
          }
        std::memcpy(&t[C][m][4 * n], &acc, 4);
      }
  }
};

// For each pair of 16-row groups of x and each block of 32 weight rows: four C tiles over all column blocks, then
// the valid part written to y transposed (C holds weight rows x rows of x). The pair's B tiles (128 KiB at 2048
// columns) are read again for every block of w's rows (from L2), x as a whole once per call (widened_rows: once per
// kWidenRows weight rows; streaming all of x, 2 MiB at 512 x 2048, once per 32 weight rows held the tiles at an
// eighth of their peak on the host).
template <class Tiles>
void drive(Tiles& tl, const uint16_t* w, int64_t ldw, int64_t rows, const PackedRows& x, float* y, int64_t ldy) {
  alignas(64) float c[4][kTileRows][16];
  const int64_t kb_count = x.kblocks, stride = ldw * 2;
  for (int64_t g = 0; g < x.groups; g += 2)
    for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
      const uint16_t* a0 = w + r0 * ldw;
      const uint16_t* a1 = a0 + kTileRows * ldw;
      const int64_t rv = std::min<int64_t>(kBlockRows, rows - r0);
      tl.template zero<0>();
      tl.template zero<1>();
      tl.template zero<2>();
      tl.template zero<3>();
      for (int64_t kb = 0; kb < kb_count; ++kb) {
        tl.template load<4>(a0 + kb * kTileK, stride);
        tl.template load<5>(a1 + kb * kTileK, stride);
        tl.template load<6>(x.tile(g, kb), 64);
        tl.template load<7>(x.tile(g + 1, kb), 64);
        tl.template dp<0, 4, 6>();
        tl.template dp<1, 4, 7>();
        tl.template dp<2, 5, 6>();
        tl.template dp<3, 5, 7>();
      }
      tl.template store<0>(c[0], 64);
      tl.template store<1>(c[1], 64);
      tl.template store<2>(c[2], 64);
      tl.template store<3>(c[3], 64);
      for (int i = 0; i < 4; ++i) {
        const int64_t rb = (i >> 1) * kTileRows, t0 = (g + (i & 1)) * kTileRows;
        const int64_t rn = std::min<int64_t>(kTileRows, rv - rb), tn = std::min<int64_t>(kTileRows, x.n - t0);
        for (int64_t t = 0; t < tn; ++t)
          for (int64_t r = 0; r < rn; ++r) y[(t0 + t) * ldy + r0 + rb + r] = c[i][r][t];
      }
    }
}

void check(const uint16_t* w, int64_t ldw, int64_t rows, const PackedRows& x) {
  if (!w || rows < 1 || x.n < 1 || x.groups % 2 != 0 || ldw < x.kblocks * kTileK ||
      x.data.size() != size_t(x.groups * x.kblocks * 512))
    fail("amx gemm: {} weight rows of stride {} with {} packed rows of {} columns", rows, ldw, x.n, x.cols);
}

__attribute__((target("amx-tile,amx-bf16"))) void gemm_hard(const uint16_t* w, int64_t ldw, int64_t rows,
                                                            const PackedRows& x, float* y, int64_t ldy) {
  HardTiles tl;
  drive(tl, w, ldw, rows, x, y, ldy);
}

}  // namespace

bool available() {
  static const bool a = [] {
    const char* env = std::getenv("GENESIS_AMX");
    if (env && std::string_view(env) == "0") return false;
    return cpu::mayiuse(cpu::Isa::amx_tile) && cpu::mayiuse(cpu::Isa::amx_bf16) && vector_bf16();
  }();
  return a;
}

int64_t min_rows(bool straight_bf16_rows) {
  static const int64_t m = [] {
    const char* env = std::getenv("GENESIS_AMX_ROWS");
    return env ? std::max<int64_t>(1, std::atoll(env)) : int64_t(0);
  }();
  return m > 0 ? m : straight_bf16_rows ? kStraightMinRows : kDefaultMinRows;
}

void pack_rows(const float* x, int64_t n, int64_t cols, PackedRows& p) {
  if (n < 1 || cols < 1) fail("amx pack: {} rows of {} columns", n, cols);
  p.n = n;
  p.cols = cols;
  p.groups = ((n + kTileRows - 1) / kTileRows + 1) / 2 * 2;
  p.kblocks = (cols + kTileK - 1) / kTileK;
  p.data.resize(size_t(p.groups * p.kblocks * 512));
  alignas(64) uint16_t rows[kTileRows][kTileK];  // the tile's 16 rows of x in bf16
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t kb = 0; kb < p.kblocks; ++kb) {
      uint16_t* tile = p.data.data() + (g * p.kblocks + kb) * 512;
      const int64_t c0 = kb * kTileK, cn = std::min<int64_t>(kTileK, cols - c0);
      const int64_t tn = std::clamp<int64_t>(n - g * kTileRows, 0, kTileRows);
      if (tn < kTileRows || cn < kTileK) std::memset(rows, 0, sizeof rows);
      for (int64_t t = 0; t < tn; ++t) to_bf16(x + (g * kTileRows + t) * cols + c0, rows[t], cn);
      transpose_16x16(&rows[0][0], tile);
    }
}

void gemm_bf16(const uint16_t* w, int64_t ldw, int64_t rows, const PackedRows& x, float* y, int64_t ldy) {
  if (!available()) fail("amx gemm: this CPU (or GENESIS_MAX_ISA / GENESIS_AMX) gives no AMX bf16 tiles");
  check(w, ldw, rows, x);
  gemm_hard(w, ldw, rows, x, y, ldy);
}

void gemm_bf16_emulated(const uint16_t* w, int64_t ldw, int64_t rows, const PackedRows& x, float* y, int64_t ldy) {
  check(w, ldw, rows, x);
  SoftTiles tl;
  drive(tl, w, ldw, rows, x, y, ldy);
}

namespace {

// widened_rows() over either tile set (the software tiles for the tests).
void widen_and_multiply(const Linear& w, const PackedRows& x, float* y, int64_t r0, int64_t r1, bool emulated) {
  if (x.cols != w.cols()) fail("amx gemm: packed rows of {} columns for a matrix of {}", x.cols, w.cols());
  // The bf16 rows one cache line apart more than whole pages: at a stride of 4 KB (2048 columns) a tile's 16 rows
  // fall in one L1 set.
  const int64_t cols = w.cols(), ldw = x.kblocks * kTileK + kTileK;
  thread_local std::vector<float> f;
  thread_local std::vector<uint16_t> b;
  f.resize(size_t(cols));
  // Blocks of kWidenRows rows: widened (about 0.5 MiB of bf16 at 2048 columns: they stay in L2 while the tiles read
  // them once per pair of x's row groups), then multiplied.
  const int64_t block = kWidenRows;
  if (b.size() < size_t(block * ldw)) b.assign(size_t(block * ldw), 0);
  for (int64_t rb = r0; rb < r1; rb += block) {
    const int64_t R = std::min<int64_t>(block, r1 - rb);
    for (int64_t r = 0; r < R; ++r) {
      if (!w.row_bf16(rb + r, b.data() + r * ldw)) {
        w.row_f32(rb + r, f.data());
        to_bf16(f.data(), b.data() + r * ldw, cols);
      }
      std::fill(b.begin() + r * ldw + cols, b.begin() + (r + 1) * ldw, uint16_t(0));
    }
    if (emulated)
      gemm_bf16_emulated(b.data(), ldw, R, x, y + rb, w.rows());
    else
      gemm_bf16(b.data(), ldw, R, x, y + rb, w.rows());
  }
}

}  // namespace

void widened_rows(const Linear& w, const PackedRows& x, float* y, int64_t r0, int64_t r1) {
  widen_and_multiply(w, x, y, r0, r1, false);
}

void widened_rows_emulated(const Linear& w, const PackedRows& x, float* y, int64_t r0, int64_t r1) {
  widen_and_multiply(w, x, y, r0, r1, true);
}

}  // namespace genesis::kernels::amx
