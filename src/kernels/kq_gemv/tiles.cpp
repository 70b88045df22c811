// AMX int8 tiles for the legacy formats; see tiles.h.
#include "kernels/kq_gemv/tiles.h"

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/error.h"
#include "cpu/isa.h"
#include "kernels/amx/tile_ops.h"
#include "kernels/kq_gemv/layout.h"

namespace genesis::kernels::kq_gemv::tiles {
namespace {

constexpr int kRows = 16;  // weight rows per group (A and C tile rows); rows of x per group (C tile columns)

bool env_off(const char* name) {
  const char* e = std::getenv(name);
  return e && std::string_view(e) == "0";
}

// Palette 1: C0..C3 = tmm0..3 (16 weight rows x 16 columns, int32), A0, A1 = tmm4, 5 (16 weight rows x a block's 32
// codes, T = 16, or a pair's 64), B0, B1 = tmm6, 7 (8 or 16 dword rows x 16 columns).
constexpr int tile_rows_of(int tile, int T) { return tile >= 6 && T == 16 ? 8 : 16; }
constexpr int tile_colsb_of(int tile, int T) { return (tile == 4 || tile == 5) && T == 16 ? 32 : 64; }

template <int T>
amx::TileConfig tile_config() {
  amx::TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.colsb[i] = uint16_t(tile_colsb_of(i, T));
    c.rows[i] = uint8_t(tile_rows_of(i, T));
  }
  return c;
}

// Every function that touches the vectors or tiles carries the whole set: the driver runs the software tiles too
// (on CPUs without AMX only AVX-512 instructions execute: the compiler emits tile instructions only for intrinsics).
#define GENESIS_INT8_TARGET "amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,f16c,fma"

// The hardware tiles (tile numbers are immediates of the intrinsics: one branch per tile the driver uses).
template <int TG>
struct HardTiles {
  __attribute__((target(GENESIS_INT8_TARGET))) HardTiles() {
    static const amx::TileConfig cfg = tile_config<TG>();
    _tile_loadconfig(&cfg);
  }
  __attribute__((target(GENESIS_INT8_TARGET))) ~HardTiles() { _tile_release(); }
  template <int T>
  __attribute__((target(GENESIS_INT8_TARGET))) void zero() {
    amx::tile_zero<T>();
  }
  template <int T>
  __attribute__((target(GENESIS_INT8_TARGET))) void load(const void* p, int64_t stride) {
    amx::tile_load<T>(p, stride);
  }
  template <int T>
  __attribute__((target(GENESIS_INT8_TARGET))) void store(void* p, int64_t stride) {
    amx::tile_store<T>(p, stride);
  }
  template <int C, int A, int B>
  __attribute__((target(GENESIS_INT8_TARGET))) void dp() {
    static_assert((A == 4 && B == 6) || (A == 5 && B == 7), "a tile product the driver does not use");
#define GENESIS_DP(c)        \
  if constexpr (A == 4) {    \
    _tile_dpbusd(c, 4, 6);   \
  } else {                   \
    _tile_dpbusd(c, 5, 7);   \
  }
    if constexpr (C == 0) {
      GENESIS_DP(0)
    } else if constexpr (C == 1) {
      GENESIS_DP(1)
    } else if constexpr (C == 2) {
      GENESIS_DP(2)
    } else {
      static_assert(C == 3);
      GENESIS_DP(3)
    }
#undef GENESIS_DP
  }
};

// Software tiles after the SDM's pseudocode: TILELOADD / TILESTORED move rows x colsb bytes (the rest of a tile
// reads as zero); TDPBUSD: C[m][n] += sum over the dwords k of A's row (colsb(A) / 4 of them) of the four products
// u8(A[m][4k + i]) * s8(B[k][4n + i]), in int32.
template <int T_>
struct SoftTiles {
  static constexpr int kTileRowsOf[8] = {tile_rows_of(0, T_), tile_rows_of(1, T_), tile_rows_of(2, T_),
                                         tile_rows_of(3, T_), tile_rows_of(4, T_), tile_rows_of(5, T_),
                                         tile_rows_of(6, T_), tile_rows_of(7, T_)};
  static constexpr int kTileColsbOf[8] = {tile_colsb_of(0, T_), tile_colsb_of(1, T_), tile_colsb_of(2, T_),
                                          tile_colsb_of(3, T_), tile_colsb_of(4, T_), tile_colsb_of(5, T_),
                                          tile_colsb_of(6, T_), tile_colsb_of(7, T_)};
  alignas(64) uint8_t t[8][16][64];
  template <int T>
  void zero() {
    std::memset(t[T], 0, sizeof t[T]);
  }
  template <int T>
  void load(const void* p, int64_t stride) {
    std::memset(t[T], 0, sizeof t[T]);
    for (int r = 0; r < kTileRowsOf[T]; ++r)
      std::memcpy(t[T][r], static_cast<const uint8_t*>(p) + r * stride, size_t(kTileColsbOf[T]));
  }
  template <int T>
  void store(void* p, int64_t stride) {
    for (int r = 0; r < kTileRowsOf[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, t[T][r], size_t(kTileColsbOf[T]));
  }
  template <int C, int A, int B>
  void dp() {
    for (int m = 0; m < kTileRowsOf[C]; ++m)
      for (int n = 0; n < kTileColsbOf[C] / 4; ++n) {
        int32_t acc;
        std::memcpy(&acc, &t[C][m][4 * n], 4);
        for (int k = 0; k < kTileColsbOf[A] / 4; ++k)
          for (int i = 0; i < 4; ++i) acc += int32_t(t[A][m][4 * k + i]) * int32_t(int8_t(t[B][k][4 * n + i]));
        std::memcpy(&t[C][m][4 * n], &acc, 4);
      }
  }
};

// Units unpacked at once: the 16 rows' codes (16 KiB) and scales stay in L1 while the chunk's tiles read them.
constexpr int64_t kChunkUnits = 8;
constexpr int64_t kAStride = kChunkUnits * 128 + 64;  // a row's codes; a line more than whole units (L1 sets)

// Units [u0, u1) of rows [g0, g0 + rn) of w into the chunk's scratch: a[r][u - u0][b][32] block b's codes as bytes,
// its dwords in the order k = 0..3: low-nibble / first-half lane b + 4k, k = 4..7: high-nibble / second-half lane
// b + 4 (k - 4) (the order pack() gives x), and ds[r][u - u0] = d[4], m[4] (Q4_1) in fp32. Rows from rn on are
// zeros. (The records were prefetched while the previous chunk's tiles ran: Ahead.)
__attribute__((target(GENESIS_INT8_TARGET))) void unpack(const Matrix& w, int64_t g0, int rn, int64_t u0, int64_t u1,
                                                         uint8_t* a, float* ds) {
  const Format f = w.format;
  const int co = layout::codes_offset(f);
  const int64_t rb = w.record_bytes, row = w.row_bytes();
  const __m512i idx01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const __m512i idx23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int r = 0; r < kRows; ++r) {
    uint8_t* ar = a + r * kAStride;
    float* dr = ds + r * kChunkUnits * 8;
    if (r >= rn) {
      std::memset(ar, 0, size_t((u1 - u0) * 128));
      std::memset(dr, 0, size_t((u1 - u0) * 8 * 4));
      continue;
    }
    const uint8_t* rec = w.records() + (g0 + r) * row + u0 * rb;
    for (int64_t u = u0; u < u1; ++u, rec += rb, ar += 128, dr += 8) {
      __m512i z0, z1;
      if (f == Format::q8_0) {
        z0 = _mm512_loadu_si512(rec + co);
        z1 = _mm512_loadu_si512(rec + co + 64);
      } else {
        const __m512i v = _mm512_loadu_si512(rec + co);
        z0 = _mm512_and_si512(v, m4);
        z1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
      }
      _mm512_storeu_si512(ar, _mm512_permutex2var_epi32(z0, idx01, z1));
      _mm512_storeu_si512(ar + 64, _mm512_permutex2var_epi32(z0, idx23, z1));
      _mm_storeu_ps(dr, _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rec))));
      if (f == Format::q4_1)
        _mm_storeu_ps(dr + 4, _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rec + 8))));
    }
  }
}

