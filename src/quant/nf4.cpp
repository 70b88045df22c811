// Scalar reference NF4 quantize / dequantize and bitsandbytes' double-quantized absmax (encode and decode).
#include "quant/nf4.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace genesis::quant {
namespace {

// Midpoints between consecutive codes, rounded to float as bitsandbytes' decision tree constants are.
std::array<float, 15> nf4_midpoints() {
  std::array<float, 15> m{};
  for (int i = 0; i < 15; ++i) m[i] = float((double(kNf4Codes[i]) + double(kNf4Codes[i + 1])) / 2.0);
  return m;
}

}  // namespace

void check_nf4_blocksize(int blocksize) {
  if (blocksize < 32 || blocksize > kNf4MaxBlocksize || blocksize % 32 != 0)
    fail("NF4 blocksize {} is not supported: it must be a multiple of 32 between 32 and {}", blocksize,
         kNf4MaxBlocksize);
}

uint8_t nf4_nearest_code(float v) {
  static const std::array<float, 15> mid = nf4_midpoints();
  uint8_t c = 0;
  for (float m : mid) c += (v > m) ? 1 : 0;
  return c;
}

float Nf4Matrix::at(int64_t r, int64_t c) const {
  const int64_t i = r * cols + c;
  return kNf4Codes[nf4_code_at(packed.data(), size_t(i))] * absmax[size_t(i / blocksize)];
}

Nf4Matrix quantize_nf4(std::span<const float> w, int64_t rows, int64_t cols, int blocksize) {
  check_nf4_blocksize(blocksize);
  if (rows <= 0 || cols <= 0) fail("cannot quantize an empty matrix [{}, {}]", rows, cols);
  if (int64_t(w.size()) != rows * cols)
    fail("quantize_nf4: {} values given for a [{}, {}] matrix", w.size(), rows, cols);
  Nf4Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.blocksize = blocksize;
  const int64_t n = rows * cols;
  m.packed.assign(size_t((n + 1) / 2), 0);
  static const std::array<float, 15> kMid = nf4_midpoints();
  const std::array<float, 15> mid = kMid;
  std::vector<uint8_t> codes(static_cast<size_t>(blocksize));
  m.absmax.resize(size_t(m.num_blocks()));
  for (int64_t b = 0; b < m.num_blocks(); ++b) {
    const int64_t lo = b * blocksize, hi = std::min(n, lo + blocksize);
    float amax = 0.0f;
    for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(w[size_t(i)]));
    // bitsandbytes (0.50, quantize_4bit) scales whole blocks by the reciprocal of absmax but divides the partial last
    // block by its absmax clamped to 1e-38, and stores that clamped value: followed here for identical bytes.
    const bool partial = hi - lo < blocksize;
    if (partial) amax = std::max(amax, 1e-38f);
    m.absmax[size_t(b)] = amax;
    const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
    // Codes of the block first (a loop the compiler vectorizes: 15 compares per value), then the nibbles.
    const float* wb = w.data() + lo;
    uint8_t* cb = codes.data();
    const int64_t len = hi - lo;
    auto code = [&mid](float v) {
      uint8_t c = 0;
      for (float mp : mid) c += (v > mp) ? 1 : 0;
      return c;
    };
    if (partial) {
      for (int64_t i = 0; i < len; ++i) cb[i] = code(wb[i] / amax);
    } else if (amax > 0.0f) {
      for (int64_t i = 0; i < len; ++i) cb[i] = code(wb[i] * inv);
    } else {
      std::fill(cb, cb + len, uint8_t(7));
    }
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t code = codes[size_t(i - lo)];
      uint8_t& byte = m.packed[size_t(i >> 1)];
      byte = (i & 1) ? uint8_t((byte & 0xF0) | code) : uint8_t((byte & 0x0F) | (code << 4));
    }
  }
  return m;
}

std::vector<float> dequantize_nf4(const Nf4Matrix& m) {
  std::vector<float> out(size_t(m.numel()));
  for (int64_t i = 0; i < m.numel(); ++i)
    out[size_t(i)] = kNf4Codes[nf4_code_at(m.packed.data(), size_t(i))] * m.absmax[size_t(i / m.blocksize)];
  return out;
}

