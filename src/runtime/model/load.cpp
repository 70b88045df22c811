// Loading a model directory for generation: see load.h.
#include "runtime/model/load.h"

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/util.h"
#include "runtime/io/gguf.h"
#include "runtime/model/gguf_model.h"
#include "runtime/tokenizer/gguf_vocab.h"

namespace genesis::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::optional<json> read_json_file(const fs::path& p) {
  if (!fs::exists(p)) return std::nullopt;
  std::ifstream f(p);
  if (!f) fail("cannot open {}", p.string());
  json j = json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("{}: not a valid JSON object", p.string());
  return j;
}

// A special token in tokenizer_config.json is a string or {"content": "..."}.
std::string token_text(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return "";
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

void add_ids(const json& j, const char* key, std::vector<int32_t>& out, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return;
  const json& v = j[key];
  auto one = [&](const json& e) {
    if (!e.is_number_integer()) fail("{}: \"{}\" must be an integer or a list of integers", where, key);
    out.push_back(int32_t(e.get<int64_t>()));
  };
  if (v.is_array())
    for (const auto& e : v) one(e);
  else one(v);
}

}  // namespace

namespace {

// A GGUF file: the model, and the tokenizer, chat template and stop tokens from its metadata.
void load_gguf(const std::string& path, const LoadOptions& opt, LoadedModel& lm) {
  std::shared_ptr<const GgufFile> f = GgufFile::open(path);
  // The tokenizer first: a file without one (or with an unsupported one) is reported before minutes of loading.
  const json& meta = f->metadata();
  if (meta.contains("tokenizer.ggml.model")) lm.tokenizer = Tokenizer::from_vocab(tokenizer_spec_from_gguf(meta, path));
  lm.model = Model::from_gguf(f, opt);
  for (int32_t id : lm.model->config().eos_token_ids) lm.stop_tokens.push_back(id);
  if (const json* t = f->find_meta("tokenizer.chat_template"); t && t->is_string()) lm.chat_template = t->get<std::string>();
  if (lm.tokenizer) {
    if (auto e = lm.tokenizer->eos_id()) lm.eos_token = lm.tokenizer->id_to_token(*e);
    if (auto b = lm.tokenizer->bos_id()) lm.bos_token = lm.tokenizer->id_to_token(*b);
  }
}

}  // namespace

LoadedModel load_model(const std::string& dir, const LoadOptions& opt) {
  const double t0 = now_seconds();
  LoadedModel lm;
  lm.dir = dir;
  if (fs::is_regular_file(dir) && is_gguf_file(dir)) {
    load_gguf(dir, opt, lm);
    if (lm.tokenizer)
      if (auto e = lm.tokenizer->eos_id()) lm.stop_tokens.push_back(*e);
    std::sort(lm.stop_tokens.begin(), lm.stop_tokens.end());
    lm.stop_tokens.erase(std::unique(lm.stop_tokens.begin(), lm.stop_tokens.end()), lm.stop_tokens.end());
    lm.load_s = now_seconds() - t0;
    return lm;
  }
  lm.model = Model::load(dir, opt);
  const fs::path d(dir);
  if (fs::exists(d / "tokenizer.json")) lm.tokenizer = Tokenizer::from_file((d / "tokenizer.json").string());

  for (int32_t id : lm.model->config().eos_token_ids) lm.stop_tokens.push_back(id);
  if (auto tc = read_json_file(d / "tokenizer_config.json")) {
    const std::string where = (d / "tokenizer_config.json").string();
    if (tc->contains("chat_template")) {
      const json& t = (*tc)["chat_template"];
      if (t.is_string()) {
        lm.chat_template = t.get<std::string>();
      } else if (t.is_array()) {  // named templates: take "default"
        for (const auto& e : t)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
            lm.chat_template = e["template"].get<std::string>();
      }
    }
    lm.bos_token = token_text(*tc, "bos_token");
    lm.eos_token = token_text(*tc, "eos_token");
  }
  if (lm.chat_template.empty() && fs::exists(d / "chat_template.jinja")) {
    std::ifstream f(d / "chat_template.jinja");
    lm.chat_template.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  if (auto gc = read_json_file(d / "generation_config.json")) {
    const std::string where = (d / "generation_config.json").string();
    add_ids(*gc, "eos_token_id", lm.stop_tokens, where);
    const bool sample = gc->value("do_sample", false);
    if (sample) {
      lm.sampling_from_config = true;
      if (gc->contains("temperature") && (*gc)["temperature"].is_number())
        lm.sampling.temperature = (*gc)["temperature"].get<float>();
      else lm.sampling.temperature = 1.0f;
      if (gc->contains("top_k") && (*gc)["top_k"].is_number_integer()) lm.sampling.top_k = (*gc)["top_k"].get<int>();
      if (gc->contains("top_p") && (*gc)["top_p"].is_number()) lm.sampling.top_p = (*gc)["top_p"].get<float>();
    }
  }
  if (lm.tokenizer) {
    if (auto e = lm.tokenizer->eos_id()) lm.stop_tokens.push_back(*e);
    if (lm.eos_token.empty() && lm.tokenizer->eos_id()) lm.eos_token = lm.tokenizer->id_to_token(*lm.tokenizer->eos_id());
    if (lm.bos_token.empty() && lm.tokenizer->bos_id()) lm.bos_token = lm.tokenizer->id_to_token(*lm.tokenizer->bos_id());
    if (!lm.eos_token.empty())
      if (auto id = lm.tokenizer->token_to_id(lm.eos_token)) lm.stop_tokens.push_back(*id);
  }
  std::sort(lm.stop_tokens.begin(), lm.stop_tokens.end());
  lm.stop_tokens.erase(std::unique(lm.stop_tokens.begin(), lm.stop_tokens.end()), lm.stop_tokens.end());
  lm.load_s = now_seconds() - t0;
  return lm;
}

Tokenizer load_tokenizer(const std::string& path) {
  if (fs::is_regular_file(path) && is_gguf_file(path)) {
    auto f = GgufFile::open(path);
    if (!f->find_meta("tokenizer.ggml.model")) fail("{} has no tokenizer (no tokenizer.ggml.* metadata)", path);
    return Tokenizer::from_vocab(tokenizer_spec_from_gguf(f->metadata(), path));
  }
  const fs::path p = fs::is_directory(path) ? fs::path(path) / "tokenizer.json" : fs::path(path);
  if (!fs::exists(p)) fail("{}: no tokenizer.json (a model directory, a tokenizer.json or a GGUF file was expected)", path);
  return Tokenizer::from_file(p.string());
}

uint64_t peak_rss_bytes() {
  // VmHWM is this process image's own high-water mark. getrusage's ru_maxrss is not: Linux carries it across exec,
  // so a genesis started by a large process (a Python holding a model) would report its parent's peak.
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return uint64_t(std::stoull(line.substr(6))) * 1024;  // "VmHWM:  123 kB"
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return uint64_t(u.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace genesis::runtime