// Column c of C tile q holds block q P + c / T (P = 16 / T blocks per tile): the permutation that spreads a row's
// four block scales over the columns.
template <int T>
__attribute__((target(GENESIS_INT8_TARGET), always_inline)) inline __m512i spread(int q) {
  constexpr int P = 16 / T;
  alignas(64) int32_t v[16];
  for (int c = 0; c < 16; ++c) v[c] = q * P + c / T;
  return _mm512_load_si512(v);
}

// One unit's C tiles (c[q][r][column]) into the rows' lanes: per row, the unit's tiles summed in order (the first a
// product, then fused multiply-adds), then added to acc[r]; the slots' lanes are summed at the write-out. Every term
// rounds at most units + 10 times. ds: the unit's scales of row 0 (rows kChunkUnits * 8 floats apart).
template <Format F, int T>
__attribute__((target(GENESIS_INT8_TARGET), always_inline)) inline void fold(const int32_t (*c)[kRows][16],
                                                                              const Packed& x, int g, int64_t u,
                                                                              const float* ds, const __m512i* idx,
                                                                              __m512* acc) {
  constexpr int Q = 4 * T / 16;
  for (int r = 0; r < kRows; ++r) {
    const float* d = ds + r * kChunkUnits * 8;
    const __m512 d4 = _mm512_broadcast_f32x4(_mm_loadu_ps(d));
    __m512 m4v = _mm512_setzero_ps();
    if constexpr (F == Format::q4_1) m4v = _mm512_broadcast_f32x4(_mm_loadu_ps(d + 4));
    __m512 s = _mm512_setzero_ps();
    for (int q = 0; q < Q; ++q) {
      const uint8_t* xr = x.record(g, u, q);
      __m512i ci = _mm512_load_si512(c[q][r]);
      if constexpr (F != Format::q4_1) ci = _mm512_add_epi32(ci, _mm512_loadu_si512(xr + kRecCorr));
      const __m512 dq = T == 16 ? _mm512_set1_ps(d[q]) : _mm512_permutexvar_ps(idx[q], d4);
      const __m512 sc = _mm512_mul_ps(_mm512_loadu_ps(reinterpret_cast<const float*>(xr + kRecDx)), dq);
      s = q == 0 ? _mm512_mul_ps(_mm512_cvtepi32_ps(ci), sc) : _mm512_fmadd_ps(_mm512_cvtepi32_ps(ci), sc, s);
      if constexpr (F == Format::q4_1) {
        const __m512 mq = T == 16 ? _mm512_set1_ps(d[4 + q]) : _mm512_permutexvar_ps(idx[q], m4v);
        s = _mm512_fmadd_ps(_mm512_loadu_ps(reinterpret_cast<const float*>(xr + kRecSx)), mq, s);
      }
    }
    acc[r] = _mm512_add_ps(acc[r], s);
  }
}

