// The hybrid mode in a build without the CUDA component: asking for it is a clear error (gpu.h).
#include "common/error.h"
#include "runtime/model/forward.h"

namespace genesis::runtime {

class GpuState {};
void GpuStateDeleter::operator()(GpuState* s) const { delete s; }

bool cuda_built() { return false; }
int gpu_device_count(std::string* why) {
  if (why) *why = "this build has no CUDA component";
  return 0;
}
std::string gpu_summary() {
  return "CUDA component not built (CMake found no CUDA toolkit, or -DGENESIS_CUDA=OFF); --gpu is unavailable";
}

namespace {
[[noreturn]] void no_cuda() {
  fail("--gpu: this build of genesis has no CUDA component (CMake found no CUDA toolkit or was given "
       "-DGENESIS_CUDA=OFF); rebuild with the CUDA toolkit installed (nvcc on PATH), or run without --gpu");
}
}  // namespace

std::shared_ptr<const GpuModel> make_gpu_model(const ModelConfig&, const Weights&, const LoadOptions&,
                                               std::shared_ptr<const GgufFile>) {
  no_cuda();
}
std::string gpu_description(const GpuModel&) { no_cuda(); }
size_t gpu_weight_bytes(const GpuModel&) { return 0; }
bool gpu_holds_deltanet(const GpuModel&) { return false; }
size_t gpu_bytes_held() { return 0; }
std::unique_ptr<GpuState, GpuStateDeleter> make_gpu_state(const GpuModel&, const ModelConfig&, int64_t, int64_t) {
  no_cuda();
}
void gpu_reserve_sequence(GpuState&, int32_t) { no_cuda(); }
void Session::gpu_step(std::span<const SequenceRows>, int64_t, int64_t) { no_cuda(); }

}  // namespace genesis::runtime
