// tokenizer.json (the Hugging Face `tokenizers` format) -> TokenizerSpec. Defensive: every field is type-checked and
// an unsupported component is an error naming its type; building the Tokenizer itself is tokenizer.cpp's job.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "runtime/tokenizer/tokenizer.h"

namespace genesis::runtime {

namespace {

using Json = nlohmann::json;

struct Ctx {
  std::string origin;
  [[noreturn]] void bad(const std::string& path, std::string_view expected) const {
    fail("{}: field '{}': expected {}", origin, path, expected);
  }
};

const Json& field(const Ctx& c, const Json& obj, const std::string& path, const char* key) {
  if (!obj.is_object()) c.bad(path, "an object");
  auto it = obj.find(key);
  if (it == obj.end()) fail("{}: missing field '{}.{}'", c.origin, path, key);
  return *it;
}

const Json* opt_field(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string get_string(const Ctx& c, const Json& j, const std::string& path) {
  if (!j.is_string()) c.bad(path, "a string");
  return j.get<std::string>();
}

bool get_bool(const Ctx& c, const Json& obj, const std::string& path, const char* key, bool dflt) {
  const Json* j = opt_field(obj, key);
  if (!j) return dflt;
  if (!j->is_boolean()) c.bad(path + "." + key, "true or false");
  return j->get<bool>();
}

int64_t get_int(const Ctx& c, const Json& j, const std::string& path) {
  if (!j.is_number_integer()) c.bad(path, "an integer");
  return j.get<int64_t>();
}

int32_t get_id(const Ctx& c, const Json& j, const std::string& path) {
  int64_t v = get_int(c, j, path);
  if (v < 0 || v > INT32_MAX) c.bad(path, "a token id in [0, 2^31)");
  return static_cast<int32_t>(v);
}

std::string type_of(const Ctx& c, const Json& j, const std::string& path) {
  return get_string(c, field(c, j, path, "type"), path + ".type");
}

// A pattern object {"String": "..."} or {"Regex": "..."}.
std::pair<std::string, bool> get_pattern(const Ctx& c, const Json& obj, const std::string& path) {
  const Json& p = field(c, obj, path, "pattern");
  std::string pp = path + ".pattern";
  if (p.is_object() && p.contains("String")) return {get_string(c, p["String"], pp + ".String"), false};
  if (p.is_object() && p.contains("Regex")) return {get_string(c, p["Regex"], pp + ".Regex"), true};
  c.bad(pp, "{\"String\": ...} or {\"Regex\": ...}");
}

PrependScheme get_prepend_scheme(const Ctx& c, const Json& obj, const std::string& path) {
  if (const Json* j = opt_field(obj, "prepend_scheme")) {
    std::string s = get_string(c, *j, path + ".prepend_scheme");
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    c.bad(path + ".prepend_scheme", "always, first or never");
  }
  // Older files carry add_prefix_space instead.
  return get_bool(c, obj, path, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

std::string get_replacement(const Ctx& c, const Json& obj, const std::string& path) {
  std::string r = get_string(c, field(c, obj, path, "replacement"), path + ".replacement");
  if (r.empty()) c.bad(path + ".replacement", "a non-empty string");
  return r;
}

void parse_normalizer(const Ctx& c, const Json& j, const std::string& path, std::vector<NormalizerStep>& out) {
  std::string t = type_of(c, j, path);
  NormalizerStep st;
  using K = NormalizerStep::Kind;
  if (t == "Sequence") {
    const Json& list = field(c, j, path, "normalizers");
    if (!list.is_array()) c.bad(path + ".normalizers", "an array");
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(c, list[i], fmt::format("{}.normalizers[{}]", path, i), out);
    return;
  }
  if (t == "NFC")
    st.kind = K::kNfc;
  else if (t == "NFD")
    st.kind = K::kNfd;
  else if (t == "NFKC")
    st.kind = K::kNfkc;
  else if (t == "NFKD")
    st.kind = K::kNfkd;
  else if (t == "Prepend") {
    st.kind = K::kPrepend;
    st.pattern = get_string(c, field(c, j, path, "prepend"), path + ".prepend");
  } else if (t == "Replace") {
    st.kind = K::kReplace;
    std::tie(st.pattern, st.regex) = get_pattern(c, j, path);
    st.content = get_string(c, field(c, j, path, "content"), path + ".content");
  } else if (t == "Strip") {
    st.kind = K::kStrip;
    st.left = get_bool(c, j, path, "strip_left", false);
    st.right = get_bool(c, j, path, "strip_right", false);
  } else {
    fail(
        "{}: normalizer type '{}' at '{}' is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, "
        "Strip, Sequence)",
        c.origin, t, path);
  }
  out.push_back(std::move(st));
}

void parse_pre_tokenizer(const Ctx& c, const Json& j, const std::string& path, std::vector<PreTokenizerStep>& out) {
  std::string t = type_of(c, j, path);
  PreTokenizerStep st;
  using K = PreTokenizerStep::Kind;
  if (t == "Sequence") {
    const Json& list = field(c, j, path, "pretokenizers");
    if (!list.is_array()) c.bad(path + ".pretokenizers", "an array");
    for (size_t i = 0; i < list.size(); ++i)
      parse_pre_tokenizer(c, list[i], fmt::format("{}.pretokenizers[{}]", path, i), out);
    return;
  }
  if (t == "Split") {
    st.kind = K::kSplit;
    std::tie(st.pattern, st.regex) = get_pattern(c, j, path);
    std::string b = get_string(c, field(c, j, path, "behavior"), path + ".behavior");
    if (b == "Removed")
      st.behavior = SplitBehavior::kRemoved;
    else if (b == "Isolated")
      st.behavior = SplitBehavior::kIsolated;
    else if (b == "MergedWithPrevious")
      st.behavior = SplitBehavior::kMergedWithPrevious;
    else if (b == "MergedWithNext")
      st.behavior = SplitBehavior::kMergedWithNext;
    else if (b == "Contiguous")
      st.behavior = SplitBehavior::kContiguous;
    else
      c.bad(path + ".behavior", "Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
    if (get_bool(c, j, path, "invert", false))
      fail("{}: '{}': Split with invert=true is not supported", c.origin, path);
  } else if (t == "ByteLevel") {
    st.kind = K::kByteLevel;
    st.add_prefix_space = get_bool(c, j, path, "add_prefix_space", false);
    st.use_regex = get_bool(c, j, path, "use_regex", true);
  } else if (t == "Metaspace") {
    st.kind = K::kMetaspace;
    st.replacement = get_replacement(c, j, path);
    st.prepend_scheme = get_prepend_scheme(c, j, path);
    st.split = get_bool(c, j, path, "split", true);
  } else if (t == "Digits") {
    st.kind = K::kDigits;
    st.individual_digits = get_bool(c, j, path, "individual_digits", false);
  } else {
    fail(
        "{}: pre_tokenizer type '{}' at '{}' is not supported (supported: Split, ByteLevel, Metaspace, Digits, "
        "Sequence)",
        c.origin, t, path);
  }
  out.push_back(std::move(st));
}

void parse_decoder(const Ctx& c, const Json& j, const std::string& path, std::vector<DecoderStep>& out) {
  std::string t = type_of(c, j, path);
  DecoderStep st;
  using K = DecoderStep::Kind;
  if (t == "Sequence") {
    const Json& list = field(c, j, path, "decoders");
    if (!list.is_array()) c.bad(path + ".decoders", "an array");
    for (size_t i = 0; i < list.size(); ++i) parse_decoder(c, list[i], fmt::format("{}.decoders[{}]", path, i), out);
    return;
  }
  if (t == "ByteLevel") {
    st.kind = K::kByteLevel;
  } else if (t == "Metaspace") {
    st.kind = K::kMetaspace;
    st.replacement = get_replacement(c, j, path);
    st.prepend_scheme = get_prepend_scheme(c, j, path);
  } else if (t == "Replace") {
    st.kind = K::kReplace;
    bool regex = false;
    std::tie(st.pattern, regex) = get_pattern(c, j, path);
    if (regex) fail("{}: '{}': decoder Replace with a regex pattern is not supported", c.origin, path);
    st.content = get_string(c, field(c, j, path, "content"), path + ".content");
  } else if (t == "ByteFallback") {
    st.kind = K::kByteFallback;
  } else if (t == "Fuse") {
    st.kind = K::kFuse;
  } else if (t == "Strip") {
    st.kind = K::kStrip;
    st.content = get_string(c, field(c, j, path, "content"), path + ".content");
    st.start = static_cast<int>(get_int(c, field(c, j, path, "start"), path + ".start"));
    st.stop = static_cast<int>(get_int(c, field(c, j, path, "stop"), path + ".stop"));
  } else {
    fail(
        "{}: decoder type '{}' at '{}' is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, "
        "Fuse, Strip, Sequence)",
        c.origin, t, path);
  }
  out.push_back(std::move(st));
}

int32_t special_id(const Ctx& c, const Json& special_tokens, const std::string& name, const std::string& path) {
  const Json& tok = field(c, special_tokens, path, name.c_str());
  const Json& ids = field(c, tok, path + "." + name, "ids");
  if (!ids.is_array() || ids.size() != 1) c.bad(path + "." + name + ".ids", "an array of one id");
  return get_id(c, ids[0], path + "." + name + ".ids[0]");
}

// Sets prefix/suffix ids for one sequence.
void parse_post_processor(const Ctx& c, const Json& j, const std::string& path, TokenizerSpec& spec) {
  std::string t = type_of(c, j, path);
  if (t == "Sequence") {
    const Json& list = field(c, j, path, "processors");
    if (!list.is_array()) c.bad(path + ".processors", "an array");
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(c, list[i], fmt::format("{}.processors[{}]", path, i), spec);
    return;
  }
  if (t == "ByteLevel") return;  // only adjusts offsets
  if (t == "TemplateProcessing") {
    const Json& single = field(c, j, path, "single");
    const Json& specials = field(c, j, path, "special_tokens");
    if (!single.is_array()) c.bad(path + ".single", "an array");
    std::vector<int32_t> prefix, suffix;
    bool seen_a = false;
    for (size_t i = 0; i < single.size(); ++i) {
      std::string p = fmt::format("{}.single[{}]", path, i);
      const Json& item = single[i];
      if (item.is_object() && item.contains("Sequence")) {
        if (seen_a) fail("{}: '{}': a template with the sequence twice is not supported", c.origin, p);
        seen_a = true;
      } else if (item.is_object() && item.contains("SpecialToken")) {
        std::string name =
            get_string(c, field(c, item["SpecialToken"], p + ".SpecialToken", "id"), p + ".SpecialToken.id");
        (seen_a ? suffix : prefix).push_back(special_id(c, specials, name, path + ".special_tokens"));
      } else {
        c.bad(p, "{\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    spec.prefix_ids = std::move(prefix);
    spec.suffix_ids = std::move(suffix);
    return;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto token_id = [&](const char* key) {
      const Json& v = field(c, j, path, key);
      if (!v.is_array() || v.size() != 2) c.bad(path + "." + key, "[token, id]");
      return get_id(c, v[1], path + "." + key + "[1]");
    };
    spec.prefix_ids = {token_id("cls")};
    spec.suffix_ids = {token_id("sep")};
    return;
  }
  fail(
      "{}: post_processor type '{}' at '{}' is not supported (supported: TemplateProcessing, ByteLevel, "
      "RobertaProcessing, BertProcessing, Sequence)",
      c.origin, t, path);
}

void parse_model(const Ctx& c, const Json& m, TokenizerSpec& spec) {
  if (!m.is_object()) c.bad("model", "an object");
  std::string type = m.contains("type") ? get_string(c, m["type"], "model.type") : "BPE";
  if (type != "BPE") fail("{}: model type '{}' is not supported (supported: BPE)", c.origin, type);
  if (const Json* d = opt_field(m, "dropout")) {
    if (!d->is_number()) c.bad("model.dropout", "a number or null");
    if (d->get<double>() != 0.0) fail("{}: model.dropout is set; BPE dropout is not supported", c.origin);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const Json* v = opt_field(m, key))
      if (!get_string(c, *v, std::string("model.") + key).empty())
        fail("{}: model.{} is set; it is not supported", c.origin, key);
  }
  const Json& vocab = field(c, m, "model", "vocab");
  if (!vocab.is_object()) c.bad("model.vocab", "an object {token: id}");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int32_t id = get_id(c, it.value(), "model.vocab[\"" + it.key() + "\"]");
    if (static_cast<size_t>(id) >= spec.vocab.size()) spec.vocab.resize(static_cast<size_t>(id) + 1);
    if (!spec.vocab[id].empty()) fail("{}: model.vocab: id {} is given twice", c.origin, id);
    if (it.key().empty()) fail("{}: model.vocab: token with id {} is empty", c.origin, id);
    spec.vocab[id] = it.key();
  }
  const Json& merges = field(c, m, "model", "merges");
  if (!merges.is_array()) c.bad("model.merges", "an array");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const Json& mg = merges[i];
    std::string p = fmt::format("model.merges[{}]", i);
    if (mg.is_string()) {  // older format: "left right"
      std::string s = mg.get<std::string>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) c.bad(p, "\"left right\"");
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (mg.is_array() && mg.size() == 2) {
      spec.merges.emplace_back(get_string(c, mg[0], p + "[0]"), get_string(c, mg[1], p + "[1]"));
    } else {
      c.bad(p, "\"left right\" or [left, right]");
    }
  }
  if (const Json* u = opt_field(m, "unk_token")) spec.unk_token = get_string(c, *u, "model.unk_token");
  spec.byte_fallback = get_bool(c, m, "model", "byte_fallback", false);
  spec.fuse_unk = get_bool(c, m, "model", "fuse_unk", false);
  spec.ignore_merges = get_bool(c, m, "model", "ignore_merges", false);
}

}  // namespace

TokenizerSpec Tokenizer::parse_json(std::string_view json_text, std::string_view origin) {
  Ctx c{std::string(origin)};
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::parse_error& e) {
    fail("{}: not valid JSON: {}", origin, e.what());
  }
  if (!root.is_object()) c.bad("(root)", "an object");
  TokenizerSpec spec;
  parse_model(c, field(c, root, "(root)", "model"), spec);
  if (const Json* added = opt_field(root, "added_tokens")) {
    if (!added->is_array()) c.bad("added_tokens", "an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const Json& a = (*added)[i];
      std::string p = fmt::format("added_tokens[{}]", i);
      AddedToken t;
      t.id = get_id(c, field(c, a, p, "id"), p + ".id");
      t.content = get_string(c, field(c, a, p, "content"), p + ".content");
      t.special = get_bool(c, a, p, "special", false);
      t.lstrip = get_bool(c, a, p, "lstrip", false);
      t.rstrip = get_bool(c, a, p, "rstrip", false);
      t.normalized = get_bool(c, a, p, "normalized", !t.special);
      t.single_word = get_bool(c, a, p, "single_word", false);
      spec.added_tokens.push_back(std::move(t));
    }
  }
  if (const Json* n = opt_field(root, "normalizer")) parse_normalizer(c, *n, "normalizer", spec.normalizer);
  if (const Json* p = opt_field(root, "pre_tokenizer")) parse_pre_tokenizer(c, *p, "pre_tokenizer", spec.pre_tokenizer);
  if (const Json* d = opt_field(root, "decoder")) parse_decoder(c, *d, "decoder", spec.decoder);
  if (const Json* pp = opt_field(root, "post_processor")) parse_post_processor(c, *pp, "post_processor", spec);
  return spec;
}

Tokenizer Tokenizer::from_json(std::string_view json_text, std::string_view origin) {
  TokenizerSpec spec = parse_json(json_text, origin);
  try {
    return from_vocab(std::move(spec));
  } catch (const Error& e) {
    fail("{}: {}", origin, e.what());
  }
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  std::ifstream f(tokenizer_json_path, std::ios::binary);
  if (!f) fail("cannot open tokenizer file '{}'", tokenizer_json_path);
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("error reading tokenizer file '{}'", tokenizer_json_path);
  return from_json(ss.str(), tokenizer_json_path);
}

}  // namespace genesis::runtime
