// `genesis bench model`: load a model directory, then prefill and decode timings next to the decode bound (bytes one
// token reads / read bandwidth measured in the same run). Token ids are random (seeded): the speed of a forward pass
// does not depend on what the tokens say, and no tokenizer is needed.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "runtime/model/weights.h"

namespace genesis::runtime {

struct ModelBenchOptions {
  std::string dir;
  int prompt_tokens = 64;   // prefill length
  int decode_tokens = 64;   // decode steps timed
  int threads = 0;          // 0: all allowed cores
  int streams = 1;          // > 1: also decode steps of this many sequences at once (continuous batching)
  bool cached_bandwidth = false;  // reuse `genesis info`'s cached figure instead of measuring now
  // Bytes of the read passes measured now (before, after, and between the paired steps); 0: the roofline's buffer
  // (cpu::bandwidth_buffer_bytes(), several times the last-level cache). Tests use less.
  size_t probe_bytes = 0;
  bool progress = true;
  LoadOptions load;
};

// The JSON record: model, experts, load_s, peak_rss_bytes, nf4_expert_bytes, prefill_tps, decode_tps,
// decode_ms_median / iqr, bytes_per_token, read_bandwidth_gbps, bound_tps, bound_fraction, threads, time split;
// measured now, "paired": as many decode steps again, each between read passes, and the median of their fractions of
// the bound against the passes around each (with --streams, "batched_paired" the same for the batched steps).
nlohmann::json run_model_bench(const ModelBenchOptions& opt);

}  // namespace genesis::runtime
