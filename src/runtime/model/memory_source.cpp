// In-memory TensorSource.
#include "runtime/model/memory_source.h"

#include <cstring>

#include "common/error.h"

namespace genesis::runtime {

void MemoryTensorSource::add(const std::string& name, Dtype dtype, std::vector<int64_t> shape, const void* data,
                             size_t nbytes) {
  Entry e;
  e.view.name = name;
  e.view.dtype = dtype;
  e.view.shape = std::move(shape);
  if (size_t(e.view.numel()) * dtype_size(dtype) != nbytes)
    fail("{}: tensor \"{}\": {} bytes given for {} elements of {}", label_, name, nbytes, e.view.numel(),
         dtype_name(dtype));
  e.bytes.resize(nbytes);
  if (nbytes) std::memcpy(e.bytes.data(), data, nbytes);
  e.view.nbytes = nbytes;
  auto& slot = tensors_[name] = std::move(e);
  slot.view.data = slot.bytes.data();
}

void MemoryTensorSource::add_f32(const std::string& name, std::vector<int64_t> shape,
                                 const std::vector<float>& values) {
  add(name, Dtype::f32, std::move(shape), values.data(), values.size() * sizeof(float));
}

bool MemoryTensorSource::remove(const std::string& name) { return tensors_.erase(name) > 0; }

std::vector<uint8_t>* MemoryTensorSource::bytes(const std::string& name) {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.bytes;
}

const TensorView* MemoryTensorSource::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.view;
}

std::vector<std::string> MemoryTensorSource::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

}  // namespace genesis::runtime
