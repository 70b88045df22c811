// The HTTP side of `genesis serve`: routes, authentication, limits, JSON and server-sent events, Prometheus metrics.
#include "server/server.h"

#include <fmt/core.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "common/error.h"
#include "runtime/model/load.h"
#include "runtime/model/expert_usage.h"
#include "runtime/model/scheduler.h"
#include "runtime/tokenizer/chat.h"
#include "server/api.h"

namespace genesis::server {

namespace {

using nlohmann::json;
namespace rt = runtime;
using namespace std::chrono_literals;

constexpr auto kHeartbeat = 1s;  // a waiting response writes this often, so a gone client is noticed

struct State {
  ServeOptions opt;
  std::string model_id;
  std::atomic<bool> ready{false};
  rt::LoadedModel lm;
  std::unique_ptr<rt::Scheduler> sch;
  std::atomic<uint64_t> next_id{1};
  std::time_t started = std::time(nullptr);
  std::mutex mu;
  std::map<int, uint64_t> responses;  // by HTTP status
  std::map<std::string, uint64_t> requests;  // by endpoint
};

// Text from the model or the request is valid UTF-8 by construction; `replace` keeps a slip from throwing.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_json(e)); }

std::string request_id(State& s, const char* prefix) {
  return fmt::format("{}-{:x}{:06x}", prefix, uint64_t(s.started), s.next_id++);
}

// What a response needs from one scheduler request: the handle, and what the body repeats.
struct Job {
  std::shared_ptr<rt::RequestHandle> h;
  bool chat = false, stream = false, include_usage = false;
  std::string id, model;
  std::time_t created = 0;
  std::string text;  // non-streaming: the whole completion
  bool sent_role = false, finished = false;
  std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
};

json usage_json(const rt::RequestEvent& e) {
  return {{"prompt_tokens", e.prompt_tokens},
          {"completion_tokens", e.completion_tokens},
          {"total_tokens", e.prompt_tokens + e.completion_tokens}};
}

json chunk_json(const Job& j, const json& choice) {
  return {{"id", j.id},
          {"object", j.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", j.created},
          {"model", j.model},
          {"choices", json::array({choice})}};
}

bool write_sse(httplib::DataSink& sink, const json& j) {
  const std::string s = "data: " + dump(j) + "\n\n";
  return sink.write(s.data(), s.size());
}

// One event as server-sent events (stream) or into the accumulated text; false when the client is gone.
bool stream_event(Job& j, const rt::RequestEvent& e, httplib::DataSink& sink) {
  if (j.chat && !j.sent_role) {
    j.sent_role = true;
    if (!write_sse(sink, chunk_json(j, {{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                                         {"logprobs", nullptr}, {"finish_reason", nullptr}})))
      return false;
  }
  if (e.done && e.finish_reason == "error") {
    const json err = error_json(ApiError(500, "generation failed: " + e.error, "server_error"));
    if (!write_sse(sink, err)) return false;
  }
  if (!e.text.empty() || e.done) {
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (j.chat)
      choice["delta"] = e.text.empty() ? json::object() : json{{"content", e.text}};
    else
      choice["text"] = e.text;
    if (e.done) choice["finish_reason"] = e.finish_reason == "error" ? "stop" : e.finish_reason;
    if (!write_sse(sink, chunk_json(j, choice))) return false;
  }
  if (e.done) {
    if (j.include_usage) {
      json u = chunk_json(j, json::object());
      u["choices"] = json::array();
      u["usage"] = usage_json(e);
      if (!write_sse(sink, u)) return false;
    }
    const std::string done = "data: [DONE]\n\n";
    if (!sink.write(done.data(), done.size())) return false;
  }
  return true;
}

json final_json(const Job& j, const rt::RequestEvent& e) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", e.finish_reason}};
  if (j.chat)
    choice["message"] = {{"role", "assistant"}, {"content", j.text}};
  else
    choice["text"] = j.text;
  return {{"id", j.id},
          {"object", j.chat ? "chat.completion" : "text_completion"},
          {"created", j.created},
          {"model", j.model},
          {"choices", json::array({choice})},
          {"usage", usage_json(e)}};
}

// Submits the prompt and answers through a chunked provider: events as they come (stream), or the whole body at
// the end with a blank heartbeat meanwhile (leading whitespace is valid JSON). A write that fails (the client went
// away) or a provider released early cancels the request, which frees its slot.
void respond(State& s, httplib::Response& res, std::vector<int32_t> prompt, const GenParams& p, bool chat) {
  rt::RequestOptions ro;
  ro.sampling = s.lm.sampling;
  if (p.temperature) ro.sampling.temperature = *p.temperature;
  if (p.top_p) ro.sampling.top_p = *p.top_p;
  if (p.top_k) ro.sampling.top_k = *p.top_k;
  ro.sampling.seed = p.seed ? *p.seed : std::random_device{}();
  const int64_t room = s.sch->context() - int64_t(prompt.size());
  if (room < 1)
    throw ApiError(400,
                   fmt::format("the prompt has {} tokens; the context of a slot holds {} (--context), which leaves no "
                               "room to generate",
                               prompt.size(), s.sch->context()),
                   "invalid_request_error", "messages", "context_length_exceeded");
  ro.max_tokens = p.max_tokens ? *p.max_tokens : room;
  ro.stop = p.stop;
  ro.ignore_eos = p.ignore_eos;
  auto job = std::make_shared<Job>();
  job->chat = chat;
  job->stream = p.stream;
  job->include_usage = p.include_usage;
  job->id = request_id(s, chat ? "chatcmpl" : "cmpl");
  job->model = s.model_id;
  job->created = std::time(nullptr);
  try {
    job->h = s.sch->submit(std::move(prompt), ro);
  } catch (const rt::QueueFull& e) {
    throw ApiError(429, e.what(), "rate_limit_error", "", "queue_full");
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  auto provider = [job](size_t, httplib::DataSink& sink) -> bool {
    if (job->finished) return false;
    auto e = job->h->next(kHeartbeat);
    // Nothing written for a heartbeat (waiting in the queue, a non-streamed body accumulating, text held back): write
    // an SSE comment or a blank, which fails once the client has gone.
    const auto now = std::chrono::steady_clock::now();
    if (!e || now - job->last_write >= kHeartbeat) {
      job->last_write = now;
      const char* beat = job->stream ? ": keep-alive\n\n" : " ";
      if (!sink.write(beat, std::strlen(beat))) {
        job->h->cancel();
        return false;
      }
      if (!e) return true;
    }
    if (e->done) job->finished = true;
    if (job->stream) {
      if (!stream_event(*job, *e, sink)) {
        job->h->cancel();
        return false;
      }
      if (!e->text.empty()) job->last_write = now;
    } else {
      job->text += e->text;
      if (e->done) {
        const std::string body = e->finish_reason == "error"
                                     ? dump(error_json(ApiError(500, "generation failed: " + e->error, "server_error")))
                                     : dump(final_json(*job, *e));
        if (!sink.write(body.data(), body.size())) return false;
      }
    }
    if (e->done) sink.done();
    return true;
  };
  auto release = [job](bool) {
    if (!job->finished) job->h->cancel();
  };
  res.set_chunked_content_provider(p.stream ? "text/event-stream" : "application/json", provider, release);
  if (p.stream) res.set_header("Cache-Control", "no-cache");
}

std::string prometheus(State& s) {
  std::string o;
  auto metric = [&](const char* name, const char* type, const char* help) {
    o += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto histogram = [&](const char* name, const char* help, const rt::Histogram& h) {
    metric(name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; i < h.bounds.size(); ++i) {
      cum += h.counts[i];
      o += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, h.bounds[i], cum);
    }
    o += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count, name, h.sum, name, h.count);
  };
  metric("genesis_up", "gauge", "1 when the model is loaded and requests are served, 0 while loading");
  o += fmt::format("genesis_up {}\n", s.ready ? 1 : 0);
  {
    std::lock_guard<std::mutex> lk(s.mu);
    metric("genesis_http_requests_total", "counter", "HTTP requests answered, by endpoint");
    for (const auto& [k, v] : s.requests) o += fmt::format("genesis_http_requests_total{{endpoint=\"{}\"}} {}\n", k, v);
    metric("genesis_http_responses_total", "counter", "HTTP responses, by status code");
    for (const auto& [k, v] : s.responses) o += fmt::format("genesis_http_responses_total{{code=\"{}\"}} {}\n", k, v);
  }
  if (!s.ready) return o;
  const rt::SchedulerStats st = s.sch->stats();
  metric("genesis_requests_total", "counter", "Generation requests accepted into the queue");
  o += fmt::format("genesis_requests_total {}\n", st.requests_submitted);
  metric("genesis_requests_rejected_total", "counter", "Generation requests refused because the queue was full (429)");
  o += fmt::format("genesis_requests_rejected_total {}\n", st.requests_rejected);
  metric("genesis_requests_finished_total", "counter", "Generation requests finished, by finish reason");
  for (const auto& [k, v] : std::map<std::string, uint64_t>{{"stop", st.finished_stop},
                                                            {"length", st.finished_length},
                                                            {"cancelled", st.finished_cancelled},
                                                            {"error", st.finished_error}})
    o += fmt::format("genesis_requests_finished_total{{finish_reason=\"{}\"}} {}\n", k, v);
  metric("genesis_prompt_tokens_total", "counter", "Prompt tokens run (prefill)");
  o += fmt::format("genesis_prompt_tokens_total {}\n", st.prompt_tokens);
  metric("genesis_generation_tokens_total", "counter", "Tokens generated");
  o += fmt::format("genesis_generation_tokens_total {}\n", st.generated_tokens);
  metric("genesis_engine_steps_total", "counter", "Engine steps (one pass over the weights each)");
  o += fmt::format("genesis_engine_steps_total {}\n", st.steps);
  metric("genesis_engine_step_rows_total", "counter", "Rows (tokens of all sequences) run in engine steps");
  o += fmt::format("genesis_engine_step_rows_total {}\n", st.step_rows);
  metric("genesis_queue_length", "gauge", "Requests waiting for a slot");
  o += fmt::format("genesis_queue_length {}\n", st.waiting);
  metric("genesis_running_requests", "gauge", "Requests holding a slot (prefilling or decoding)");
  o += fmt::format("genesis_running_requests {}\n", st.running);
  metric("genesis_slots", "gauge", "Sequence slots (--parallel)");
  o += fmt::format("genesis_slots {}\n", st.slots);
  histogram("genesis_time_to_first_token_seconds", "Time from a request's arrival to its first generated token",
            st.ttft);
  histogram("genesis_inter_token_latency_seconds", "Time between consecutive generated tokens of a request",
            st.inter_token);
  return o;
}

void routes(httplib::Server& svr, State& s) {
  svr.set_pre_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard<std::mutex> lk(s.mu);
      ++s.requests[req.path.rfind("/v1/", 0) == 0 || req.path == "/health" || req.path == "/metrics" ? req.path
                                                                                                        : "other"];
    }
    if (req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    if (!s.opt.api_key.empty() && req.get_header_value("Authorization") != "Bearer " + s.opt.api_key) {
      send_error(res, ApiError(401, "a valid API key is required: Authorization: Bearer <key> (--api-key)",
                               "authentication_error", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!s.ready) {
      send_error(res, ApiError(503, "the model is loading", "server_error", "", "model_loading"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.Get("/health", [&s](const httplib::Request&, httplib::Response& res) {
    if (s.ready)
      send_json(res, 200, {{"status", "ok"}});
    else
      send_json(res, 503, {{"status", "loading"}});
  });
  svr.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus(s), "text/plain; version=0.0.4");
  });
  svr.Get("/v1/models", [&s](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200,
              {{"object", "list"},
               {"data", json::array({{{"id", s.model_id},
                                      {"object", "model"},
                                      {"created", s.started},
                                      {"owned_by", "genesis"},
                                      {"context_length", s.sch->context()}}})}});
  });
  svr.Post("/v1/chat/completions", [&s](const httplib::Request& req, httplib::Response& res) {
    try {
      const ChatRequest r = parse_chat_request(req.body);
      if (s.lm.chat_template.empty())
        throw ApiError(400, fmt::format("{} has no chat template: use /v1/completions", s.model_id));
      std::string text;
      try {
        text = rt::apply_chat_template(s.lm.chat_template, r.messages, true, s.lm.bos_token, s.lm.eos_token);
      } catch (const Error& e) {
        throw ApiError(400, e.what(), "invalid_request_error", "messages");
      }
      respond(s, res, s.lm.tokenizer->encode(text, false, true), r.params, true);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {
      send_error(res, ApiError(400, e.what()));
    }
  });
  svr.Post("/v1/completions", [&s](const httplib::Request& req, httplib::Response& res) {
    try {
      const CompletionRequest r = parse_completion_request(req.body);
      std::vector<int32_t> ids = r.prompt_tokens;
      if (r.prompt_text) {
        try {
          ids = s.lm.tokenizer->encode(*r.prompt_text, true, false);
        } catch (const Error& e) {
          throw ApiError(400, e.what(), "invalid_request_error", "prompt");
        }
      }
      if (ids.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", "prompt");
      respond(s, res, std::move(ids), r.params, false);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {
      send_error(res, ApiError(400, e.what()));
    }
  });
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 404   ? fmt::format("no route {} {}", req.method, req.path)
                            : res.status == 413 ? "the request body is larger than the limit (--max-body)"
                            : res.status == 405 ? fmt::format("{} is not allowed on {}", req.method, req.path)
                                                : fmt::format("HTTP {}", res.status);
    send_error(res, ApiError(res.status, msg, res.status == 404 ? "not_found_error" : "invalid_request_error"));
  });
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, "internal error: " + what, "server_error"));
  });
  svr.set_logger([&s](const httplib::Request&, const httplib::Response& res) {
    std::lock_guard<std::mutex> lk(s.mu);
    ++s.responses[res.status];
  });
}

int g_stop_pipe[2] = {-1, -1};
void on_stop_signal(int) {
  const char c = 1;
  [[maybe_unused]] ssize_t n = write(g_stop_pipe[1], &c, 1);
}

}  // namespace

