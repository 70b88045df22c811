// The kernel path of the experts: packing NF4 matrices for a kernel path and getting the kernels (baseline genome
// of the path) for this model's expert shapes.
#include <fmt/format.h>

#include "common/error.h"
#include "runtime/model/expert_pack.h"

namespace genesis::runtime {

namespace nk = kernels::nf4_gemv;

std::shared_ptr<const nk::PackedWeights> pack_expert(const quant::Nf4Matrix& m, nk::Path path) {
  return std::make_shared<const nk::PackedWeights>(nk::pack(m, path));
}

ExpertKernels make_expert_kernels(const ModelConfig& c, nk::Path path, int blocksize) {
  nk::require_path(path);
  ExpertKernels k;
  const nk::Genome g = nk::Genome::baseline(path);
  k.gate_up = nk::get_kernel(nk::Problem{2 * c.moe_intermediate_size, c.hidden_size, 1, blocksize}, g);
  k.down = nk::get_kernel(nk::Problem{c.hidden_size, c.moe_intermediate_size, 1, blocksize}, g);
  k.id = k.gate_up->id();
  k.source = "baseline genome";
  return k;
}

}  // namespace genesis::runtime
