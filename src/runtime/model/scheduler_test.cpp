// The continuous-batching scheduler on a tiny GGUF model with a vocabulary: greedy requests give the tokens
// generate() gives alone, also when more requests than slots run concurrently with chunked prefill; stop strings,
// max_tokens, EOS, cancellation, the queue bound and bad requests.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "runtime/model/generate.h"
#include "runtime/model/load.h"
#include "runtime/model/scheduler.h"

namespace genesis::runtime {
namespace {

using namespace std::chrono_literals;

const std::string kModel = std::string(GENESIS_GOLDEN_DIR) + "/gguf/tiny_qwen3.gguf";

LoadedModel& model() {
  static LoadedModel lm = [] {
    LoadOptions opt;
    opt.use_kb = false;
    return load_model(kModel, opt);
  }();
  return lm;
}

std::vector<int32_t> prompt_for(int i) {
  std::vector<int32_t> p;
  for (int j = 0; j < 3 + 9 * i; ++j) p.push_back(int32_t((j * 31 + i * 101 + 7) % 200 + 3));
  return p;
}

std::vector<int32_t> alone(const std::vector<int32_t>& prompt, int64_t n) {
  Session s(*model().model, 256, nullptr);
  GenerateOptions go;
  go.max_new_tokens = n;
  std::vector<int32_t> out;
  generate(s, prompt, go, nullptr, &out);
  return out;
}

struct Result {
  std::string text, reason;
  std::vector<int32_t> tokens;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

Result collect(RequestHandle& h) {
  Result r;
  for (;;) {
    auto e = h.next(30s);
    if (!e) ADD_FAILURE() << "no event within 30 s";
    if (!e) return r;
    r.text += e->text;
    r.tokens.insert(r.tokens.end(), e->tokens.begin(), e->tokens.end());
    if (e->done) {
      r.reason = e->finish_reason;
      r.prompt_tokens = e->prompt_tokens;
      r.completion_tokens = e->completion_tokens;
      return r;
    }
  }
}

TEST(Scheduler, ConcurrentGreedyRequestsEqualAlone) {
  Scheduler::Options o;
  o.parallel = 3;
  o.context = 256;
  o.prefill_chunk = 16;  // prompts of up to 57 tokens join over several steps, between other requests' decode rows
  o.threads = 2;
  Scheduler sch(*model().model, *model().tokenizer, {}, o);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  RequestOptions ro;
  ro.max_tokens = 12;
  for (int i = 0; i < 7; ++i) hs.push_back(sch.submit(prompt_for(i), ro));
  for (int i = 0; i < 7; ++i) {
    const Result r = collect(*hs[size_t(i)]);
    EXPECT_EQ(r.reason, "length");
    EXPECT_EQ(r.tokens, alone(prompt_for(i), 12)) << "request " << i;
    EXPECT_EQ(r.text, model().tokenizer->decode(r.tokens, true));
    EXPECT_EQ(r.completion_tokens, 12);
    EXPECT_EQ(r.prompt_tokens, int64_t(prompt_for(i).size()));
  }
  const SchedulerStats st = sch.stats();
  EXPECT_EQ(st.requests_submitted, 7u);
  EXPECT_EQ(st.finished_length, 7u);
  EXPECT_EQ(st.generated_tokens, 84u);
  EXPECT_EQ(st.ttft.count, 7u);
  EXPECT_EQ(st.inter_token.count, 77u);
  EXPECT_LT(st.steps, 84u);  // rows of several requests shared steps
}

// Prompts that arrive while no request decodes run together, up to the step's capacity (idle_prefill_chunk 0), not
// --prefill-chunk rows a step: four prompts of 9-12 tokens with prefill_chunk 4 take one step (each request's one
// token comes from it), and 11 or more steps when the idle chunk is 4 too. The tokens are the same either way.
TEST(Scheduler, PromptsArrivingTogetherShareOneStep) {
  std::vector<std::vector<int32_t>> got[2];
  uint64_t steps[2] = {0, 0};
  for (int idle : {0, 4}) {
    Scheduler::Options o;
    o.parallel = 4;
    o.context = 64;
    o.prefill_chunk = 4;
    o.idle_prefill_chunk = idle;
    o.threads = 2;
    Scheduler sch(*model().model, *model().tokenizer, {}, o);
    RequestOptions ro;
    ro.max_tokens = 1;
    ro.ignore_eos = true;
    sch.pause(true);  // all four in the slots before the engine's first step
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (int i = 0; i < 4; ++i) hs.push_back(sch.submit(std::vector<int32_t>(size_t(9 + i), int32_t(5 + i)), ro));
    sch.pause(false);
    for (auto& h : hs) got[idle ? 1 : 0].push_back(collect(*h).tokens);
    steps[idle ? 1 : 0] = sch.stats().steps;
  }
  EXPECT_EQ(steps[0], 1u);
  EXPECT_GE(steps[1], 11u);  // 42 prompt rows, 4 a step
  EXPECT_EQ(got[0], got[1]);
}

TEST(Scheduler, StopStringsEosAndSampling) {
  Scheduler::Options o;
  o.parallel = 2;
  o.context = 128;
  Scheduler sch(*model().model, *model().tokenizer, {}, o);
  RequestOptions ro;
  ro.max_tokens = 16;
  const Result full = collect(*sch.submit(prompt_for(1), ro));
  ASSERT_GE(full.text.size(), 4u);
  // A stop string taken from the middle of the greedy text: the text ends just before it.
  const std::string stop = full.text.substr(full.text.size() / 2, 2);
  ro.stop = {"\x01never", stop};
  const Result cut = collect(*sch.submit(prompt_for(1), ro));
  EXPECT_EQ(cut.reason, "stop");
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
  // A later greedy token (the first not seen before it) as EOS: generation stops after it, without its text.
  size_t k = 1;
  while (k < full.tokens.size() && std::find(full.tokens.begin(), full.tokens.begin() + ptrdiff_t(k),
                                             full.tokens[k]) != full.tokens.begin() + ptrdiff_t(k))
    ++k;
  ASSERT_LT(k, full.tokens.size());
  Scheduler eos(*model().model, *model().tokenizer, {full.tokens[k]}, o);
  ro.stop.clear();
  const Result e = collect(*eos.submit(prompt_for(1), ro));
  EXPECT_EQ(e.reason, "stop");
  EXPECT_EQ(e.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + ptrdiff_t(k + 1)));
  EXPECT_EQ(e.text, model().tokenizer->decode(std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + ptrdiff_t(k)), true));
  ro.ignore_eos = true;
  EXPECT_EQ(collect(*eos.submit(prompt_for(1), ro)).tokens, full.tokens);
  // Sampling: the same seed gives the same tokens.
  ro.sampling.temperature = 1.0f;
  ro.sampling.top_k = 20;
  ro.sampling.seed = 42;
  EXPECT_EQ(collect(*sch.submit(prompt_for(2), ro)).tokens, collect(*sch.submit(prompt_for(2), ro)).tokens);
}

TEST(Scheduler, CancelQueueBoundAndBadRequests) {
  Scheduler::Options o;
  o.parallel = 1;
  o.context = 64;
  o.max_queue = 2;
  o.prefill_chunk = 8;  // a 60-token prompt takes 8 steps
  o.idle_prefill_chunk = 8;  // alone too (by default a prompt alone runs in one step)
  int steps = 0;
  std::shared_ptr<RequestHandle> cancel_at_step_2;
  o.on_step = [&] {
    if (++steps == 2 && cancel_at_step_2) cancel_at_step_2->cancel();
  };
  Scheduler sch(*model().model, *model().tokenizer, {}, o);
  RequestOptions ro;
  ro.max_tokens = 40;
  ro.ignore_eos = true;
  // Paused, the engine takes nothing: one request for the slot and two for the queue, a fourth is refused.
  sch.pause(true);
  auto a = sch.submit(std::vector<int32_t>(60, 5), ro);
  auto b = sch.submit(prompt_for(0), ro);
  auto b2 = sch.submit(prompt_for(1), ro);
  EXPECT_THROW(sch.submit(prompt_for(0), ro), QueueFull);
  EXPECT_EQ(sch.stats().requests_rejected, 1u);
  b->cancel();  // cancelled while waiting
  b2->cancel();
  cancel_at_step_2 = a;  // cancelled while running: in the middle of its prefill
  sch.pause(false);
  EXPECT_EQ(collect(*b).reason, "cancelled");  // b has left the queue, a took the slot
  EXPECT_EQ(collect(*b2).reason, "cancelled");
  auto c = sch.submit(prompt_for(0), ro);      // waits for a's slot
  const Result ra = collect(*a);
  EXPECT_EQ(ra.reason, "cancelled");
  EXPECT_EQ(ra.completion_tokens, 0);
  const Result rc = collect(*c);  // the freed slot serves the next request
  EXPECT_EQ(rc.reason, "length");
  EXPECT_EQ(rc.completion_tokens, 40);
  EXPECT_EQ(sch.stats().finished_cancelled, 3u);
  // Bad requests are errors at submit.
  EXPECT_THROW(sch.submit({}, ro), Error);
  EXPECT_THROW(sch.submit(std::vector<int32_t>(64, 5), ro), Error);
  EXPECT_THROW(sch.submit({-1}, ro), Error);
  RequestOptions bad = ro;
  bad.max_tokens = 0;
  EXPECT_THROW(sch.submit({5}, bad), Error);
  bad = ro;
  bad.sampling.top_p = 0;
  EXPECT_THROW(sch.submit({5}, bad), Error);
  // A request that reaches the context ends with "length" at the context.
  ro.max_tokens = 1000;
  const Result full = collect(*sch.submit(std::vector<int32_t>(60, 5), ro));
  EXPECT_EQ(full.reason, "length");
  EXPECT_EQ(full.completion_tokens, 5);  // as generate(): positions 60..63, and a last token never run
}

// on_exit runs on the engine thread at shutdown with the Session that served: `serve --expert-usage` reads the
// routed experts' choices there (a MoE model: every prompt and generated row chose top_k experts per MoE layer).
TEST(Scheduler, OnExitSeesTheServedSession) {
  LoadOptions lo;
  lo.use_kb = false;
  LoadedModel moe = load_model(std::string(GENESIS_GOLDEN_DIR) + "/gguf/tiny_qwen3moe.gguf", lo);
  const ModelConfig& c = moe.model->config();
  uint64_t chosen = 0;
  bool called = false;
  {
    Scheduler::Options o;
    o.parallel = 2;
    o.context = 128;
    o.threads = 2;
    o.on_exit = [&](const Session& s) {
      called = true;
      for (uint64_t v : s.expert_usage()) chosen += v;
    };
    Scheduler sch(*moe.model, *moe.tokenizer, {}, o);
    RequestOptions ro;
    ro.max_tokens = 5;
    ro.ignore_eos = true;
    auto a = sch.submit(prompt_for(1), ro), b = sch.submit(prompt_for(2), ro);
    collect(*a);
    collect(*b);
  }
  ASSERT_TRUE(called);
  // Rows run: each prompt, then 4 decode rows each (the 5th token is sampled from the last row's logits).
  const uint64_t rows = prompt_for(1).size() + prompt_for(2).size() + 2 * 4;
  EXPECT_EQ(chosen, rows * uint64_t(c.top_k) * uint64_t(c.moe_layers()));
}

}  // namespace
}  // namespace genesis::runtime
