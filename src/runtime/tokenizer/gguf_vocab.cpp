// tokenizer.ggml.* metadata -> TokenizerSpec; see gguf_vocab.h.
#include "runtime/tokenizer/gguf_vocab.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "common/error.h"

namespace genesis::runtime {

namespace {

using nlohmann::json;

// The GPT-2 split, Llama-3's, Qwen2's: the same expressions llama.cpp applies per tokenizer.ggml.pre value (and
// that the models' tokenizer.json files carry).
constexpr const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
constexpr const char* kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct PreTokenizerFamily {
  std::vector<std::string> names;  // tokenizer.ggml.pre values
  std::vector<std::string> regexes;
};

const std::vector<PreTokenizerFamily>& pre_tokenizer_families() {
  static const std::vector<PreTokenizerFamily> kFamilies = {
      {{"default"},
       {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"}},
      {{"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling"}, {kGpt2}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe"}, {kLlama3}},
      {{"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"}, {kQwen2}},
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}, {"\\p{N}", kGpt2}},
  };
  return kFamilies;
}

std::string supported_pre_names() {
  std::string s;
  for (const auto& f : pre_tokenizer_families())
    for (const auto& n : f.names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

class Meta {
 public:
  Meta(const json& m, const std::string& origin) : m_(m), origin_(origin) {}
  const json* find(const std::string& key) const {
    auto it = m_.find(key);
    return it == m_.end() ? nullptr : &*it;
  }
  const json& req(const std::string& key) const {
    const json* v = find(key);
    if (!v) fail("{}: metadata key {} is missing (needed for the tokenizer)", origin_, key);
    return *v;
  }
  std::string str(const std::string& key, const std::string& dflt) const {
    const json* v = find(key);
    if (!v) return dflt;
    if (!v->is_string()) fail("{}: metadata {} must be a string", origin_, key);
    return v->get<std::string>();
  }
  bool flag(const std::string& key, bool dflt) const {
    const json* v = find(key);
    if (!v) return dflt;
    if (!v->is_boolean()) fail("{}: metadata {} must be a bool", origin_, key);
    return v->get<bool>();
  }
  std::optional<int32_t> id(const std::string& key, size_t n_tokens) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) fail("{}: metadata {} must be an integer", origin_, key);
    const int64_t x = v->get<int64_t>();
    if (x < 0 || uint64_t(x) >= n_tokens)
      fail("{}: metadata {} = {} is outside the vocabulary of {} tokens", origin_, key, x, n_tokens);
    return int32_t(x);
  }
  const std::string& origin() const { return origin_; }

 private:
  const json& m_;
  const std::string& origin_;
};

// token_type values (llama.cpp's llama_token_type).
enum : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Sentencepiece vocabularies carry scores, not merges: a pair (a, b) merges when a + b is a token, earlier the
// higher that token's score (ties: the lower id), which is the order llama.cpp's SPM tokenizer merges in.
std::vector<std::pair<std::string, std::string>> merges_from_scores(const std::vector<std::string>& vocab,
                                                                    const std::vector<double>& scores,
                                                                    const std::vector<int64_t>& types) {
  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < vocab.size(); ++i)
    if (types[i] == kNormal || types[i] == kUserDefined || types[i] == kUnknown) ids.emplace(vocab[i], int32_t(i));
  struct Merge {
    double score;
    int32_t merged, left;
    std::string a, b;
  };
  std::vector<Merge> all;
  for (size_t i = 0; i < vocab.size(); ++i) {
    if (types[i] != kNormal) continue;
    const std::string& t = vocab[i];
    for (size_t cut = 1; cut < t.size(); ++cut) {
      if ((static_cast<unsigned char>(t[cut]) & 0xC0) == 0x80) continue;  // inside a UTF-8 sequence
      auto l = ids.find(t.substr(0, cut)), r = ids.find(t.substr(cut));
      if (l == ids.end() || r == ids.end()) continue;
      all.push_back({scores[i], int32_t(i), l->second, l->first, r->first});
    }
  }
  std::stable_sort(all.begin(), all.end(), [](const Merge& x, const Merge& y) {
    if (x.score != y.score) return x.score > y.score;
    if (x.merged != y.merged) return x.merged < y.merged;
    return x.left < y.left;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(all.size());
  for (auto& m : all) out.emplace_back(std::move(m.a), std::move(m.b));
  return out;
}

}  // namespace

TokenizerSpec tokenizer_spec_from_gguf(const json& meta, const std::string& origin) {
  Meta m(meta, origin);
  const std::string model = m.str("tokenizer.ggml.model", "");
  if (model.empty()) fail("{}: the file has no tokenizer (metadata tokenizer.ggml.model is missing)", origin);
  if (model != "gpt2" && model != "llama")
    fail("{}: tokenizer.ggml.model \"{}\" is not supported (supported: gpt2 = byte-level BPE, llama = "
         "sentencepiece BPE)", origin, model);

  TokenizerSpec spec;
  const json& tokens = m.req("tokenizer.ggml.tokens");
  if (!tokens.is_array() || tokens.empty()) fail("{}: tokenizer.ggml.tokens must be a non-empty array", origin);
  spec.vocab.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!tokens[i].is_string()) fail("{}: tokenizer.ggml.tokens[{}] is not a string", origin, i);
    spec.vocab.push_back(tokens[i].get<std::string>());
  }
  const size_t n = spec.vocab.size();
  std::vector<int64_t> types(n, kNormal);
  if (const json* t = m.find("tokenizer.ggml.token_type")) {
    if (!t->is_array() || t->size() != n)
      fail("{}: tokenizer.ggml.token_type must be an array of {} integers (one per token)", origin, n);
    for (size_t i = 0; i < n; ++i) {
      if (!(*t)[i].is_number_integer()) fail("{}: tokenizer.ggml.token_type[{}] is not an integer", origin, i);
      types[i] = (*t)[i].get<int64_t>();
    }
  }
  // Control and user-defined tokens are matched whole in the text (before the BPE), as llama.cpp does.
  for (size_t i = 0; i < n; ++i) {
    if (types[i] != kControl && types[i] != kUserDefined) continue;
    if (spec.vocab[i].empty()) continue;
    AddedToken a;
    a.id = int32_t(i);
    a.content = spec.vocab[i];
    a.special = types[i] == kControl;
    spec.added_tokens.push_back(std::move(a));
  }