// Unit u's tiles from its A scratch `au` (rows kAStride bytes apart) into c[q]. T = 16: C tile b = block b's A (32
// codes) x B tile b. T = 8: C tile j (+ 2 on odd units) = pair j's A (64 codes) x B tile j. T = 4: C tile 0 (1 on
// odd units) = both pairs' products. (Alternate C tiles let a unit's products start before the last one's stores.)
template <int T, int Odd, class Tiles>
__attribute__((target(GENESIS_INT8_TARGET), always_inline)) inline void unit_tiles(Tiles& tl, const uint8_t* au,
                                                                                    const Packed& x, int g, int64_t u,
                                                                                    int32_t (*c)[kRows][16]) {
  const uint8_t* xr = x.record(g, u, 0);
  constexpr int64_t as = kAStride;
  if constexpr (T == 16) {
    tl.template zero<0>();
    tl.template zero<1>();
    tl.template zero<2>();
    tl.template zero<3>();
    tl.template load<4>(au, as);
    tl.template load<6>(xr, 64);
    tl.template dp<0, 4, 6>();
    tl.template load<5>(au + 32, as);
    tl.template load<7>(xr + kTileRecord, 64);
    tl.template dp<1, 5, 7>();
    tl.template load<4>(au + 64, as);
    tl.template load<6>(xr + 2 * kTileRecord, 64);
    tl.template dp<2, 4, 6>();
    tl.template load<5>(au + 96, as);
    tl.template load<7>(xr + 3 * kTileRecord, 64);
    tl.template dp<3, 5, 7>();
    tl.template store<0>(c[0], 64);
    tl.template store<1>(c[1], 64);
    tl.template store<2>(c[2], 64);
    tl.template store<3>(c[3], 64);
  } else if constexpr (T == 8) {
    constexpr int C0 = 2 * Odd, C1 = 2 * Odd + 1;
    tl.template zero<C0>();
    tl.template zero<C1>();
    tl.template load<4>(au, as);
    tl.template load<6>(xr, 64);
    tl.template dp<C0, 4, 6>();
    tl.template load<5>(au + 64, as);
    tl.template load<7>(xr + kTileRecord, 64);
    tl.template dp<C1, 5, 7>();
    tl.template store<C0>(c[0], 64);
    tl.template store<C1>(c[1], 64);
  } else {
    static_assert(T == 4);
    constexpr int C0 = Odd;
    tl.template zero<C0>();
    tl.template load<4>(au, as);
    tl.template load<6>(xr, 64);
    tl.template dp<C0, 4, 6>();
    tl.template load<5>(au + 64, as);
    tl.template load<7>(xr + kTileRecord, 64);
    tl.template dp<C0, 5, 7>();
    tl.template store<C0>(c[0], 64);
  }
}

