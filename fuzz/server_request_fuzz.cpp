// libFuzzer harness: any bytes as a request body of /v1/chat/completions and /v1/completions. Either a request whose
// fields are within their documented ranges, or server::ApiError with a 4xx status; never a crash or another exception.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "server/api.h"

namespace sv = genesis::server;

namespace {
void check_params(const sv::GenParams& p) {
  if (p.max_tokens && *p.max_tokens < 1) std::abort();
  if (p.temperature && !(*p.temperature >= 0 && *p.temperature <= 2)) std::abort();
  if (p.top_p && !(*p.top_p > 0 && *p.top_p <= 1)) std::abort();
  if (p.top_k && *p.top_k < 0) std::abort();
  if (p.stop.size() > sv::kMaxStops) std::abort();
  for (const auto& s : p.stop)
    if (s.empty()) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  try {
    const sv::ChatRequest r = sv::parse_chat_request(body);
    if (r.messages.empty() || r.messages.size() > sv::kMaxMessages) std::abort();
    check_params(r.params);
  } catch (const sv::ApiError& e) {
    if (e.status < 400 || e.status >= 500) std::abort();
  }
  try {
    const sv::CompletionRequest r = sv::parse_completion_request(body);
    if (!r.prompt_text && r.prompt_tokens.empty()) std::abort();
    for (int32_t t : r.prompt_tokens)
      if (t < 0) std::abort();
    check_params(r.params);
  } catch (const sv::ApiError& e) {
    if (e.status < 400 || e.status >= 500) std::abort();
  }
  return 0;
}
