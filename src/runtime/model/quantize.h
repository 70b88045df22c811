// `genesis quantize`: a bf16 / fp16 / fp32 Hugging Face checkpoint -> the same checkpoint with every MoE expert
// projection in bitsandbytes NF4 (the tensors and quant-state JSON that transformers + bitsandbytes save), streamed
// tensor by tensor into sharded safetensors. Other weights are copied unchanged and named in the
// quantization_config's llm_int8_skip_modules, so that transformers keeps them as they are too.
#pragma once

#include <cstdint>
#include <string>

namespace genesis::runtime {

struct QuantizeOptions {
  std::string in, out;
  int blocksize = 64;
  bool double_quant = false;
  uint64_t shard_bytes = uint64_t(4) << 30;
  bool progress = true;
};

struct QuantizeResult {
  int64_t quantized = 0;  // expert matrices written as NF4
  int64_t copied = 0;     // tensors copied as they were
  uint64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;
};

// Throws genesis::Error for a missing or unsupported model, a checkpoint that is already quantized, an output
// directory that exists and is not empty, or an expert whose in-features are not a multiple of the blocksize.
QuantizeResult quantize_model(const QuantizeOptions& opt);

}  // namespace genesis::runtime
