// The kernel path of the experts: packing NF4 matrices for a kernel path and getting the kernels (baseline genome
// of the path) for this model's expert shapes.
#include <fmt/format.h>

#include "common/error.h"
#include "kb/kb.h"
#include "runtime/model/expert_pack.h"
#include "runtime/model/linear_policy.h"

namespace genesis::runtime {

namespace nk = kernels::nf4_gemv;

std::shared_ptr<const nk::PackedWeights> pack_expert(const quant::Nf4Matrix& m, nk::Path path) {
  return std::make_shared<const nk::PackedWeights>(nk::pack(m, path));
}

ExpertKernels make_expert_kernels(const ModelConfig& c, nk::Path path, int blocksize, const std::string& kb_path) {
  nk::require_path(path);
  ExpertKernels k;
  std::vector<std::string> sources;
  auto one = [&](int64_t M, int64_t K) {
    const nk::Problem pr{M, K, 1, blocksize};
    bool tuned = false;
    const nk::Genome g = genome_for(pr, path, kb_path, &tuned);
    sources.push_back(fmt::format("{} {}", pr.shape(), tuned ? "tuned (knowledge base)" : "baseline genome"));
    return nk::get_kernel(pr, g);
  };
  k.gate_up = one(2 * c.moe_intermediate_size, c.hidden_size);
  k.down = one(c.hidden_size, c.moe_intermediate_size);
  auto gate_up = std::make_shared<nk::KernelSet>(), down = std::make_shared<nk::KernelSet>();
  (*gate_up)[1] = k.gate_up;
  (*down)[1] = k.down;
  for (int t = 2; t <= nk::kMaxTokens; ++t) {
    (*gate_up)[size_t(t)] =
        nk::get_kernel(nk::Problem{2 * c.moe_intermediate_size, c.hidden_size, t, blocksize}, nk::Genome::baseline(path));
    (*down)[size_t(t)] =
        nk::get_kernel(nk::Problem{c.hidden_size, c.moe_intermediate_size, t, blocksize}, nk::Genome::baseline(path));
  }
  k.gate_up_set = std::move(gate_up);
  k.down_set = std::move(down);
  k.id = k.gate_up->id() + ", " + k.down->id();
  k.source = sources[0] + "; " + sources[1];
  return k;
}

}  // namespace genesis::runtime
