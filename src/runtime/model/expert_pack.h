// Expert matrices as the forward pass holds them (fp32, NF4 + reference product, NF4 packed for a kernel, each behind
// the Linear seam) and the NF4 kernels that serve them.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model/weights.h"

namespace genesis::runtime {

// Rows per MoE task: a multiple of the kernels' 16-row groups.
inline constexpr int64_t kExpertRowBlock = 64;
// The rows per MoE task a step takes: kExpertRowBlock, or GENESIS_EXPERT_BLOCK (16, 32, 64 or 128) for A/B runs of
// the region's tail on many cores (finer tasks: a shorter wait for the last one; coarser: fewer claims and calls).
int64_t expert_row_block();
// Whether a MoE layer's gate_up and down products run as one parallel region (down tasks wait for their unit's
// gate_up), default; GENESIS_MOE_FUSE=0 runs two regions (A/B runs).
bool fused_experts();

class ExpertPacker {
 public:
  ExpertPacker(const LoadOptions& opt, const ModelConfig& c);
  // w: row-major [rows, cols] fp32. `name` is for error messages.
  ExpertMatrix make(std::vector<float> w, int64_t rows, int64_t cols, const std::string& name) const;
  // From NF4 as stored (a bitsandbytes checkpoint): dequantized for f32 mode, packed for nf4_kernel.
  ExpertMatrix make_nf4(quant::Nf4Matrix m, const std::string& name) const;

 private:
  LoadOptions opt_;
};

// The kernels serving experts of the shapes in `w` (nf4_kernel mode): per shape, one for each number of rows
// (tokens) that share a pass over an expert's weights, 1..kMaxTokens.
struct ExpertKernels {
  using KernelPtr = std::shared_ptr<const kernels::nf4_gemv::Kernel>;
  KernelPtr gate_up, down;  // one row: the knowledge base's genome when it has one, else the baseline
  // [T] serves T rows at once (baseline genome for T > 1); [1] is gate_up / down.
  std::shared_ptr<const kernels::nf4_gemv::KernelSet> gate_up_set, down_set;
  std::string id;      // kernel id (path + genome hash) of gate_up, e.g. "nf4_gemv__avx512vnni__3fa1c2"
  std::string source;  // "baseline" or where the genome came from
};

// Packs an Nf4Matrix for a kernel path (defined with the kernels; see expert_kernel.cpp).
std::shared_ptr<const kernels::nf4_gemv::PackedWeights> pack_expert(const quant::Nf4Matrix& m,
                                                                    kernels::nf4_gemv::Path path);

// Kernels for this model's expert shapes on `path`: per shape the knowledge base's best genome for this CPU and
// build (when kb_path is non-empty and holds one), else the path's baseline genome.
ExpertKernels make_expert_kernels(const ModelConfig& c, kernels::nf4_gemv::Path path, int blocksize,
                                  const std::string& kb_path);

}  // namespace genesis::runtime
