// Which routed experts a workload chooses, and which of them go to the GPU's memory (--gpu-experts): the counts a
// run recorded (Session::expert_usage(), saved with --expert-usage FILE) pick the most used (layer, expert) pairs
// that fit a byte budget; without counts every expert counts the same and the budget is spread evenly over the
// layers. Nothing here needs CUDA (the placement is decided on the host and tested without a GPU).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace genesis::runtime {

struct ModelConfig;

// Times each expert was chosen: counts[layer * experts + expert].
struct ExpertUsage {
  int64_t layers = 0, experts = 0;
  std::vector<uint64_t> counts;
  uint64_t total() const;
};

// The file's counts. Throws genesis::Error naming the file for a missing or malformed file, or one recorded for
// another shape than `c` (layers, experts).
ExpertUsage read_expert_usage(const std::string& path, const ModelConfig& c);
// Adds `counts` ([layers][experts], a Session's expert_usage()) to the file's (saturating) and writes it back
// (through a temporary file and a rename). A file that is not this model's counts (another shape, malformed) is
// replaced by this run's: the returned note says so ("" otherwise). Throws genesis::Error on I/O.
std::string add_expert_usage(const std::string& path, const ModelConfig& c, const std::vector<uint64_t>& counts);

// The experts to hold on the GPU: per layer, slot[layer][expert] = its slot (0, 1, ... in that layer) or -1. Each
// expert of layer l costs expert_bytes[l] (0 for a dense layer: none go there); budget < 0 takes all. Greedy by
// count, most used first; ties (and no usage: empty counts) go round-robin over the layers, expert ids ascending.
std::vector<std::vector<int32_t>> place_experts(const ModelConfig& c, const ExpertUsage* usage,
                                                const std::vector<int64_t>& expert_bytes, int64_t budget);

// "12G", "12GiB", "500M", "1.5g", "0": bytes (binary units); "all": -1. Throws genesis::Error for anything else.
int64_t parse_byte_budget(const std::string& text);

}  // namespace genesis::runtime
