// Dtype names and sizes for TensorView; TensorSource's default read_f32.
#include "runtime/tensor.h"

#include "common/error.h"
#include "runtime/io/safetensors.h"

namespace genesis::runtime {

const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::f32: return "F32";
    case Dtype::f16: return "F16";
    case Dtype::bf16: return "BF16";
    case Dtype::u8: return "U8";
    case Dtype::i8: return "I8";
    case Dtype::i32: return "I32";
    case Dtype::i64: return "I64";
    case Dtype::f64: return "F64";
    case Dtype::bool_: return "BOOL";
  }
  return "?";
}

size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::f32: case Dtype::i32: return 4;
    case Dtype::f16: case Dtype::bf16: return 2;
    case Dtype::u8: case Dtype::i8: case Dtype::bool_: return 1;
    case Dtype::i64: case Dtype::f64: return 8;
  }
  return 0;
}

std::vector<int64_t> TensorSource::read_f32(const std::string& name, std::vector<float>& out) const {
  const TensorView* t = find(name);
  if (t == nullptr) fail("{}: tensor '{}' is missing", describe(name), name);
  out.resize(size_t(t->numel()));
  to_f32(*t, 0, t->numel(), out.data());
  return t->shape;
}

}  // namespace genesis::runtime
