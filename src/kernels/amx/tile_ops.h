// What every AMX driver shares: LDTILECFG's 64-byte configuration, and the tile moves by tile number (the compiler's
// intrinsics take the tile number as an immediate: one branch per tile; gcc writes them as inline assembly, so they
// need no target attribute). Used by the bf16 GEMM (amx_gemm.cpp) and
// kq_gemv's int8 tiles (kq_gemv/tiles.cpp); each adds its own products.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace genesis::kernels::amx {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64 && offsetof(TileConfig, colsb) == 16 && offsetof(TileConfig, rows) == 48,
              "LDTILECFG's 64-byte layout: palette, start_row, 14 reserved, colsb[16], rows[16]");

#define GENESIS_TILE_CASES(T, OP) \
  if constexpr (T == 0) {         \
    OP(0);                        \
  } else if constexpr (T == 1) {  \
    OP(1);                        \
  } else if constexpr (T == 2) {  \
    OP(2);                        \
  } else if constexpr (T == 3) {  \
    OP(3);                        \
  } else if constexpr (T == 4) {  \
    OP(4);                        \
  } else if constexpr (T == 5) {  \
    OP(5);                        \
  } else if constexpr (T == 6) {  \
    OP(6);                        \
  } else {                        \
    static_assert(T == 7);        \
    OP(7);                        \
  }

template <int T>
inline void tile_zero() {
#define GENESIS_OP(t) _tile_zero(t)
  GENESIS_TILE_CASES(T, GENESIS_OP)
#undef GENESIS_OP
}

template <int T>
inline void tile_load(const void* p, int64_t stride) {
#define GENESIS_OP(t) _tile_loadd(t, p, stride)
  GENESIS_TILE_CASES(T, GENESIS_OP)
#undef GENESIS_OP
}

template <int T>
inline void tile_store(void* p, int64_t stride) {
#define GENESIS_OP(t) _tile_stored(t, p, stride)
  GENESIS_TILE_CASES(T, GENESIS_OP)
#undef GENESIS_OP
}

#undef GENESIS_TILE_CASES

}  // namespace genesis::kernels::amx
