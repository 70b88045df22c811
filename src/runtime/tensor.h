// The seam between checkpoint loaders and the model: named tensors as views into (memory-mapped) files.
// Loaders (safetensors, GGUF) implement TensorSource; the model reads weights only through it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace genesis::runtime {

enum class Dtype : uint8_t { f32, f16, bf16, u8, i8, i32, i64, f64, bool_ };
const char* dtype_name(Dtype d);
size_t dtype_size(Dtype d);

struct TensorView {
  std::string name;
  Dtype dtype = Dtype::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // valid while the source lives
  size_t nbytes = 0;           // == numel * dtype_size, checked by the loader
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // nullptr when absent.
  virtual const TensorView* find(const std::string& name) const = 0;
  // Whether `name` exists, without converting anything (a source may convert tensors in find()).
  virtual bool contains(const std::string& name) const { return find(name) != nullptr; }
  virtual std::vector<std::string> names() const = 0;
  // A short description of where tensors come from, for error messages ("model.safetensors (shard 2 of 3)").
  virtual std::string describe(const std::string& name) const = 0;
  // A hint that tensors whose names start with `prefix` will not be read again: a memory-mapped source gives their
  // pages back, so that loading a model never holds the file and the converted weights at once. Views stay valid
  // (a later read faults the pages in again).
  virtual void release(const std::string& prefix) const {}
  // The tensor widened to fp32 into `out` (resized; a reused vector keeps its capacity) and its shape. For loaders
  // that convert many tensors one after another, possibly from several threads: a source that converts on read
  // (GGUF) does it here without keeping a copy. Safe to call concurrently. Default: find() + F32/BF16/F16 widening.
  // Throws genesis::Error when the tensor is absent or of another dtype.
  virtual std::vector<int64_t> read_f32(const std::string& name, std::vector<float>& out) const;
  // Whether the file stores `name` in 6 bits or fewer per weight (GGUF Q4_0 ... Q6_K): re-quantizing it to 4 bits
  // loses little of what the file kept (LoadOptions::dense_nf4 = low_bit).
  virtual bool low_bit(const std::string& name) const { return false; }
  // Whether the file stores `name` in a block format of 8 bits or fewer per weight (GGUF Q4_0 ... Q8_0): holding it
  // in int8 blocks keeps what the file kept (LoadOptions::dense_q8).
  virtual bool block_quantized(const std::string& name) const { return false; }
  // The tensor's bytes as the file stores them in a ggml block format (GGUF; rows in Hugging Face order), its ggml
  // type and shape; false when the source has no such form of it (then read_f32 / find apply).
  virtual bool read_ggml(const std::string& name, uint32_t& type, std::vector<int64_t>& shape,
                         std::vector<uint8_t>& bytes) const {
    return false;
  }
};

}  // namespace genesis::runtime