std::vector<float> decode_double_quant(const Nf4DoubleQuant& dq) {
  if (dq.nested_blocksize <= 0) fail("double quantization: nested blocksize {} is invalid", dq.nested_blocksize);
  const size_t need = (dq.q.size() + size_t(dq.nested_blocksize) - 1) / size_t(dq.nested_blocksize);
  if (dq.nested_absmax.size() < need)
    fail("double quantization: {} nested absmax values for {} blocks of {} (need {})", dq.nested_absmax.size(),
         dq.q.size(), dq.nested_blocksize, need);
  std::vector<float> out(dq.q.size());
  for (size_t i = 0; i < dq.q.size(); ++i)
    out[i] = dq.nested_quant_map[dq.q[i]] * dq.nested_absmax[i / size_t(dq.nested_blocksize)] + dq.offset;
  return out;
}

std::array<float, 256> dynamic_map_signed() {
  // Mirrors bitsandbytes.functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), computed in
  // float32 as torch does (linspace, midpoint means, scaling by a power of ten). torch's CPU linspace evaluates
  // start + step * i (and end - step * (n - 1 - i) past the middle) with a fused multiply-add in its AVX2/AVX512
  // builds; without the fma, 1-ulp differences appear in 22 of the 256 entries (checked against bitsandbytes 0.50.2
  // on torch 2.15, whose map is the same under ATEN_CPU_CAPABILITY=avx2 and avx512).
  constexpr int kMaxExp = 7, kTotal = 8, kNonSign = kTotal - 1;
  std::vector<float> data;
  auto linspace = [](float a, float b, int n) {
    std::vector<float> v(static_cast<size_t>(n));
    const float step = (b - a) / float(n - 1);
    const int half = n / 2;
    for (int i = 0; i < n; ++i)
      v[size_t(i)] = i < half ? std::fma(step, float(i), a) : std::fma(-step, float(n - i - 1), b);
    return v;
  };
  for (int i = 0; i < kMaxExp; ++i) {
    const int items = (1 << (i + kNonSign - kMaxExp)) + 1;
    const auto bounds = linspace(0.1f, 1.0f, items);
    const float scale = float(std::pow(10.0, double(-(kMaxExp - 1) + i)));
    for (size_t j = 0; j + 1 < bounds.size(); ++j) {
      const float mean = (bounds[j] + bounds[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      data.push_back(-(scale * mean));
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  while (data.size() < 256) data.push_back(0.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

Nf4DoubleQuant encode_double_quant(std::span<const float> absmax, int nested_blocksize) {
  Nf4DoubleQuant dq;
  dq.nested_blocksize = nested_blocksize;
  dq.nested_quant_map = dynamic_map_signed();
  double sum = 0.0;
  for (float a : absmax) sum += a;
  dq.offset = absmax.empty() ? 0.0f : float(sum / double(absmax.size()));
  const size_t n = absmax.size(), nb = (n + size_t(nested_blocksize) - 1) / size_t(nested_blocksize);
  dq.q.resize(n);
  dq.nested_absmax.resize(nb);
  const auto& map = dq.nested_quant_map;
  for (size_t b = 0; b < nb; ++b) {
    const size_t lo = b * size_t(nested_blocksize), hi = std::min(n, lo + size_t(nested_blocksize));
    float amax = 0.0f;
    for (size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(absmax[i] - dq.offset));
    dq.nested_absmax[b] = amax;
    for (size_t i = lo; i < hi; ++i) {
      const float v = amax > 0.0f ? (absmax[i] - dq.offset) / amax : 0.0f;
      auto it = std::lower_bound(map.begin(), map.end(), v);
      size_t idx = size_t(it - map.begin());
      if (idx == map.size()) idx = map.size() - 1;
      if (idx > 0 && std::fabs(map[idx - 1] - v) <= std::fabs(map[idx] - v)) --idx;
      dq.q[i] = uint8_t(idx);
    }
  }
  return dq;
}

}  // namespace genesis::quant
