// The continuous-batching engine: admission into slots, the step's rows (decode rows first, then prompt chunks),
// sampling, stop handling and the events each request receives.
#include "runtime/model/scheduler.h"

#include <algorithm>

#include "common/util.h"
#include "cpu/thread_pool.h"

namespace genesis::runtime {

struct Scheduler::Request {
  std::shared_ptr<RequestHandle> h;
  std::vector<int32_t> prompt;
  RequestOptions opt;
  std::optional<Sampler> sampler;
  std::optional<Tokenizer::StreamDecoder> dec;
  int32_t seq = -1;         // slot while running
  int64_t fed = 0;          // prompt tokens run so far
  int64_t generated = 0;    // tokens sampled so far
  int32_t next = -1;        // the last sampled token, run in the next step
  std::vector<float> logits;
  std::string held;         // text not yet sent: it could be the start of a stop string
  std::vector<int32_t> pending_tokens;  // sampled since the last event
  double t_submit = 0, t_last = 0;
  bool done = false;
};

namespace {
RequestEvent final_event(const std::string& reason, const std::string& error = "") {
  RequestEvent e;
  e.done = true;
  e.finish_reason = reason;
  e.error = error;
  return e;
}
}  // namespace

void Histogram::add(double v) {
  size_t b = 0;
  while (b < bounds.size() && v > bounds[b]) ++b;
  ++counts[b];
  sum += v;
  ++count;
}

void RequestHandle::push(RequestEvent e) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (e.done) finished_ = true;
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

std::optional<RequestEvent> RequestHandle::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return !events_.empty() || delivered_final_; })) return std::nullopt;
  if (events_.empty()) return std::nullopt;
  RequestEvent e = std::move(events_.front());
  events_.pop_front();
  if (e.done) delivered_final_ = true;
  return e;
}

Scheduler::Scheduler(const Model& model, const Tokenizer& tokenizer, std::vector<int32_t> eos, const Options& opt)
    : model_(model), tok_(tokenizer), eos_(std::move(eos)), opt_(opt) {
  if (opt_.parallel < 1 || opt_.parallel > 64) fail("--parallel must be in [1, 64], got {}", opt_.parallel);
  if (opt_.max_queue < 0) fail("the queue bound must be >= 0, got {}", opt_.max_queue);
  if (opt_.prefill_chunk < 1) fail("the prefill chunk must be >= 1 row, got {}", opt_.prefill_chunk);
  if (opt_.idle_prefill_chunk < 0) fail("the idle prefill chunk must be >= 0 rows, got {}", opt_.idle_prefill_chunk);
  const ModelConfig& c = model.config();
  context_ = opt_.context > 0 ? opt_.context : std::min(c.max_position_embeddings, Session::kDefaultContext);
  if (context_ > c.max_position_embeddings)
    fail("--context {} exceeds the model's max_position_embeddings {}", context_, c.max_position_embeddings);
  stats_.slots = opt_.parallel;
  thread_ = std::thread([this] { engine(); });
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return ready_; });
  if (!start_error_.empty()) {
    lk.unlock();
    thread_.join();
    fail("{}", start_error_);
  }
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<RequestHandle> Scheduler::submit(std::vector<int32_t> prompt, const RequestOptions& opt) {
  if (prompt.empty()) fail("the prompt is empty: give at least one token");
  if (int64_t(prompt.size()) >= context_)
    fail("the prompt has {} tokens; a slot's context holds {} tokens, which leaves no room to generate",
         prompt.size(), context_);
  for (int32_t t : prompt)
    if (t < 0 || t >= model_.config().vocab_size)
      fail("token id {} is outside the vocabulary [0, {})", t, model_.config().vocab_size);
  if (opt.max_tokens < 1) fail("max_tokens must be >= 1, got {}", opt.max_tokens);
  opt.sampling.validate();
  auto r = std::make_unique<Request>();
  r->h = std::make_shared<RequestHandle>();
  r->prompt = std::move(prompt);
  r->opt = opt;
  r->t_submit = now_seconds();
  auto h = r->h;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // Slots free now take requests without queueing; the bound counts the ones beyond.
    if (int64_t(waiting_.size()) + stats_.running >= opt_.parallel + opt_.max_queue) {
      ++stats_.requests_rejected;
      throw QueueFull(fmt::format("the server is busy: {} requests are running and {} waiting (the queue bound)",
                                  opt_.parallel, waiting_.size()));
    }
    ++stats_.requests_submitted;
    waiting_.push_back(std::move(r));
    stats_.waiting = int64_t(waiting_.size());
  }
  cv_.notify_all();
  return h;
}

