// Perplexity of a model over a token sequence, the way llama.cpp's perplexity tool cuts it: the ids are split into
// consecutive chunks of `context` tokens (a shorter tail is dropped), each chunk runs from an empty KV cache, and
// every token of a chunk after the first `skip` is scored by the log-probability the model gave it one position
// earlier. llama.cpp scores the second half of each chunk (skip = context / 2); skip = 1 scores them all.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "runtime/model/forward.h"

namespace genesis::runtime {

struct PerplexityOptions {
  int64_t context = 512;
  int64_t skip = -1;  // tokens per chunk that are context only; < 0: context / 2
  int64_t max_chunks = 0;       // 0: every whole chunk of the text
  std::optional<int32_t> bos;   // set: each chunk's first token is replaced by BOS (llama.cpp, models that add BOS)
};

struct PerplexityResult {
  double ppl = 0;       // exp(mean negative log-likelihood)
  double mean_nll = 0;  // nats per scored token
  int64_t scored = 0, chunks = 0;
  std::vector<double> chunk_ppl;  // per chunk
  double seconds = 0;
};

// on_chunk(done, total, running ppl) after each chunk (progress). Throws genesis::Error when there are fewer than
// `context` ids, or context / skip are out of range for the session.
PerplexityResult perplexity(Session& s, std::span<const int32_t> ids, const PerplexityOptions& opt,
                            const std::function<void(int64_t, int64_t, double)>& on_chunk = {});

}  // namespace genesis::runtime