// The records the next unpack reads (the next chunk of these rows, else the next rows' first chunk), prefetched a few
// lines at a time while this chunk's tiles and fold run: the hardware prefetcher stops running ahead while no load
// of the stream issues, and the unpack then waited on memory (a streamed 49152x576 Q8_0, 8 rows: 7.4 ms against 2.0
// for the unpack alone and 1.6 for the tiles alone).
struct Ahead {
  const uint8_t* base = nullptr;
  int64_t stride = 0, bytes = 0, off = 0, per_step = 0;
  int rows = 0, r = 0;
  void set(const Matrix& w, int64_t g0, int64_t u1, int64_t steps) {
    int64_t row0 = g0, v0 = u1;
    if (u1 >= w.units) {
      row0 = g0 + kRows;
      v0 = 0;
    }
    rows = int(std::clamp<int64_t>(w.rows - row0, 0, kRows));
    stride = w.row_bytes();
    base = w.records() + row0 * stride + v0 * w.record_bytes;
    bytes = std::min(kChunkUnits, w.units - v0) * w.record_bytes + 63;
    r = 0;
    off = 0;
    const int64_t lines = rows * ((bytes + 63) / 64);
    per_step = steps > 0 ? (lines + steps - 1) / steps : lines;
  }
  __attribute__((target(GENESIS_INT8_TARGET), always_inline)) inline void step() {
    for (int64_t i = 0; i < per_step && r < rows; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(base + r * stride + off), _MM_HINT_T0);
      off += 64;
      if (off >= bytes) {
        off = 0;
        ++r;
      }
    }
  }
};

