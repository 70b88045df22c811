// Generation over a Session: prefill the prompt, then decode token by token with a Sampler, stopping at a stop
// token, at max_new_tokens, when the context is full, or when the caller's callback says so. Streams each token.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "runtime/model/forward.h"
#include "runtime/model/sampler.h"

namespace genesis::runtime {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplerOptions sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these (it is emitted, not printed)
  // Called with each step's logits (vocab floats) before sampling, outside the timed regions (checks, dumps).
  std::function<void(std::span<const float>)> on_logits;
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated = 0;
  double prefill_s = 0;  // prompt forward, up to the first token's logits
  double decode_s = 0;   // every later forward
  int64_t decode_steps = 0;
  std::string stop_reason;  // "stop token", "max tokens", "context full", "callback"
  double prefill_tps() const { return prefill_s > 0 ? double(prompt_tokens) / prefill_s : 0; }
  double decode_tps() const { return decode_s > 0 ? double(decode_steps) / decode_s : 0; }
};

// on_token(token) is called for every generated token as soon as it is chosen; returning false stops.
// Throws genesis::Error when the prompt is empty or longer than the session's context.
GenerateStats generate(Session& s, std::span<const int32_t> prompt, const GenerateOptions& opt,
                       const std::function<bool(int32_t)>& on_token, std::vector<int32_t>* out = nullptr);

}  // namespace genesis::runtime
