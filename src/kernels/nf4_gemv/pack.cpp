// The packed layouts: bitsandbytes NF4 <-> a path's native layout (exact, no re-quantization), and AlignedBuffer.
// Per group of 16 rows, per block: code bytes in steps, then 16 absmax floats. A step covers kps k-values of all
// 16 rows (kps = 2 for the fp32 layout shared by scalar/avx2/avx512fp32, 4 for bf16, 8 for int8); byte
// r * kps/2 + i of a step holds row r's code for k = s*kps + i in its LOW nibble and k = s*kps + kps/2 + i in its
// HIGH nibble — so one shift and one table lookup turn a step into one vector lane per row.
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "kernels/nf4_gemv/nf4_gemv.h"

namespace genesis::kernels::nf4_gemv {

AlignedBuffer::AlignedBuffer(size_t bytes) : n_(bytes) {
  if (bytes == 0) return;
  p_ = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  if (p_ == nullptr) fail("out of memory allocating {} bytes", bytes);
  std::memset(p_, 0, bytes);
}
AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
  o.p_ = nullptr;
  o.n_ = 0;
}
AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_;
    n_ = o.n_;
    o.p_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}
AlignedBuffer::~AlignedBuffer() { std::free(p_); }
AlignedBuffer AlignedBuffer::clone() const {
  AlignedBuffer b(n_);
  if (n_) std::memcpy(b.p_, p_, n_);
  return b;
}

PackedWeights PackedWeights::clone() const {
  PackedWeights p;
  p.path = path;
  p.M = M;
  p.K = K;
  p.blocksize = blocksize;
  p.data = data.clone();
  return p;
}

int k_per_step(Path p) {
  switch (p) {
    case Path::avx512_bf16: return 4;
    case Path::avx512_vnni:
    case Path::avx2_int8:
    case Path::avx2_vnni: return 8;
    default: return 2;
  }
}

void Problem::validate() const {
  if (M < 1 || K < 1) fail("nf4_gemv: shape {}x{} is empty", M, K);
  quant::check_nf4_blocksize(blocksize);
  if (K % blocksize != 0)
    fail("nf4_gemv: K = {} is not a multiple of the blocksize {} (possible: K = {} or {})", K, blocksize,
         K / blocksize * blocksize, (K / blocksize + 1) * blocksize);
  if (tokens < 1 || tokens > kMaxTokens) fail("nf4_gemv: {} tokens requested; possible: 1..{}", tokens, kMaxTokens);
}

std::string Problem::shape() const { return std::to_string(M) + "x" + std::to_string(K); }

PackedWeights pack(const quant::Nf4Matrix& m, Path path) {
  Problem{m.rows, m.cols, 1, m.blocksize}.validate();
  if (m.packed.size() != size_t((m.numel() + 1) / 2) || m.absmax.size() != size_t(m.num_blocks()))
    fail("nf4_gemv: NF4 matrix [{}, {}] has {} code bytes and {} absmax values (expected {} and {})", m.rows, m.cols,
         m.packed.size(), m.absmax.size(), (m.numel() + 1) / 2, m.num_blocks());
  PackedWeights p;
  p.path = path;
  p.M = m.rows;
  p.K = m.cols;
  p.blocksize = m.blocksize;
  const int64_t G = p.groups(), NB = p.blocks(), rec = p.record_bytes(), bs = m.blocksize;
  p.data = AlignedBuffer(size_t(G * NB * rec));
  const int kps = k_per_step(path), half = kps / 2, step_bytes = 8 * kps;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t b = 0; b < NB; ++b) {
      uint8_t* r0 = p.data.data() + (g * NB + b) * rec;
      float* sc = reinterpret_cast<float*>(r0 + 8 * bs);
      for (int r = 0; r < kGroupRows; ++r) {
        const int64_t row = g * kGroupRows + r;
        if (row >= m.rows) continue;  // padded rows: codes 0, absmax 0 -> contribute exactly 0
        sc[r] = m.absmax[size_t((row * m.cols + b * bs) / bs)];
        const uint8_t* src = m.packed.data();
        for (int64_t s = 0; s < bs / kps; ++s)
          for (int i = 0; i < half; ++i) {
            const int64_t k = b * bs + s * kps + i;
            const uint8_t lo = quant::nf4_code_at(src, size_t(row * m.cols + k));
            const uint8_t hi = quant::nf4_code_at(src, size_t(row * m.cols + k + half));
            r0[s * step_bytes + r * half + i] = uint8_t(lo | (hi << 4));
          }
      }
    }
  return p;
}

quant::Nf4Matrix unpack(const PackedWeights& p) {
  quant::Nf4Matrix m;
  m.rows = p.M;
  m.cols = p.K;
  m.blocksize = p.blocksize;
  m.packed.assign(size_t((p.M * p.K + 1) / 2), 0);
  m.absmax.assign(size_t(m.num_blocks()), 0.0f);
  const int64_t NB = p.blocks(), rec = p.record_bytes(), bs = p.blocksize;
  const int kps = k_per_step(p.path), half = kps / 2, step_bytes = 8 * kps;
  for (int64_t row = 0; row < p.M; ++row) {
    const int64_t g = row / kGroupRows, r = row % kGroupRows;
    for (int64_t b = 0; b < NB; ++b) {
      const uint8_t* r0 = p.data.data() + (g * NB + b) * rec;
      m.absmax[size_t((row * p.K + b * bs) / bs)] = reinterpret_cast<const float*>(r0 + 8 * bs)[r];
      for (int64_t s = 0; s < bs / kps; ++s)
        for (int i = 0; i < half; ++i) {
          const uint8_t byte = r0[s * step_bytes + r * half + i];
          for (int h = 0; h < 2; ++h) {
            const int64_t idx = row * p.K + b * bs + s * kps + i + h * half;
            const uint8_t code = h ? (byte >> 4) : (byte & 0x0F);
            uint8_t& dst = m.packed[size_t(idx >> 1)];
            dst = (idx & 1) ? uint8_t((dst & 0xF0) | code) : uint8_t((dst & 0x0F) | (code << 4));
          }
        }
    }
  }
  return m;
}

}  // namespace genesis::kernels::nf4_gemv