  if (model == "gpt2") {
    const json& merges = m.req("tokenizer.ggml.merges");
    if (!merges.is_array()) fail("{}: tokenizer.ggml.merges must be an array of strings", origin);
    spec.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      if (!merges[i].is_string()) fail("{}: tokenizer.ggml.merges[{}] is not a string", origin, i);
      const std::string s = merges[i].get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= s.size())
        fail("{}: tokenizer.ggml.merges[{}] = \"{}\" is not two tokens separated by a space", origin, i, s);
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    }
    const std::string pre = m.str("tokenizer.ggml.pre", "default");
    const PreTokenizerFamily* fam = nullptr;
    for (const auto& f : pre_tokenizer_families())
      if (std::find(f.names.begin(), f.names.end(), pre) != f.names.end()) fam = &f;
    if (!fam)
      fail("{}: tokenizer.ggml.pre \"{}\" is not supported (supported: {})", origin, pre, supported_pre_names());
    for (const auto& re : fam->regexes) {
      PreTokenizerStep s;
      s.kind = PreTokenizerStep::Kind::kSplit;
      s.pattern = re;
      s.regex = true;
      s.behavior = SplitBehavior::kIsolated;
      spec.pre_tokenizer.push_back(std::move(s));
    }
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::kByteLevel;
    bl.add_prefix_space = false;
    bl.use_regex = false;
    spec.pre_tokenizer.push_back(bl);
    DecoderStep d;
    d.kind = DecoderStep::Kind::kByteLevel;
    spec.decoder.push_back(d);
  } else {
    const json& scores_j = m.req("tokenizer.ggml.scores");
    if (!scores_j.is_array() || scores_j.size() != n)
      fail("{}: tokenizer.ggml.scores must be an array of {} numbers (one per token)", origin, n);
    std::vector<double> scores(n);
    for (size_t i = 0; i < n; ++i) {
      if (!scores_j[i].is_number()) fail("{}: tokenizer.ggml.scores[{}] is not a number", origin, i);
      scores[i] = scores_j[i].get<double>();
    }
    spec.merges = merges_from_scores(spec.vocab, scores, types);
    spec.byte_fallback = true;
    spec.fuse_unk = true;
    if (auto unk = m.id("tokenizer.ggml.unknown_token_id", n)) spec.unk_token = spec.vocab[size_t(*unk)];
    const std::string space = "\xE2\x96\x81";  // U+2581
    if (m.flag("tokenizer.ggml.add_space_prefix", true)) {
      NormalizerStep p;
      p.kind = NormalizerStep::Kind::kPrepend;
      p.pattern = space;
      spec.normalizer.push_back(p);
    }
    NormalizerStep r;
    r.kind = NormalizerStep::Kind::kReplace;
    r.pattern = " ";
    r.content = space;
    spec.normalizer.push_back(r);
    DecoderStep d;
    d.kind = DecoderStep::Kind::kReplace;
    d.pattern = space;
    d.content = " ";
    spec.decoder.push_back(d);
    d = {};
    d.kind = DecoderStep::Kind::kByteFallback;
    spec.decoder.push_back(d);
    d = {};
    d.kind = DecoderStep::Kind::kFuse;
    spec.decoder.push_back(d);
    if (m.flag("tokenizer.ggml.add_space_prefix", true)) {
      d = {};
      d.kind = DecoderStep::Kind::kStrip;
      d.content = " ";
      d.start = 1;
      spec.decoder.push_back(d);
    }
  }

  spec.bos_id = m.id("tokenizer.ggml.bos_token_id", n);
  spec.eos_id = m.id("tokenizer.ggml.eos_token_id", n);
  // llama.cpp's defaults: sentencepiece vocabularies add BOS, byte-level BPE ones do not unless told.
  if (m.flag("tokenizer.ggml.add_bos_token", model == "llama")) {
    if (!spec.bos_id) fail("{}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id", origin);
    spec.prefix_ids.push_back(*spec.bos_id);
  }
  if (m.flag("tokenizer.ggml.add_eos_token", false)) {
    if (!spec.eos_id) fail("{}: tokenizer.ggml.add_eos_token is set but there is no eos_token_id", origin);
    spec.suffix_ids.push_back(*spec.eos_id);
  }
  return spec;
}

}  // namespace genesis::runtime
