// A TensorSource whose tensors live in memory (owned byte buffers): used to build models in tests, including
// deliberately broken ones, and by any caller that produces weights without a file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace genesis::runtime {

class MemoryTensorSource : public TensorSource {
 public:
  explicit MemoryTensorSource(std::string label = "memory") : label_(std::move(label)) {}
  // Copies `bytes` (must be numel * dtype size; checked).
  void add(const std::string& name, Dtype dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values);
  bool remove(const std::string& name);
  // The stored tensor (for tests that alter a tensor in place); nullptr when absent.
  std::vector<uint8_t>* bytes(const std::string& name);

  const TensorView* find(const std::string& name) const override;
  std::vector<std::string> names() const override;
  std::string describe(const std::string& name) const override { return label_; }

 private:
  struct Entry {
    TensorView view;
    std::vector<uint8_t> bytes;
  };
  std::string label_;
  std::map<std::string, Entry> tensors_;
};

}  // namespace genesis::runtime