// Per 16 weight rows and chunk of units: unpack, then for each group of x's rows the chunk's tiles, each unit folded
// while the next one's tiles run; the rows' lanes carried between chunks in `lanes`.
template <Format F, int T, class Tiles>
__attribute__((target(GENESIS_INT8_TARGET))) void drive(Tiles& tl, const Matrix& w, const Packed& x, float* y,
                                                        int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int P = 16 / T, Q = 4 / P;
  alignas(64) uint8_t a[kRows * kAStride];
  alignas(64) float ds[kRows * kChunkUnits * 8];
  alignas(64) int32_t c[2][4][kRows][16];  // two units' C tiles: one folded while the next one's tiles run
  thread_local std::vector<float> lanes;   // [group][row][16]
  lanes.resize(size_t(x.groups) * kRows * 16);
  __m512i idx[Q];
  for (int q = 0; q < Q; ++q) idx[q] = spread<T>(q);
  for (int64_t g0 = r0; g0 < r1; g0 += kRows) {
    const int rn = int(std::min<int64_t>(kRows, r1 - g0));
    for (int64_t u0 = 0; u0 < w.units; u0 += kChunkUnits) {
      const int64_t u1 = std::min(w.units, u0 + kChunkUnits);
      unpack(w, g0, rn, u0, u1, a, ds);
      Ahead ahead;
      ahead.set(w, g0, u1, u1 - u0);
      for (int g = 0; g < x.groups; ++g) {
        float* lg = lanes.data() + size_t(g) * kRows * 16;
        __m512 acc[kRows];
        for (int r = 0; r < kRows; ++r) acc[r] = u0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(lg + r * 16);
        for (int64_t u = u0; u <= u1; ++u) {
          if (u < u1) {
            if (u & 1)
              unit_tiles<T, 1>(tl, a + (u - u0) * 128, x, g, u, c[1]);
            else
              unit_tiles<T, 0>(tl, a + (u - u0) * 128, x, g, u, c[0]);
          }
          if (u > u0) fold<F, T>(c[(u - 1) & 1], x, g, u - 1, ds + (u - 1 - u0) * 8, idx, acc);
          if (g == 0 && u < u1) ahead.step();
        }
        for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(lg + r * 16, acc[r]);
      }
    }
    for (int g = 0; g < x.groups; ++g) {
      const float* lg = lanes.data() + size_t(g) * kRows * 16;
      const int tn = std::min(T, x.n - g * T);
      for (int t = 0; t < tn; ++t) {
        float* yt = y + (int64_t(g) * T + t) * ldy + g0;
        for (int r = 0; r < rn; ++r) {
          float v = lg[r * 16 + t];
          for (int p = 1; p < P; ++p) v += lg[r * 16 + p * T + t];
          yt[r] = v;
        }
      }
    }
  }
}

template <int T>
__attribute__((target(GENESIS_INT8_TARGET))) void run_t(const Matrix& w, const Packed& x, float* y, int64_t ldy,
                                                        int64_t r0, int64_t r1, bool emulated) {
  auto go = [&](auto& tl) {
    switch (w.format) {
      case Format::q8_0: drive<Format::q8_0, T>(tl, w, x, y, ldy, r0, r1); return;
      case Format::q4_0: drive<Format::q4_0, T>(tl, w, x, y, ldy, r0, r1); return;
      case Format::q4_1: drive<Format::q4_1, T>(tl, w, x, y, ldy, r0, r1); return;
      default: fail("kq_gemv tiles: {} is not a format of the int8 tiles", format_name(w.format));
    }
  };
  if (emulated) {
    SoftTiles<T> tl;
    go(tl);
  } else {
    HardTiles<T> tl;
    go(tl);
  }
}

}  // namespace

bool emulation_available() {
  return cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512vl) &&
         cpu::mayiuse(cpu::Isa::avx512dq) && cpu::mayiuse(cpu::Isa::f16c) && cpu::mayiuse(cpu::Isa::fma);
}

bool available() {
  static const bool a = !env_off("GENESIS_AMX") && !env_off("GENESIS_AMX_INT8") && emulation_available() &&
                        cpu::mayiuse(cpu::Isa::amx_tile) && cpu::mayiuse(cpu::Isa::amx_int8);
  return a;
}

