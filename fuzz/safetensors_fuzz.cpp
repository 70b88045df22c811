// libFuzzer harness: any bytes as a safetensors image. The parser must return views inside the buffer or throw
// genesis::Error; a crash, a sanitizer report or a view outside the buffer is a bug.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "runtime/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto views = genesis::runtime::parse_safetensors_buffer(data, size, "fuzz");
    for (const auto& v : views) {
      const auto* p = static_cast<const uint8_t*>(v.data);
      if (v.nbytes && (p < data || p + v.nbytes > data + size)) std::abort();
      if (v.nbytes) {
        volatile uint8_t sink = p[0] ^ p[v.nbytes - 1];  // touch both ends under ASan
        (void)sink;
      }
    }
  } catch (const genesis::Error&) {
  }
  return 0;
}
