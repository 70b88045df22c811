// `genesis run`: load a model (directory or GGUF file), generate from a prompt (or a chat turn), stream the text, print statistics.
// Parsing and printing only: loading is runtime::load_model, generation runtime::generate.
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/error.h"
#include "cpu/thread_pool.h"
#include "kernels/nf4_gemv/nf4_gemv.h"
#include "runtime/model/generate.h"
#include "runtime/model/load.h"
#include "runtime/tokenizer/chat.h"

namespace {

using genesis::fail;
namespace rt = genesis::runtime;
namespace nf = genesis::kernels::nf4_gemv;

struct RunArgs {
  std::string model, prompt, system, experts = "stored", path, kb, json_file, dense = "stored";
  int64_t max_tokens = 128, context = 0;
  bool chat = false, no_think = false, no_kb = false, quiet = false, ignore_eos = false, keep_quant = false;
  genesis::cli::HybridArgs hybrid;
  genesis::cli::KvArgs kv;
  float temp = 0, top_p = 1;
  int top_k = 0, threads = 0, top_logits = 0;
  uint64_t seed = 0;
  CLI::Option *temp_opt = nullptr, *top_k_opt = nullptr, *top_p_opt = nullptr;
};

void run(const RunArgs& a) {
  rt::LoadOptions opt;
  rt::set_expert_mode(a.experts, opt);
  if (!a.path.empty()) {
    auto p = nf::parse_path(a.path);
    if (!p) fail("unknown kernel path '{}' (possible: avx512vnni, avx512bf16, avx512fp32, avx2vnni, avx2int8, avx2, scalar)", a.path);
    nf::require_path(*p);
    opt.path = *p;
  }
  opt.kb_path = a.kb;
  opt.use_kb = !a.no_kb;
  opt.show_progress = !a.quiet;
  rt::set_dense_mode(a.dense, opt);
  opt.keep_quant = a.keep_quant;
  a.hybrid.apply(opt);
  a.kv.apply(opt);
  rt::LoadedModel lm = rt::load_model(a.model, opt);
  if (!lm.tokenizer)
    fail("{} has no tokenizer (tokenizer.json, or tokenizer.ggml.* in a GGUF file): `genesis run` needs one to turn "
         "the prompt into tokens", a.model);
  const auto& cfg = lm.model->config();
  if (!a.quiet)
    fmt::print(stderr, "model: {}\nexperts: {}\ndense: {}\nloaded in {:.2f} s\n", cfg.summary(),
               lm.model->expert_description(), lm.model->dense_description(), lm.load_s);
  if (!a.quiet && lm.model->gpu())
    fmt::print(stderr, "gpu: {}\n", rt::gpu_description(*lm.model->gpu()));

  std::vector<int32_t> ids;
  if (a.chat) {
    if (lm.chat_template.empty())
      fail("{} has no chat template (tokenizer_config.json, or tokenizer.chat_template in a GGUF file); run without "
           "--chat", a.model);
    std::vector<rt::ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", a.prompt});
    rt::ChatOptions co;
    co.enable_thinking = !a.no_think;
    const std::string text = rt::apply_chat_template(lm.chat_template, msgs, true, lm.bos_token, lm.eos_token, co);
    ids = lm.tokenizer->encode(text, false, true);  // the template already holds BOS and special tokens
  } else {
    if (!a.system.empty()) fail("--system needs --chat");
    ids = lm.tokenizer->encode(a.prompt, true, false);
  }
  if (ids.empty()) fail("the prompt is empty");

  const int64_t context =
      a.context > 0 ? a.context : std::min(cfg.max_position_embeddings, rt::Session::kDefaultContext);
  if (int64_t(ids.size()) >= context)
    fail("the prompt has {} tokens but the context is {} tokens (--context; the model allows {})", ids.size(),
         context, cfg.max_position_embeddings);
  if (context > cfg.max_position_embeddings)
    fail("--context {} exceeds the model's max_position_embeddings {}", context, cfg.max_position_embeddings);

  rt::GenerateOptions go;
  go.max_new_tokens = a.max_tokens;
  if (!a.ignore_eos) go.stop_tokens = lm.stop_tokens;
  go.sampling = lm.sampling;  // generation_config.json's defaults, overridden by the flags given
  if (a.temp_opt->count()) go.sampling.temperature = a.temp;
  if (a.top_k_opt->count()) go.sampling.top_k = a.top_k;
  if (a.top_p_opt->count()) go.sampling.top_p = a.top_p;
  go.sampling.seed = a.seed;
  go.sampling.validate();

  genesis::cpu::ThreadPool pool(genesis::cli::clamp_threads(a.threads));
  rt::Session session(*lm.model, context, &pool);
  rt::Tokenizer::StreamDecoder dec(*lm.tokenizer, true);
  if (!a.chat) {
    // Echo the prompt, as llama.cpp does, so the continuation reads in place.
    fmt::print("{}", a.prompt);
    std::fflush(stdout);
  }
  std::vector<int32_t> generated;
  nlohmann::json top = nlohmann::json::array();  // per step: [[id, logit], ...] best first
  if (a.top_logits > 0)
    go.on_logits = [&](std::span<const float> l) {
      std::vector<int32_t> idx(l.size());
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t(i);
      const size_t k = std::min<size_t>(size_t(a.top_logits), idx.size());
      std::partial_sort(idx.begin(), idx.begin() + ptrdiff_t(k), idx.end(),
                        [&](int32_t x, int32_t y) { return l[size_t(x)] > l[size_t(y)]; });
      nlohmann::json step = nlohmann::json::array();
      for (size_t i = 0; i < k; ++i) step.push_back({idx[i], l[size_t(idx[i])]});
      top.push_back(std::move(step));
    };
  const auto st = rt::generate(session, ids, go, [&](int32_t tok) {
    generated.push_back(tok);
    if (std::find(go.stop_tokens.begin(), go.stop_tokens.end(), tok) == go.stop_tokens.end()) {
      fmt::print("{}", dec.push(tok));
      std::fflush(stdout);
    }
    return true;
  });
  fmt::print("{}\n", dec.flush());
  std::fflush(stdout);
  fmt::print(stderr,
             "\nprompt {} tokens: prefill {:.2f} s ({:.1f} tokens/s)\ngenerated {} tokens: decode {:.1f} tokens/s "
             "({} steps, {:.2f} s); stop: {}\nthreads {}, context {} ({} KV cache), sampling {}\npeak memory {:.2f} GiB "
             "(resident)\nexperts: {}\n",
             st.prompt_tokens, st.prefill_s, st.prefill_tps(), st.generated, st.decode_tps(), st.decode_steps,
             st.decode_s, st.stop_reason, pool.size(), context,
             lm.model->gpu() ? std::string("GPU") : std::string(rt::kv_type_name(session.kv_type())),
             go.sampling.temperature <= 0 ? std::string("greedy")
                                          : fmt::format("temperature {} top-k {} top-p {} seed {}",
                                                        go.sampling.temperature, go.sampling.top_k,
                                                        go.sampling.top_p, go.sampling.seed),
             double(rt::peak_rss_bytes()) / (1u << 30), lm.model->expert_description());
  if (!a.json_file.empty()) {
    nlohmann::json j = {
        {"model", a.model}, {"config", cfg.summary()}, {"experts", lm.model->expert_description()},
        {"prompt_ids", ids}, {"generated_ids", generated}, {"text", lm.tokenizer->decode(generated, true)},
        {"prompt_tokens", st.prompt_tokens}, {"generated", st.generated}, {"prefill_s", st.prefill_s},
        {"prefill_tps", st.prefill_tps()}, {"decode_s", st.decode_s}, {"decode_steps", st.decode_steps},
        {"decode_tps", st.decode_tps()}, {"stop_reason", st.stop_reason}, {"threads", pool.size()},
        {"load_s", lm.load_s}, {"peak_rss_bytes", rt::peak_rss_bytes()}, {"dense", lm.model->dense_description()}};
    if (a.top_logits > 0) j["top_logits"] = top;
    std::ofstream o(a.json_file);
    if (!o) fail("cannot write {}", a.json_file);
    o << j.dump(2) << "\n";
  }
  a.hybrid.record(cfg, session.expert_usage(), a.quiet);
}

void setup_run(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  auto* c = app.add_subcommand("run", "Generate text with a model: a Hugging Face directory or a GGUF file");
  c->add_option("--model,-m", a->model,
                "model directory (config.json, *.safetensors or index + shards, tokenizer.json) or GGUF file "
                "(llama, qwen2, qwen3, qwen3moe, olmoe, qwen3next; experts re-quantized to NF4)")
      ->required();
  c->add_option("--prompt,-p", a->prompt, "the prompt (with --chat: the user's message)")->required();
  c->add_option("-n,--max-tokens", a->max_tokens, "tokens to generate at most (default 128)")
      ->check(CLI::PositiveNumber);
  c->add_flag("--chat", a->chat, "wrap the prompt in the model's chat template (tokenizer_config.json / GGUF)");
  c->add_option("--system", a->system, "system message (with --chat)");
  c->add_flag("--no-think", a->no_think, "Qwen3 templates: disable the thinking block (enable_thinking=False)");
  a->temp_opt = c->add_option("--temp", a->temp, "temperature; 0 = greedy (default: generation_config.json, else 0)");
  a->top_k_opt = c->add_option("--top-k", a->top_k, "keep the k most likely tokens (0 = off)");
  a->top_p_opt = c->add_option("--top-p", a->top_p, "nucleus sampling mass (1 = off)");
  c->add_option("--seed", a->seed, "random seed for sampling (same seed, same text)");
  c->add_option("--threads,-t", a->threads, "threads (default: all allowed cores)")->check(CLI::NonNegativeNumber);
  c->add_option("--context,-c", a->context, "KV cache size in tokens (default min(4096, max_position_embeddings))");
  c->add_option("--experts", a->experts, genesis::cli::kExpertsHelp);
  c->add_option("--path", a->path, "NF4 kernel path (default: the fastest this CPU runs)");
  c->add_option("--kb", a->kb, "knowledge base of tuned kernels (default ~/.cache/genesis/kb.sqlite)");
  c->add_flag("--no-kb", a->no_kb, "baseline kernels only, ignore the knowledge base");
  c->add_option("--dense", a->dense, genesis::cli::kDenseHelp);
  c->add_flag("--keep-quant", a->keep_quant, "GGUF: every block-quantized matrix (experts, attention, MLP, output, embedding) stays as stored and runs on the ggml_gemv kernels with fp32 activations: the dequantized model's results at the file's size (no NF4; slower kernels)");
  a->hybrid.add(c);
  a->kv.add(c);
  c->add_flag("--ignore-eos", a->ignore_eos, "do not stop at end-of-sequence tokens (for timing)");
  c->add_option("--json", a->json_file, "write prompt ids, generated ids, text and timings as JSON");
  c->add_option("--top-logits", a->top_logits, "with --json: also each step's K largest logits (for checks)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--quiet,-q", a->quiet, "no progress bar or model summary");
  c->callback([a] { run(*a); });
}

}  // namespace
GENESIS_COMMAND("run", 20, setup_run);
