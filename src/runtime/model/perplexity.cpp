// Chunked perplexity; see perplexity.h.
#include "runtime/model/perplexity.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/util.h"

namespace genesis::runtime {

PerplexityResult perplexity(Session& s, std::span<const int32_t> ids, const PerplexityOptions& opt,
                            const std::function<void(int64_t, int64_t, double)>& on_chunk) {
  const int64_t n = opt.context;
  const int64_t skip = opt.skip < 0 ? n / 2 : opt.skip;
  if (n < 2) fail("perplexity: the context must be at least 2 tokens, got {}", n);
  if (n > s.context()) fail("perplexity: context {} exceeds the session's KV cache of {} tokens", n, s.context());
  if (skip < 1 || skip >= n) fail("perplexity: skip {} must be in [1, {})", skip, n);
  if (int64_t(ids.size()) < n)
    fail("perplexity: the text has {} tokens, fewer than one chunk of {} (use a longer text or a smaller context)",
         ids.size(), n);
  const double t0 = now_seconds();
  PerplexityResult r;
  int64_t chunks = int64_t(ids.size()) / n;
  if (opt.max_chunks > 0) chunks = std::min(chunks, opt.max_chunks);
  const int64_t vocab = s.vocab_size();
  double total = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    s.reset();
    std::vector<int32_t> chunk(ids.begin() + c * n, ids.begin() + (c + 1) * n);
    if (opt.bos) chunk[0] = *opt.bos;
    const std::vector<float> logits = s.forward_all(chunk);
    double nll = 0;
    for (int64_t i = skip; i < n; ++i) {
      const float* l = &logits[size_t((i - 1) * vocab)];
      double mx = l[0];
      for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, double(l[v]));
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(l[v]) - mx);
      nll += mx + std::log(sum) - double(l[chunk[size_t(i)]]);
    }
    total += nll;
    r.scored += n - skip;
    r.chunk_ppl.push_back(std::exp(nll / double(n - skip)));
    if (on_chunk) on_chunk(c + 1, chunks, std::exp(total / double(r.scored)));
  }
  r.chunks = chunks;
  r.mean_nll = total / double(r.scored);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = now_seconds() - t0;
  return r;
}

}  // namespace genesis::runtime
