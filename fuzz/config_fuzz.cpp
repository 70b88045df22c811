// libFuzzer harness: any bytes as a config.json. Either a ModelConfig whose sizes are consistent, or genesis::Error.
#include <cstdint>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "runtime/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const auto c = genesis::runtime::parse_config(j, "fuzz");
    if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.head_dim <= 0) std::abort();
    (void)c.summary();
  } catch (const genesis::Error&) {
  }
  return 0;
}
