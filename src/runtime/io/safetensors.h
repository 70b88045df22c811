// Safetensors checkpoints: a memory-mapped, fully validated reader (single file, or a directory with one file or
// an index + shards) behind runtime::TensorSource, conversion of F32/F16/BF16 tensors to fp32, and streaming writers
// (one file, or a sharded directory with its index) that never hold a whole model in memory.
// Not here: what the tensors mean (model/), bitsandbytes quant states (bnb.h).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace genesis::runtime {

// Opens `path`: a .safetensors file, or a directory holding model.safetensors, model.safetensors.index.json (with
// its shards), or exactly one *.safetensors file. Every header is validated before any tensor is exposed: the 8-byte
// length is bounded by the file, the header is a JSON object, each dtype is known, shape product * dtype size ==
// end - begin, offsets lie inside the data area and tensors do not overlap. Errors (genesis::Error) name the file and
// the tensor. Tensor data stays in read-only mapped memory owned by the returned source; TensorView::data may be
// unaligned (offsets in safetensors are not padded), so read it with memcpy or to_f32().
std::unique_ptr<TensorSource> open_safetensors(const std::string& path);

// __metadata__ of the file that holds `tensor_name` (empty when absent or when the source is not safetensors).
std::map<std::string, std::string> safetensors_metadata(const TensorSource& src, const std::string& tensor_name);

// Parses an in-memory safetensors image (header + data) the same way open_safetensors parses a file; used by the
// fuzzer and by tests. `label` names the buffer in errors. The returned views point into `bytes`.
std::vector<TensorView> parse_safetensors_buffer(const uint8_t* bytes, size_t size, const std::string& label,
                                                 std::map<std::string, std::string>* metadata = nullptr);

// Parses a dtype name as safetensors writes it ("F32", "BF16", "U8", ...); throws on anything else.
Dtype parse_dtype(const std::string& name, const std::string& where);

// fp32 copy of an F32/F16/BF16 tensor (error naming the tensor for other dtypes).
std::vector<float> to_f32(const TensorView& t);
// fp32 copy of rows [row_begin, row_begin + rows) of a tensor seen as [shape[0], numel / shape[0]] (the first
// dimension indexes rows; for a 3-D [E, R, C] tensor a "row" is one whole [R, C] slab).
std::vector<float> to_f32_rows(const TensorView& t, int64_t row_begin, int64_t rows);
// Converts `count` elements starting at flat element `elem_begin` into out[0..count). Bounds-checked.
void to_f32(const TensorView& t, int64_t elem_begin, int64_t count, float* out);

struct TensorSpec {
  std::string name;
  Dtype dtype = Dtype::f32;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;  // numel * dtype size (checked for overflow)
};

// Writes one .safetensors file in a single pass: the header (with every offset) is written first from the declared
// specs, then tensor data in declaration order, in as many pieces as the caller likes. The header is padded with
// spaces to a multiple of 8 bytes as the reference implementation does. finish() checks that every byte was given;
// a writer destroyed before finish() removes its partial file.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, std::vector<TensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends bytes to tensor `name`, which must be the tensor being written (declaration order). A tensor may be
  // written in several calls; the next tensor starts once the current one is complete.
  void write(const std::string& name, const void* data, size_t nbytes);
  void finish();

  uint64_t bytes_written() const { return bytes_written_; }  // header included
  uint64_t total_bytes() const { return total_bytes_; }
  const std::string& path() const { return path_; }

 private:
  void put(const void* data, size_t n);
  std::string path_;
  std::vector<TensorSpec> tensors_;
  std::FILE* file_ = nullptr;
  size_t current_ = 0;        // index of the tensor being written
  uint64_t current_done_ = 0; // bytes of it written so far
  uint64_t bytes_written_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

// A directory checkpoint: tensors are split, in declaration order, into shards of at most max_shard_bytes (a tensor
// larger than that gets a shard of its own) named model-0000i-of-0000N.safetensors with model.safetensors.index.json,
// or model.safetensors when one shard is enough. Same streaming contract as SafetensorsWriter.
class ShardedSafetensorsWriter {
 public:
  ShardedSafetensorsWriter(const std::string& dir, std::vector<TensorSpec> tensors, uint64_t max_shard_bytes,
                           const std::map<std::string, std::string>& metadata = {});
  ~ShardedSafetensorsWriter();
  void write(const std::string& name, const void* data, size_t nbytes);
  void finish();

  int num_shards() const { return int(shards_.size()); }
  uint64_t bytes_written() const;  // all shards so far, headers included
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  struct Shard {
    std::string file;
    std::vector<TensorSpec> tensors;
  };
  void open_shard(size_t i);
  std::string dir_;
  std::map<std::string, std::string> metadata_;
  std::vector<Shard> shards_;
  std::map<std::string, size_t> shard_of_;
  std::unique_ptr<SafetensorsWriter> writer_;
  size_t open_ = 0;
  uint64_t done_bytes_ = 0;  // bytes of closed shards
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

}  // namespace genesis::runtime
