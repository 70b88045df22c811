// `genesis perplexity`: perplexity of a model over a text file (runtime::perplexity does the work; this file parses
// and prints).
#include <fmt/core.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/error.h"
#include "common/progress.h"
#include "cpu/thread_pool.h"
#include "runtime/model/load.h"
#include "runtime/model/perplexity.h"

namespace {

using genesis::fail;
namespace rt = genesis::runtime;

struct Args {
  std::string model, file, experts = "stored", json_file, dense = "stored";
  int64_t context = 512, skip = -1, chunks = 0;
  int threads = 0;
  bool no_kb = false, quiet = false, keep_quant = false;
  genesis::cli::HybridArgs hybrid;
  genesis::cli::KvArgs kv;
};

void run(const Args& a) {
  std::ifstream in(a.file, std::ios::binary);
  if (!in) fail("cannot open the text file {}", a.file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  rt::LoadOptions opt;
  rt::set_expert_mode(a.experts, opt);
  rt::set_dense_mode(a.dense, opt);
  opt.keep_quant = a.keep_quant;
  a.hybrid.apply(opt);
  a.kv.apply(opt);
  opt.use_kb = !a.no_kb;
  opt.show_progress = !a.quiet;
  rt::LoadedModel lm = rt::load_model(a.model, opt);
  if (!lm.tokenizer) fail("{} has no tokenizer: perplexity needs one to turn the text into tokens", a.model);
  const std::vector<int32_t> ids = lm.tokenizer->encode(text, false, false);
  rt::PerplexityOptions po;
  po.context = a.context;
  po.skip = a.skip;
  po.max_chunks = a.chunks;
  const std::vector<int32_t> with_special = lm.tokenizer->encode("", true, false);
  if (!with_special.empty() && lm.tokenizer->bos_id() && with_special.front() == *lm.tokenizer->bos_id())
    po.bos = *lm.tokenizer->bos_id();

  // Before the cache is sized or any chunk runs.
  const int64_t max_pos = lm.model->config().max_position_embeddings;
  if (a.context > max_pos) fail("--context {} exceeds the model's max_position_embeddings {}", a.context, max_pos);
  if (int64_t(ids.size()) < a.context)
    fail("the text has {} tokens, fewer than one chunk of {} (use a longer text or a smaller --context)", ids.size(),
         a.context);
  genesis::cpu::ThreadPool pool(genesis::cli::clamp_threads(a.threads));
  rt::Session session(*lm.model, a.context, &pool);
  std::unique_ptr<genesis::Progress> progress;
  const int64_t total = a.chunks > 0 ? std::min<int64_t>(a.chunks, int64_t(ids.size()) / a.context)
                                     : int64_t(ids.size()) / a.context;
  if (!a.quiet && total > 0) progress = std::make_unique<genesis::Progress>("perplexity", double(total), "chunks");
  const rt::PerplexityResult r = rt::perplexity(session, ids, po, [&](int64_t, int64_t, double) {
    if (progress) progress->add(1);
  });
  progress.reset();
  const int64_t skip = a.skip < 0 ? a.context / 2 : a.skip;
  fmt::print("{}: {} tokens, {} chunks of {} (first {} of each not scored), {} tokens scored\n", a.file, ids.size(),
             r.chunks, a.context, skip, r.scored);
  fmt::print("perplexity {:.4f} (mean NLL {:.5f} nats/token), {:.1f} s, {:.1f} tokens/s\n", r.ppl, r.mean_nll,
             r.seconds, double(r.chunks * a.context) / r.seconds);
  if (!a.json_file.empty()) {
    nlohmann::json j = {{"model", a.model},       {"text", a.file},        {"tokens", ids.size()},
                        {"context", a.context},   {"skip", skip},          {"chunks", r.chunks},
                        {"scored", r.scored},     {"ppl", r.ppl},          {"mean_nll", r.mean_nll},
                        {"chunk_ppl", r.chunk_ppl}, {"seconds", r.seconds}, {"threads", pool.size()},
                        {"experts", lm.model->expert_description()}, {"dense", lm.model->dense_description()},
                        {"bos_per_chunk", po.bos.has_value()}};
    std::ofstream o(a.json_file);
    if (!o) fail("cannot write {}", a.json_file);
    o << j.dump(2) << "\n";
  }
  a.hybrid.record(lm.model->config(), session.expert_usage(), a.quiet);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* c = app.add_subcommand("perplexity", "Perplexity of a model over a text file (chunks as llama.cpp cuts them)");
  c->add_option("--model,-m", a->model, "model directory (Hugging Face) or GGUF file")->required();
  c->add_option("--file,-f", a->file, "UTF-8 text file")->required();
  c->add_option("--context,-c", a->context, "tokens per chunk (default 512)")->check(CLI::Range(2, 1 << 20));
  c->add_option("--skip", a->skip, "tokens per chunk not scored (default: half the context, as llama.cpp)");
  c->add_option("--chunks", a->chunks, "at most this many chunks (default: all)")->check(CLI::NonNegativeNumber);
  c->add_option("--threads,-t", a->threads, "threads (default: all allowed cores)")->check(CLI::NonNegativeNumber);
  c->add_option("--experts", a->experts, genesis::cli::kExpertsHelp);
  c->add_option("--dense", a->dense, genesis::cli::kDenseHelp);
  c->add_flag("--keep-quant", a->keep_quant, "GGUF: every block-quantized matrix (experts, attention, MLP, output, embedding) stays as stored and runs on the ggml_gemv kernels with fp32 activations: the dequantized model's results at the file's size (no NF4; slower kernels)");
  a->hybrid.add(c);
  a->kv.add(c);
  c->add_flag("--no-kb", a->no_kb, "baseline kernels only, ignore the knowledge base");
  c->add_option("--json", a->json_file, "write the result as JSON");
  c->add_flag("--quiet,-q", a->quiet, "no progress bars");
  c->callback([a] { run(*a); });
}

}  // namespace
GENESIS_COMMAND("perplexity", 22, setup);
