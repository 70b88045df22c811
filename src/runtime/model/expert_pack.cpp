// Expert matrices: quantization at load (bitsandbytes rules, quant::quantize_nf4) and the fp32 / NF4-reference
// row-block products. The kernel path's packing and products live in expert_kernel.cpp.
#include "runtime/model/expert_pack.h"

#include <cblas.h>

#include "common/error.h"

namespace genesis::runtime {

ExpertPacker::ExpertPacker(const LoadOptions& opt, const ModelConfig& c) : opt_(opt) {
  if (opt.experts != ExpertMode::f32 && c.is_moe()) {
    quant::check_nf4_blocksize(opt.nf4_blocksize);
    for (int64_t k : {c.hidden_size, c.moe_intermediate_size})
      if (k % opt.nf4_blocksize != 0)
        fail("NF4 experts need hidden_size ({}) and the expert intermediate size ({}) to be multiples of the NF4 "
             "blocksize {}; use fp32 experts for this model",
             c.hidden_size, c.moe_intermediate_size, opt.nf4_blocksize);
  }
}

ExpertMatrix ExpertPacker::make(std::vector<float> w, int64_t rows, int64_t cols, const std::string& name) const {
  if (opt_.experts == ExpertMode::f32) {
    ExpertMatrix m;
    m.rows = rows, m.cols = cols;
    m.f32 = std::move(w);
    return m;
  }
  // Rows are whole blocks (cols % blocksize == 0, checked above), so quantizing gate and up stacked is the same as
  // quantizing each alone, as bitsandbytes does per Linear4bit.
  return make_nf4(quant::quantize_nf4(w, rows, cols, opt_.nf4_blocksize), name);
}

ExpertMatrix ExpertPacker::make_nf4(quant::Nf4Matrix q, const std::string& name) const {
  ExpertMatrix m;
  m.rows = q.rows, m.cols = q.cols;
  if (opt_.experts == ExpertMode::f32) {
    m.f32 = quant::dequantize_nf4(q);
    return m;
  }
  if (opt_.experts == ExpertMode::nf4_kernel) {
    if (q.cols % q.blocksize != 0)
      fail("expert matrix {} [{}, {}]: the NF4 kernels need in-features to be a multiple of the blocksize {}", name,
           q.rows, q.cols, q.blocksize);
    m.packed = pack_expert(q, opt_.kernel_path());
    // The packed copy is exact (pack/unpack round-trips); keeping the bitsandbytes layout too would double the
    // experts' memory. Only the shape and blocksize stay.
    m.nf4.rows = q.rows, m.nf4.cols = q.cols, m.nf4.blocksize = q.blocksize;
    return m;
  }
  m.nf4 = std::move(q);
  return m;
}

namespace {

// Reference NF4 product: each row dequantized into a small buffer, then an fp32 dot product.
void nf4_reference_rows(const quant::Nf4Matrix& m, const float* x, float* y, int64_t r0, int64_t r1) {
  std::vector<float> row(size_t(m.cols));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * m.cols;
    for (int64_t c = 0; c < m.cols; ++c) {
      const int64_t i = base + c;
      row[size_t(c)] = quant::kNf4Codes[quant::nf4_code_at(m.packed.data(), size_t(i))] *
                       m.absmax[size_t(i / m.blocksize)];
    }
    y[r] = cblas_sdot(int(m.cols), row.data(), 1, x, 1);
  }
}

}  // namespace

void expert_rows(const ExpertMatrix& m, ExpertMode mode, const kernels::nf4_gemv::Kernel* kernel, const float* x,
                 float* y, int64_t r0, int64_t r1, int tokens, const kernels::nf4_gemv::PreparedActivations* xp) {
  if (m.gq) {  // kept as the GGUF file stores it
    namespace gg = kernels::ggml_gemv;
    static const gg::Path path = gg::best_path();
    const int64_t split = m.gq->rows;  // gq2 (if any) holds the rows from here on
    r1 = std::min(r1, m.rows);
    if (r0 < split) {
      if (!m.gq2) {
        gg::gemv_rows(*m.gq, x, y, tokens, r0, std::min(r1, split), path);
        return;
      }
      // Two matrices stacked: each token's y row has m.rows entries, neither matrix's own row count.
      for (int t = 0; t < tokens; ++t)
        gg::gemv_rows(*m.gq, x + t * m.cols, y + t * m.rows, 1, r0, std::min(r1, split), path);
    }
    // gq2's rows are numbered from 0: shift y so that its row 0 lands on row `split`.
    if (m.gq2 && r1 > split)
      for (int t = 0; t < tokens; ++t)
        gg::gemv_rows(*m.gq2, x + t * m.cols, y + t * m.rows + split, 1, std::max(r0, split) - split, r1 - split,
                      path);
    return;
  }
  switch (mode) {
    case ExpertMode::f32:
      if (tokens == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, int(r1 - r0), int(m.cols), 1.0f, m.f32.data() + r0 * m.cols,
                    int(m.cols), x, 1, 0.0f, y + r0, 1);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, int(r1 - r0), int(m.cols), 1.0f, x,
                    int(m.cols), m.f32.data() + r0 * m.cols, int(m.cols), 0.0f, y + r0, int(m.rows));
      return;
    case ExpertMode::nf4_reference:
      for (int t = 0; t < tokens; ++t) nf4_reference_rows(m.nf4, x + t * m.cols, y + t * m.rows, r0, r1);
      return;
    case ExpertMode::nf4_kernel: {
      const int64_t g0 = r0 / kernels::nf4_gemv::kGroupRows;
      const int64_t g1 = (r1 + kernels::nf4_gemv::kGroupRows - 1) / kernels::nf4_gemv::kGroupRows;
      if (xp) kernel->run_prepared(*m.packed, *xp, y, g0, g1);
      else kernel->run_groups(*m.packed, x, y, g0, g1);
      return;
    }
  }
}

}  // namespace genesis::runtime
