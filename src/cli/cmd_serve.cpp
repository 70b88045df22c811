// `genesis serve`: the OpenAI-compatible HTTP server. Options only: the server is server::serve (src/server).
#include <cstdlib>

#include "cli/command.h"
#include "server/server.h"

namespace {

namespace sv = genesis::server;

void setup(CLI::App& app) {
  auto o = std::make_shared<sv::ServeOptions>();
  auto* c = app.add_subcommand(
      "serve",
      "OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics) whose "
      "concurrent requests share each pass over the weights (continuous batching)");
  c->add_option("--model,-m", o->model, "model directory (Hugging Face) or GGUF file, with a tokenizer")->required();
  c->add_option("--host", o->host, "address to listen on (default 127.0.0.1: this machine only)");
  c->add_option("--port", o->port, "TCP port (default 8080)")->check(CLI::Range(0, 65535));
  c->add_option("--parallel", o->parallel,
                "sequence slots: requests generating at once, one row each per engine step (default 4); more wait "
                "in the queue")
      ->check(CLI::Range(1, 64));
  c->add_option("--context,-c", o->context,
                "KV cache tokens per slot: prompt + completion of one request (default min(4096, "
                "max_position_embeddings)); memory grows with --parallel x --context")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--api-key", o->api_key, "require `Authorization: Bearer KEY` on /v1/* (default: none)");
  c->add_option("--alias", o->alias, "model id reported by /v1/models and in responses (default: the file name)");
  c->add_option("--threads,-t", o->threads, "engine threads (default: all allowed cores)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--queue", o->max_queue, "requests waiting for a slot at most; past it 429 (default 64)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--prefill-chunk", o->prefill_chunk,
                "prompt tokens per engine step at most while requests are decoding: a long prompt joins over several "
                "steps so that running streams keep getting tokens (default 64)")
      ->check(CLI::Range(1, 256));
  c->add_option("--idle-prefill-chunk", o->idle_prefill_chunk,
                "prompt tokens per engine step when no request is decoding (a burst of prompts, a long prompt "
                "alone): default 0, the engine's step capacity (256, or 512 with AMX tiles or --gpu)")
      ->check(CLI::Range(0, 512));
  c->add_option("--max-body", o->max_body, "request body bytes at most; larger gets 413 (default 4 MiB)")
      ->check(CLI::PositiveNumber);
  c->add_option("--max-connections", o->max_connections,
                "connections served at once (HTTP threads; default 64); more wait to be accepted")
      ->check(CLI::Range(1, 4096));
  c->add_option("--timeout", o->idle_timeout_s, "seconds a connection may stay idle or stall a read / write (default 5; SIGTERM waits for open connections up to this long)")
      ->check(CLI::Range(1, 3600));
  c->add_option("--dense", o->dense, genesis::cli::kDenseHelp);
  c->add_option("--experts", o->experts, genesis::cli::kExpertsHelp);
  auto h = std::make_shared<genesis::cli::HybridArgs>();
  h->add(c);
  auto kv = std::make_shared<genesis::cli::KvArgs>();
  kv->add(c);
  c->add_flag("--quiet,-q", o->quiet, "no progress bar or startup lines");
  c->callback([o, h, kv] {
    h->apply(o->load);
    kv->apply(o->load);
    const int rc = sv::serve(*o);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace
GENESIS_COMMAND("serve", 21, setup);
