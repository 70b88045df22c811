// The generation loop and its timing.
#include "runtime/model/generate.h"

#include <algorithm>

#include "common/error.h"
#include "common/util.h"

namespace genesis::runtime {

GenerateStats generate(Session& s, std::span<const int32_t> prompt, const GenerateOptions& opt,
                       const std::function<bool(int32_t)>& on_token, std::vector<int32_t>* out) {
  if (prompt.empty()) fail("the prompt is empty: give at least one token");
  if (s.position() + int64_t(prompt.size()) > s.context())
    fail("the prompt has {} tokens, longer than the context of {} tokens{}", prompt.size(),
         s.context() - s.position(), s.position() ? " left" : "");
  Sampler sampler(opt.sampling);
  const int64_t vocab = s.vocab_size();
  std::vector<float> logits(static_cast<size_t>(vocab));
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  double t0 = now_seconds();
  s.forward(prompt, logits.data());
  st.prefill_s = now_seconds() - t0;
  st.stop_reason = "max tokens";
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    if (opt.on_logits) opt.on_logits(logits);
    const int32_t tok = sampler.sample(logits);
    ++st.generated;
    if (out) out->push_back(tok);
    const bool stop = std::find(opt.stop_tokens.begin(), opt.stop_tokens.end(), tok) != opt.stop_tokens.end();
    if (on_token && !on_token(tok)) {
      st.stop_reason = "callback";
      break;
    }
    if (stop) {
      st.stop_reason = "stop token";
      break;
    }
    if (i + 1 == opt.max_new_tokens) break;
    if (s.position() >= s.context()) {
      st.stop_reason = "context full";
      break;
    }
    t0 = now_seconds();
    const int32_t one[1] = {tok};
    s.forward(one, logits.data());
    st.decode_s += now_seconds() - t0;
    ++st.decode_steps;
  }
  return st;
}

}  // namespace genesis::runtime
