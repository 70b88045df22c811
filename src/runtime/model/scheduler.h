// Continuous batching over one Session: requests wait in a bounded queue, take a free sequence slot when one is
// free, and every engine step runs the next token of each decoding request plus a chunk of prompt rows of the
// requests still prefilling (chunked prefill: a long prompt joins over several steps, so running streams keep
// getting tokens). Each request samples with its own options and stops at an end-of-sequence token, a stop string,
// max_tokens or a full context; its text streams back through its handle; a cancelled request leaves at the next
// step and frees its slot. One engine thread owns the Session and its thread pool; submit() and the handles are
// thread-safe. Frontends (src/server) turn these events into HTTP; no model logic lives there.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "runtime/model/forward.h"
#include "runtime/model/sampler.h"
#include "runtime/tokenizer/tokenizer.h"

namespace genesis::runtime {

struct RequestOptions {
  int64_t max_tokens = 16;  // generated tokens at most (the context may end a request sooner)
  SamplerOptions sampling;
  std::vector<std::string> stop;  // stop strings: the text ends before the first one generated (not included)
  bool ignore_eos = false;
};

// What a request gets back, in order: text pieces, then one final event.
struct RequestEvent {
  std::string text;                   // new text (may be empty on the final event)
  std::vector<int32_t> tokens;        // the tokens this event covers
  bool done = false;
  std::string finish_reason;          // final event: "stop" (EOS or stop string), "length", "cancelled", "error"
  std::string error;                  // finish_reason "error": what went wrong
  int64_t prompt_tokens = 0, completion_tokens = 0;  // final event
};

// Thrown by submit() when the waiting queue is full (the server answers 429).
class QueueFull : public Error {
 public:
  using Error::Error;
};

class RequestHandle {
 public:
  // Waits up to `timeout` for the next event; nullopt on timeout. After the final event: nullopt at once.
  std::optional<RequestEvent> next(std::chrono::milliseconds timeout);
  // Asks the engine to drop the request (waiting or running); it answers with a final "cancelled" event.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Scheduler;
  void push(RequestEvent e);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestEvent> events_;
  bool finished_ = false, delivered_final_ = false;
  std::atomic<bool> cancelled_{false};
};

// Histogram with fixed upper bounds (Prometheus style: cumulative counts are computed when rendered).
struct Histogram {
  std::vector<double> bounds;  // ascending upper bounds (seconds); an implicit +Inf bucket follows
  std::vector<uint64_t> counts;  // per bucket (bounds.size() + 1), not cumulative
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void add(double v);
};

struct SchedulerStats {
  uint64_t requests_submitted = 0, requests_rejected = 0;
  uint64_t finished_stop = 0, finished_length = 0, finished_cancelled = 0, finished_error = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0, steps = 0, step_rows = 0;
  int64_t waiting = 0, running = 0, slots = 0;
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram inter_token{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
};

class Scheduler {
 public:
  struct Options {
    int parallel = 4;            // sequence slots (requests decoding at once)
    int64_t context = 0;         // tokens per slot (<= 0: the Session's default)
    int64_t max_queue = 64;      // requests beyond the slots waiting at most; beyond, submit() throws QueueFull
    int64_t prefill_chunk = 64;  // prompt rows per step at most while requests decode (fewer when decode rows fill it)
    // Prompt rows per step when no request is decoding (no stream's next token waits for the step): 0 = the Session's
    // step capacity (256 rows, 512 with AMX tiles or a GPU), so a burst of prompts, or one long prompt, runs as one
    // pass over the weights per step, as llama-server and vLLM batch them.
    int64_t idle_prefill_chunk = 0;
    int threads = 0;             // the engine's thread pool (0: every allowed cpu)
    std::function<void()> on_step;  // called on the engine thread after each step (tests); keep it short
    // Called on the engine thread when it stops (not after a failure), with the Session it ran: `serve
    // --expert-usage` records the routed experts' choices there. Its exceptions are caught and printed.
    std::function<void(const Session&)> on_exit;
  };
  // `eos` ends generation (unless a request ignores it). The model and tokenizer must outlive the scheduler. Starts
  // the engine thread; the destructor cancels every request and joins it.
  Scheduler(const Model& model, const Tokenizer& tokenizer, std::vector<int32_t> eos, const Options& opt);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Throws genesis::Error for an empty prompt, a prompt that leaves no room in a slot's context
  // or bad sampling options, QueueFull when the queue is full.
  std::shared_ptr<RequestHandle> submit(std::vector<int32_t> prompt, const RequestOptions& opt);

  // Paused, the engine stops between steps (requests still queue); for tests and maintenance.
  void pause(bool paused);

  SchedulerStats stats() const;
  int64_t context() const { return context_; }
  const Options& options() const { return opt_; }

 private:
  struct Request;
  void engine();
  void step_once(std::vector<std::unique_ptr<Request>>& running);
  void finish(Request& r, const std::string& reason, const std::string& error = "");
  void emit_token(Request& r, int32_t tok, double now);

  const Model& model_;
  const Tokenizer& tok_;
  std::vector<int32_t> eos_;
  Options opt_;
  int64_t context_ = 0, max_step_rows_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Request>> waiting_;
  bool stop_ = false, paused_ = false;
  SchedulerStats stats_;
  bool ready_ = false;      // the engine thread has made its Session (or failed: start_error_)
  std::string start_error_;
  std::thread thread_;
  std::unique_ptr<Session> session_;  // made and used by the engine thread only
};

}  // namespace genesis::runtime
