// The nf4_gemv family's facts: which paths exist and which this CPU may run, the constant tables the generated code
// reads, the fp64 reference, each path's documented error bound, and bytes / flops for the roofline.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "cpu/isa.h"
#include "kernels/nf4_gemv/conf.h"
#include "kernels/nf4_gemv/family.h"
#include "quant/half.h"

namespace genesis::kernels::nf4_gemv {

namespace {

struct alignas(64) Consts {
  float fp32_tab[16];     // the 16 codes
  uint16_t bf16_tab[32];  // bf16(code[i & 15]): vpermw indexes with 5 bits
  uint8_t i8_tab[64];     // round(127 * code) + 128 as u8, by index & 15: serves vpshufb (per 16-byte lane, 4-bit
                          // index) and vpermb (64 entries, 6-bit index) alike
  uint8_t mask[64];       // 0x0F
  int8_t i8s_tab[32];     // round(127 * code) as s8, by index & 15 (avx2int8: vpshufb per 16-byte lane)
  int16_t ones16[16];     // avx2int8: vpmaddwd pairs -> dwords
};

Consts make_consts() {
  Consts c{};
  for (int i = 0; i < 16; ++i) c.fp32_tab[i] = quant::kNf4Codes[size_t(i)];
  for (int i = 0; i < 32; ++i) c.bf16_tab[i] = quant::f32_to_bf16(quant::kNf4Codes[size_t(i & 15)]);
  for (int i = 0; i < 64; ++i) c.i8_tab[i] = uint8_t(int8_code(i & 15) + 128);
  std::memset(c.mask, 0x0F, sizeof(c.mask));
  for (int i = 0; i < 32; ++i) c.i8s_tab[i] = int8_t(int8_code(i & 15));
  for (int i = 0; i < 16; ++i) c.ones16[i] = 1;
  return c;
}

}  // namespace

int int8_code(int code) { return int(std::lrint(127.0 * double(quant::kNf4Codes[size_t(code)]))); }

const void* kernel_constants() {
  static const Consts c = make_consts();
  return &c;
}
size_t consts_table_offset(Path p) {
  switch (p) {
    case Path::avx512_bf16: return offsetof(Consts, bf16_tab);
    case Path::avx512_vnni:
    case Path::avx2_vnni: return offsetof(Consts, i8_tab);
    case Path::avx2_int8: return offsetof(Consts, i8s_tab);
    default: return offsetof(Consts, fp32_tab);
  }
}
size_t consts_mask_offset() { return offsetof(Consts, mask); }
size_t consts_ones16_offset() { return offsetof(Consts, ones16); }

std::vector<Path> available_paths() {
  std::vector<Path> out;
  for (Path p : {Path::avx512_vnni, Path::avx512_bf16, Path::avx512_fp32, Path::avx2_vnni, Path::avx2_int8, Path::avx2,
                 Path::scalar})
    if (isa_supports(cpu::host_isa(), p)) out.push_back(p);
  return out;
}

Path best_path() { return available_paths().front(); }

void require_path(Path p) {
  if (isa_supports(cpu::host_isa(), p)) return;
  std::string possible;
  for (Path q : available_paths()) possible += fmt::format("{}{}", possible.empty() ? "" : ", ", path_name(q));
  const std::string cap = cpu::max_isa_setting();
  fail("nf4_gemv path '{}' needs ISA this CPU{} does not offer; possible paths here: {}", path_name(p),
       cap.empty() ? "" : fmt::format(" (capped by GENESIS_MAX_ISA={})", cap), possible);
}

void reference(const quant::Nf4Matrix& w, const float* x, int tokens, double* y) {
  for (int t = 0; t < tokens; ++t)
    for (int64_t m = 0; m < w.rows; ++m) {
      double s = 0;
      for (int64_t k = 0; k < w.cols; ++k) {
        const int64_t i = m * w.cols + k;
        s += double(quant::kNf4Codes[quant::nf4_code_at(w.packed.data(), size_t(i))]) *
             double(w.absmax[size_t(i / w.blocksize)]) * double(x[size_t(t) * size_t(w.cols) + size_t(k)]);
      }
      y[size_t(t) * size_t(w.rows) + size_t(m)] = s;
    }
}

double max_int8_code_error() {
  double e = 0;
  for (int i = 0; i < 16; ++i) e = std::max(e, std::fabs(double(quant::kNf4Codes[size_t(i)]) - int8_code(i) / 127.0));
  return e;
}

double error_bound(Path p, const quant::Nf4Matrix& w, const float* x, int64_t m, int t) {
  const int64_t K = w.cols, bs = w.blocksize, nb = K / bs;
  const float* xt = x + size_t(t) * size_t(K);
  constexpr double u = 1.0 / (1 << 24);  // fp32 unit roundoff
  double S = 0, S2 = 0, q = 0;
  const double ew = max_int8_code_error();
  for (int64_t b = 0; b < nb; ++b) {
    double xmax = 0;
    for (int64_t k = b * bs; k < (b + 1) * bs; ++k) xmax = std::max(xmax, std::fabs(double(xt[k])));
    const double xs = xmax / 127.0;
    const double amax = w.absmax[size_t((m * K + b * bs) / bs)];
    for (int64_t k = b * bs; k < (b + 1) * bs; ++k) {
      const double c = std::fabs(double(quant::kNf4Codes[quant::nf4_code_at(w.packed.data(), size_t(m * K + k))]));
      const double ax = std::fabs(double(xt[k]));
      S += c * amax * ax;
      S2 += amax * (c + ew) * (ax + xs);
      q += amax * (ew * ax + (c + ew) * xs / 2);
    }
  }
  const double chain = double(bs + nb + 4);
  switch (p) {
    case Path::scalar:
    case Path::avx2:
    case Path::avx512_fp32: return 1.01 * chain * u * S + 1e-30;
    case Path::avx512_bf16: return 1.01 * ((1.0 / 256 + 1.0 / 65536) * S + 2 * chain * u * S) + double(K) * 1e-36;
    case Path::avx512_vnni:
    case Path::avx2_int8:
    case Path::avx2_vnni: return 1.05 * q + 4 * chain * u * S2 + 1e-30;
  }
  return 0;
}

std::string error_bound_text(Path p) {
  switch (p) {
    case Path::scalar:
    case Path::avx2:
    case Path::avx512_fp32:
      return "|y - ref| <= 1.01 (blocksize + K/blocksize + 4) 2^-24 sum|w x| (fp32 accumulation only)";
    case Path::avx512_bf16:
      return "|y - ref| <= 1.01 ((2^-8 + 2^-16) + 2 (blocksize + K/blocksize + 4) 2^-24) sum|w x| "
             "(codes and activations rounded to bf16)";
    case Path::avx512_vnni:
    case Path::avx2_int8:
    case Path::avx2_vnni:
      return fmt::format(
          "|y - ref| <= 1.05 sum_k absmax (e_w |x_k| + (|code_k| + e_w) s_b / 2) + fp32 terms, with e_w = {:.5f} "
          "(codes as round(127 code)/127) and s_b = max|x in block| / 127 (activations as int8)",
          max_int8_code_error());
  }
  return "";
}

std::vector<PathInfo> path_info() {
  std::vector<PathInfo> out;
  for (Path p : {Path::avx512_vnni, Path::avx512_bf16, Path::avx512_fp32, Path::avx2_vnni, Path::avx2_int8, Path::avx2,
                 Path::scalar}) {
    const char* needs = p == Path::avx512_vnni   ? "AVX512-F/BW/VNNI (JIT)"
                        : p == Path::avx2_vnni   ? "AVX2+FMA+AVX-VNNI (JIT)"
                        : p == Path::avx2_int8   ? "AVX2+FMA (JIT)"
                        : p == Path::avx512_bf16 ? "AVX512-F/BW/BF16 (JIT)"
                        : p == Path::avx512_fp32 ? "AVX512-F (JIT)"
                        : p == Path::avx2        ? "AVX2+FMA (compiled)"
                                                 : "x86-64 (compiled)";
    out.push_back({p, needs, isa_supports(cpu::host_isa(), p), error_bound_text(p)});
  }
  return out;
}

double bytes_moved(const Problem& pr, Path p) {
  const double groups = double((pr.M + kGroupRows - 1) / kGroupRows);
  const double weights = groups * double(pr.K / pr.blocksize) * (8.0 * pr.blocksize + 64.0);
  const double x_elem = int8_layout(p) ? 1.0 : p == Path::avx512_bf16 ? 2.0 : 4.0;
  return weights + double(pr.tokens) * (double(pr.K) * x_elem + double(pr.M) * 4.0);
}

double flops(const Problem& pr) { return 2.0 * double(pr.M) * double(pr.K) * double(pr.tokens); }

}  // namespace genesis::kernels::nf4_gemv