int serve(const ServeOptions& opt) {
  if (opt.port < 0 || opt.port > 65535) fail("--port must be in [0, 65535], got {}", opt.port);
  if (opt.max_connections < 1) fail("--max-connections must be >= 1, got {}", opt.max_connections);
  auto s = std::make_unique<State>();
  s->opt = opt;
  s->model_id = !opt.alias.empty() ? opt.alias : std::filesystem::path(opt.model).filename().string();
  if (s->model_id.empty()) s->model_id = std::filesystem::path(opt.model).parent_path().filename().string();

  // SIGINT / SIGTERM: the handler writes a byte to a pipe, a thread reading it stops the server (threads started
  // before this one, OpenBLAS's, would take a signal a mask kept from the others).
  if (pipe(g_stop_pipe) != 0) fail("genesis serve: cannot make a pipe");
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  httplib::Server svr;
  svr.new_task_queue = [n = opt.max_connections] { return new httplib::ThreadPool(size_t(n)); };
  svr.set_payload_max_length(opt.max_body);
  svr.set_keep_alive_timeout(opt.idle_timeout_s);
  svr.set_keep_alive_max_count(1000);
  svr.set_read_timeout(opt.idle_timeout_s, 0);
  svr.set_write_timeout(opt.idle_timeout_s, 0);
  routes(svr, *s);
  if (!svr.bind_to_port(opt.host, opt.port)) {
    fmt::print(stderr, "genesis serve: cannot listen on {}:{} (in use, or not an address of this machine)\n",
               opt.host, opt.port);
    return 1;
  }
  // stop() before listen_after_bind() has started is lost (cpp-httplib): wait until it runs, or has returned.
  std::atomic<bool> listen_done{false};
  auto stop_server = [&svr, &listen_done] {
    while (!svr.is_running() && !listen_done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    svr.stop();
  };
  std::thread([stop_server] {
    char c;
    while (read(g_stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    stop_server();
  }).detach();

  int rc = 0;
  std::thread loader([&] {
    try {
      rt::LoadOptions lo = opt.load;
      rt::set_expert_mode(opt.experts, lo);
      lo.show_progress = !opt.quiet;
      rt::set_dense_mode(opt.dense, lo);
      s->lm = rt::load_model(opt.model, lo);
      if (!s->lm.tokenizer) fail("{} has no tokenizer: the server needs one to read prompts", opt.model);
      rt::Scheduler::Options so;
      so.parallel = opt.parallel;
      so.context = opt.context;
      so.max_queue = opt.max_queue;
      so.prefill_chunk = opt.prefill_chunk;
      so.idle_prefill_chunk = opt.idle_prefill_chunk;
      so.threads = opt.threads;
      if (!opt.load.expert_usage.empty() && s->lm.model->config().is_moe())
        so.on_exit = [path = opt.load.expert_usage, &cfg = s->lm.model->config(), quiet = opt.quiet](const rt::Session& ses) {
          if (ses.expert_usage().empty()) return;
          const std::string note = rt::add_expert_usage(path, cfg, ses.expert_usage());
          if (!note.empty()) fmt::print(stderr, "genesis serve: --expert-usage: warning: {}\n", note);
          else if (!quiet) fmt::print(stderr, "genesis serve: the served requests' expert choices added to {}\n", path);
        };
      s->sch = std::make_unique<rt::Scheduler>(*s->lm.model, *s->lm.tokenizer, s->lm.stop_tokens, so);
      s->ready = true;
      if (!opt.quiet)
        fmt::print(stderr, "genesis serve: {} ready: {} slots x {} tokens, loaded in {:.2f} s\n", s->model_id,
                   opt.parallel, s->sch->context(), s->lm.load_s);
    } catch (const std::exception& e) {
      fmt::print(stderr, "genesis serve: {}\n", e.what());
      rc = 1;
      stop_server();
    }
  });
  if (!opt.quiet)
    fmt::print(stderr, "genesis serve: listening on http://{}:{} (loading {})\n", opt.host, opt.port, opt.model);
  svr.listen_after_bind();
  listen_done = true;
  loader.join();
  s->sch.reset();  // cancels what still runs, joins the engine
  return rc;
}

}  // namespace genesis::server