void Scheduler::pause(bool paused) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    paused_ = paused;
  }
  cv_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void Scheduler::finish(Request& r, const std::string& reason, const std::string& error) {
  RequestEvent e;
  e.done = true;
  e.finish_reason = reason;
  e.error = error;
  if (reason != "error" && reason != "cancelled") {
    e.text = std::move(r.held);
    if (r.dec) e.text += r.dec->flush();
  }
  e.tokens = std::move(r.pending_tokens);
  e.prompt_tokens = int64_t(r.prompt.size());
  e.completion_tokens = r.generated;
  r.done = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    (reason == "stop" ? stats_.finished_stop : reason == "length" ? stats_.finished_length
     : reason == "cancelled"                                    ? stats_.finished_cancelled
                                                                : stats_.finished_error)++;
  }
  r.h->push(std::move(e));
}

void Scheduler::emit_token(Request& r, int32_t tok, double now) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.generated_tokens;
    if (r.generated == 0)
      stats_.ttft.add(now - r.t_submit);
    else
      stats_.inter_token.add(now - r.t_last);
  }
  r.t_last = now;
  ++r.generated;
  r.pending_tokens.push_back(tok);
  if (!r.opt.ignore_eos && std::find(eos_.begin(), eos_.end(), tok) != eos_.end()) {
    finish(r, "stop");
    return;
  }
  r.held += r.dec->push(tok);
  // The first stop string in the text ends it there; otherwise send all but a tail that could begin one.
  size_t cut = std::string::npos;
  for (const std::string& s : r.opt.stop)
    if (!s.empty()) cut = std::min(cut, r.held.find(s));
  if (cut != std::string::npos) {
    r.held.resize(cut);
    r.dec.reset();  // what the decoder still holds lies past the stop string
    finish(r, "stop");
    return;
  }
  size_t keep = 0;
  for (const std::string& s : r.opt.stop)
    for (size_t k = s.empty() ? 0 : std::min(s.size() - 1, r.held.size()); k > keep; --k)
      if (r.held.compare(r.held.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  if (r.generated >= r.opt.max_tokens || session_->position(r.seq) >= context_) {
    // The token just sampled would need a position of its own to be run, were generation to go on.
    finish(r, "length");
    return;
  }
  RequestEvent e;
  e.text = r.held.substr(0, r.held.size() - keep);
  r.held.erase(0, r.held.size() - keep);
  e.tokens = std::move(r.pending_tokens);
  r.pending_tokens.clear();
  r.next = tok;
  r.h->push(std::move(e));
}

void Scheduler::step_once(std::vector<std::unique_ptr<Request>>& running) {
  std::vector<SequenceRows> rows;
  std::vector<Request*> who;
  const int64_t V = model_.config().vocab_size;
  for (auto& r : running)
    if (r->fed == int64_t(r->prompt.size())) {
      rows.push_back({r->seq, std::span<const int32_t>(&r->next, 1), r->logits.data(), false});
      who.push_back(r.get());
    }
  // Prompt rows: --prefill-chunk while requests decode (their next token waits for the step), more when none does.
  const int64_t idle = opt_.idle_prefill_chunk > 0 ? opt_.idle_prefill_chunk : max_step_rows_;
  int64_t budget = std::min(rows.empty() ? idle : opt_.prefill_chunk, max_step_rows_ - int64_t(rows.size()));
  std::vector<int64_t> took(running.size(), 0);
  for (size_t i = 0; i < running.size() && budget > 0; ++i) {
    Request& r = *running[i];
    const int64_t left = int64_t(r.prompt.size()) - r.fed;
    if (left == 0) continue;
    const int64_t n = std::min(budget, left);
    rows.push_back({r.seq, std::span<const int32_t>(r.prompt).subspan(size_t(r.fed), size_t(n)),
                    n == left ? r.logits.data() : nullptr, false});
    who.push_back(&r);
    took[i] = n;
    budget -= n;
  }
  if (rows.empty()) return;
  try {
    session_->step(rows);
  } catch (const std::exception& e) {
    for (Request* r : who) finish(*r, "error", e.what());
    return;
  }
  int64_t total = 0;
  for (const auto& r : rows) total += int64_t(r.tokens.size());
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.steps;
    stats_.step_rows += uint64_t(total);
  }
  for (size_t i = 0; i < running.size(); ++i) {
    Request& r = *running[i];
    if (took[i] == 0) continue;
    r.fed += took[i];
    std::lock_guard<std::mutex> lk(mu_);
    stats_.prompt_tokens += uint64_t(took[i]);
  }
  const double now = now_seconds();
  for (size_t i = 0; i < rows.size(); ++i) {
    Request& r = *who[i];
    if (!rows[i].logits || r.done) continue;
    const int32_t tok = r.sampler->sample(std::span<const float>(r.logits.data(), size_t(V)));
    emit_token(r, tok, now);
  }
}

