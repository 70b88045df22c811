// Expert matrices: quantization at load (bitsandbytes rules, quant::quantize_nf4) into the Linear each mode runs on.
// The kernel path's packing and kernels live in expert_kernel.cpp.
#include "runtime/model/expert_pack.h"

#include <cstdlib>

#include "common/error.h"
#include "kernels/float_dense/float_dense.h"

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
    m.op = kernels::float_dense::make_f32(rows, cols, std::move(w));
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
    m.op = kernels::float_dense::make_f32(q.rows, q.cols, quant::dequantize_nf4(q));
    return m;
  }
  if (opt_.experts == ExpertMode::nf4_kernel) {
    if (q.cols % q.blocksize != 0)
      fail("expert matrix {} [{}, {}]: the NF4 kernels need in-features to be a multiple of the blocksize {}", name,
           q.rows, q.cols, q.blocksize);
    // The packed copy is exact (pack/unpack round-trips); the bitsandbytes layout is not kept (it would double the
    // experts' memory). The model binds it to its kernel set once every expert is loaded.
    m.packed = pack_expert(q, opt_.kernel_path());
    return m;
  }
  m.op = kernels::nf4_gemv::make_reference_linear(std::move(q));
  return m;
}

int64_t expert_row_block() {
  static const int64_t b = [] {
    const char* e = std::getenv("GENESIS_EXPERT_BLOCK");
    if (!e) return kExpertRowBlock;
    const int64_t v = std::atoll(e);
    return v == 16 || v == 32 || v == 64 || v == 128 ? v : kExpertRowBlock;
  }();
  return b;
}

bool fused_experts() {
  static const bool f = [] {
    const char* e = std::getenv("GENESIS_MOE_FUSE");
    return !(e && std::string(e) == "0");
  }();
  return f;
}

}  // namespace genesis::runtime
