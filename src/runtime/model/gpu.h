// The hybrid mode (`--gpu`): attention with its KV cache, the dense matrices (attention, dense MLP, router, shared
// expert, output), norms and rope run on a CUDA GPU; the routed experts stay on the CPU's JIT kernels. Per MoE layer
// the host and the device exchange the normalized hidden rows and the router's logits (device -> host) and the
// experts' weighted sum (host -> device), never weights. Layers whose mixer the GPU does not run (Gated DeltaNet)
// run on the CPU with the hidden rows copied across. The CUDA side is src/cuda; this header is the runtime's view,
// the same in a build without CUDA (where asking for the GPU is a clear error).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace genesis::runtime {

struct ModelConfig;
class GgufFile;
struct Weights;
struct LoadOptions;

// The device copy of a model's non-expert weights (gpu_model.cpp).
class GpuModel;
// A Session's device scratch and the KV caches of its sequences.
class GpuState;
struct GpuStateDeleter {
  void operator()(GpuState* s) const;
};

// True when this build has the CUDA component.
bool cuda_built();
// CUDA devices this process can use; 0 with `why` set (no CUDA component, no driver, no device).
int gpu_device_count(std::string* why);
// One line on the CUDA component and the devices it sees, for `genesis info`.
std::string gpu_summary();

// Uploads what the GPU runs. Throws genesis::Error when the build has no CUDA, there is no usable device, or its free
// memory is less than what must go there (naming both).
// With the model's GGUF file, the experts' blocks as the file stores them are also found for the prefill, which
// streams them to the GPU and multiplies there (chunks of at least LoadOptions::gpu_prefill_rows rows).
std::shared_ptr<const GpuModel> make_gpu_model(const ModelConfig& c, const Weights& w, const LoadOptions& opt,
                                               std::shared_ptr<const GgufFile> gguf);
// "NVIDIA H200 ...: attention, dense MLP, router, norms, output on the GPU (bf16, 1.9 GiB); routed experts on the CPU"
std::string gpu_description(const GpuModel& g);
size_t gpu_weight_bytes(const GpuModel& g);
// Whether the Gated DeltaNet layers run on the device (their states there; the host's SequenceState holds none).
bool gpu_holds_deltanet(const GpuModel& g);
// A Session's device side for up to `max_rows` rows per step and KV caches of `capacity` positions.
std::unique_ptr<GpuState, GpuStateDeleter> make_gpu_state(const GpuModel& g, const ModelConfig& c, int64_t capacity,
                                                          int64_t max_rows);
// Allocates sequence slot `seq`'s device KV cache unless it has one (throws genesis::Error when VRAM is short).
void gpu_reserve_sequence(GpuState& s, int32_t seq);
// Device memory this process holds now (weights, caches, scratch).
size_t gpu_bytes_held();

}  // namespace genesis::runtime