bool serves(Format f) { return f == Format::q8_0 || f == Format::q4_0 || f == Format::q4_1; }

int64_t min_rows() {
  static const int64_t m = [] {
    const char* env = std::getenv("GENESIS_AMX_INT8_ROWS");
    return env ? std::max<int64_t>(1, std::atoll(env)) : kDefaultMinRows;
  }();
  return m;
}

void pack(const Activations& a, Packed& p) {
  if (!serves(a.format))
    fail("kq_gemv tiles: {} activations are not a format of the int8 tiles", format_name(a.format));
  if (a.n < 1 || a.units < 1) fail("kq_gemv tiles: {} activation rows of {} units", a.n, a.units);
  p.format = a.format;
  p.n = a.n;
  p.units = a.units;
  p.t = a.n <= 4 ? 4 : a.n <= 8 ? 8 : 16;
  p.groups = (a.n + p.t - 1) / p.t;
  const int T = p.t, P = 16 / T;
  p.data.assign(size_t(p.groups) * size_t(p.units) * size_t(p.b_tiles()) * kTileRecord, 0);
  for (int g = 0; g < p.groups; ++g)
    for (int64_t u = 0; u < p.units; ++u) {
      const int tn = std::min(T, a.n - g * T);
      for (int b = 0; b < 4; ++b) {
        // the B tile of block b, its rows (b's dwords k = 0..7) and columns; the C tile whose columns it feeds
        const int j = T == 16 ? b : b / 2, row0 = T == 16 ? 0 : 8 * (b % 2), q = T == 4 ? 0 : j;
        const int col0 = (T == 16 ? 0 : (b - q * P)) * T;
        uint8_t* tile = p.record(g, u, j);
        uint8_t* meta = p.record(g, u, q);
        for (int t = 0; t < tn; ++t) {
          const uint8_t* xr = a.data.data() + (size_t(u) * size_t(a.n) + size_t(g * T + t)) * kTokenRecord;
          const int col = col0 + t;
          for (int k = 0; k < 8; ++k)
            std::memcpy(tile + (row0 + k) * 64 + 4 * col, xr + 64 * (k / 4) + 4 * (b + 4 * (k % 4)), 4);
          std::memcpy(meta + kRecDx + 4 * col, xr + layout::kXDx + 4 * b, 4);
          std::memcpy(meta + kRecCorr + 4 * col, xr + layout::kXCorr + 4 * b, 4);
          std::memcpy(meta + kRecSx + 4 * col, xr + layout::kXSx + 4 * b, 4);
        }
      }
    }
}

void run_rows(const Matrix& w, const Packed& x, float* y, int64_t ldy, int64_t r0, int64_t r1, bool emulated) {
  if (w.format != x.format || w.units != x.units || x.n < 1)
    fail("kq_gemv tiles: {} activations of {} units for a {} matrix of {} units", format_name(x.format), x.units,
         format_name(w.format), w.units);
  if (r0 < 0 || r1 > w.rows || r0 > r1) fail("kq_gemv tiles: rows [{}, {}) of {}", r0, r1, w.rows);
  if (r0 == r1) return;
  if (emulated && !emulation_available()) fail("kq_gemv tiles: the emulated tiles need AVX-512 F/BW/VL/DQ");
  if (!emulated && !available())
    fail("kq_gemv tiles: this CPU (or GENESIS_MAX_ISA / GENESIS_AMX) gives no AMX int8 tiles");
  switch (x.t) {
    case 4: run_t<4>(w, x, y, ldy, r0, r1, emulated); return;
    case 8: run_t<8>(w, x, y, ldy, r0, r1, emulated); return;
    case 16: run_t<16>(w, x, y, ldy, r0, r1, emulated); return;
    default: fail("kq_gemv tiles: {} rows of x per group", x.t);
  }
}

}  // namespace genesis::kernels::kq_gemv::tiles
