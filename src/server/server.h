// `genesis serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of runtime::Scheduler. HTTP only: the
// bodies are parsed by api.h, prompts built with the model's tokenizer and chat template, generation and batching
// are the scheduler's. The port answers at once; /health says 503 until the model is loaded.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/model/weights.h"

namespace genesis::server {

struct ServeOptions {
  std::string model;         // directory or GGUF file
  std::string alias;         // the id /v1/models reports ("" = the file or directory name)
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 4;          // sequence slots
  int64_t context = 0;       // tokens per slot (0: min(4096, max_position_embeddings))
  std::string api_key;       // "" = no authentication
  int threads = 0;           // engine threads (0: every allowed cpu)
  int64_t max_queue = 64;    // waiting requests beyond the slots; past it 429
  int64_t prefill_chunk = 64;
  int64_t idle_prefill_chunk = 0;  // 0: the session's step capacity (Scheduler::Options)
  size_t max_body = 4u << 20;  // bytes; larger bodies get 413
  int max_connections = 64;    // HTTP worker threads: connections served at once; more wait for one
  int idle_timeout_s = 5;      // keep-alive idle and read/write timeouts
  std::string dense = "stored", experts = "stored";
  // The hybrid mode and its options (gpu, gpu_device, gpu_defer, gpu_prefill_rows, gpu_expert_budget) and
  // --expert-usage (the counts --gpu-experts places by; the served choices are added at exit). The load starts from
  // these; experts, dense and progress come from the fields above.
  runtime::LoadOptions load;
  bool quiet = false;
};

// Serves until SIGINT / SIGTERM. Returns the process exit code (non-zero when the port cannot be bound or the
// model fails to load).
int serve(const ServeOptions& opt);

}  // namespace genesis::server
