// Until the nf4_gemv kernels' implementation is on main, the kernel path of the experts is unavailable: selecting it
// is refused with a clear message (nf4-reference serves the experts instead). Replaced by expert_kernel.cpp.
#include "common/error.h"
#include "runtime/model/expert_pack.h"

namespace genesis::runtime {

std::shared_ptr<const kernels::nf4_gemv::PackedWeights> pack_expert(const quant::Nf4Matrix&,
                                                                    kernels::nf4_gemv::Path) {
  fail("the NF4 kernel path is not in this build yet; use the nf4-reference or f32 expert mode");
}

ExpertKernels make_expert_kernels(const ModelConfig&, kernels::nf4_gemv::Path, int) {
  fail("the NF4 kernel path is not in this build yet; use the nf4-reference or f32 expert mode");
}

}  // namespace genesis::runtime
