// libFuzzer harness: any bytes as a GGUF file. Either a parse whose tensors lie inside the buffer (each dequantized
// when small, to exercise the format code on hostile blocks), or genesis::Error.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "runtime/io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = genesis::runtime::GgufFile::parse(data, size, "fuzz");
    for (const auto& t : f->tensors()) {
      if (t.nbytes && (t.data < data || t.data + t.nbytes > data + size)) std::abort();
      if (t.numel() <= 4096) {
        try {
          (void)f->to_f32(t);
        } catch (const genesis::Error&) {
        }
      }
    }
  } catch (const genesis::Error&) {
  }
  return 0;
}
