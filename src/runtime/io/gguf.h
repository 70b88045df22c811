// GGUF (v2/v3) files: header, metadata key/values, tensor infos and memory-mapped tensor data, every size and offset
// checked against the file before anything is exposed; tensors dequantized to fp32 through quant/ggml.h.
// Not here: GGUF architectures and tensor names -> the runtime (runtime/model/gguf_model.h), the tokenizer
// (runtime/tokenizer/gguf_vocab.h).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace genesis::runtime {

class MappedFile;

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest-varying dimension (row length)
  uint32_t type = 0;        // quant::GgmlType id
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // valid while the GgufFile lives
  int64_t numel() const;
};

// A metadata value as short text for error messages: invalid UTF-8 replaced (GGUF strings are not validated), long
// values cut to `max_chars`.
std::string describe_meta_value(const nlohmann::json& v, size_t max_chars = 80);

class GgufFile {
 public:
  // Memory-maps and validates `path`. Throws genesis::Error naming the file, the field and its offset.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // The same over bytes in memory (tests, fuzzing); `label` names them in errors. Views point into `bytes`.
  static std::unique_ptr<GgufFile> parse(const uint8_t* bytes, size_t size, const std::string& label);
  ~GgufFile();

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Metadata as JSON values (integers, floats, bools, strings, arrays); `types` keeps each key's GGUF value type.
  const nlohmann::json& metadata() const { return meta_; }
  const nlohmann::json* find_meta(const std::string& key) const;
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find(const std::string& name) const;
  // fp32 copy of a tensor (any type with a reference dequantizer; others throw naming the type).
  std::vector<float> to_f32(const GgufTensor& t) const;
  const std::string& label() const { return label_; }

 private:
  GgufFile() = default;
  void parse_all(const uint8_t* p, size_t n);
  std::string label_;
  std::unique_ptr<MappedFile> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  nlohmann::json meta_ = nlohmann::json::object();
  std::vector<GgufTensor> tensors_;
};

}  // namespace genesis::runtime