void Scheduler::engine() {
  std::vector<std::unique_ptr<Request>> running, gone;
  try {
    // The pool's caller (this thread) is pinned while the pool lives: the pool belongs to the engine thread.
    auto pool = std::make_unique<cpu::ThreadPool>(opt_.threads);
    session_ = std::make_unique<Session>(model_, context_, pool.get());
    session_->remove_sequence(0);  // every slot comes from add_sequence()
    max_step_rows_ = session_->chunk();
    {
      std::lock_guard<std::mutex> lk(mu_);
      ready_ = true;
    }
    cv_.notify_all();
    const int64_t V = model_.config().vocab_size;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || (!paused_ && (!waiting_.empty() || !running.empty())); });
        if (stop_) break;
        // Requests cancelled while waiting leave the queue (their final event goes out below, outside the lock).
        for (auto it = waiting_.begin(); it != waiting_.end();)
          if ((*it)->h->cancelled()) {
            gone.push_back(std::move(*it));
            it = waiting_.erase(it);
          } else {
            ++it;
          }
        while (int64_t(running.size()) < opt_.parallel && !waiting_.empty()) {
          running.push_back(std::move(waiting_.front()));
          waiting_.pop_front();
        }
        stats_.waiting = int64_t(waiting_.size());
        stats_.running = int64_t(running.size());
      }
      for (auto& r : gone) finish(*r, "cancelled");
      gone.clear();
      for (auto& r : running) {
        if (r->seq >= 0) continue;
        r->seq = session_->add_sequence();
        r->sampler.emplace(r->opt.sampling);
        r->dec.emplace(tok_, true);
        r->logits.resize(size_t(V));
      }
      for (auto& r : running)
        if (r->h->cancelled() && !r->done) finish(*r, "cancelled");
      step_once(running);
      if (opt_.on_step) opt_.on_step();
      for (auto& r : running)
        if (r->done) session_->remove_sequence(r->seq);
      std::erase_if(running, [](const std::unique_ptr<Request>& r) { return r->done; });
      {
        std::lock_guard<std::mutex> lk(mu_);
        stats_.running = int64_t(running.size());
      }
    }
    for (auto& r : running) finish(*r, "cancelled");
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& r : waiting_) r->h->push(final_event("cancelled"));
      waiting_.clear();
    }
    if (opt_.on_exit) {
      try {
        opt_.on_exit(*session_);
      } catch (const std::exception& e) {
        fmt::print(stderr, "{}\n", e.what());
      }
    }
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!ready_) {
      start_error_ = e.what();
      ready_ = true;
      cv_.notify_all();
    }
    // A failure after start (out of memory): every request still running or queued ends with it.
    for (auto& r : running)
      if (!r->done) r->h->push(final_event("error", e.what()));
    for (auto& r : waiting_) r->h->push(final_event("error", e.what()));
    waiting_.clear();
  }
}

}  // namespace genesis::runtime
