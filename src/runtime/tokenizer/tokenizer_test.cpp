// Tokenizer tests: every corpus line against ids recorded from the `tokenizers` library (tools/tokenizer_golden.py)
// on real tokenizer.json files, decode round trips, streaming decode, and bad-input errors.
#include "runtime/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"

namespace genesis::runtime {
namespace {

using Json = nlohmann::json;

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<Json> read_jsonl(const std::string& path) {
  std::vector<Json> out;
  std::istringstream in(read_all(path));
  for (std::string line; std::getline(in, line);) out.push_back(Json::parse(line));
  return out;
}

std::string testdata(const std::string& name) { return std::string(GENESIS_TOKENIZER_TESTDATA) + "/" + name; }
std::string unpacked(const std::string& name) { return std::string(GENESIS_TOKENIZER_UNPACKED) + "/" + name; }

const Tokenizer& qwen3() {
  static const Tokenizer t = Tokenizer::from_file(unpacked("qwen3_tokenizer.json"));
  return t;
}

const Tokenizer& mistral() {
  static const Tokenizer t = Tokenizer::from_file(unpacked("mistral_tokenizer.json"));
  return t;
}

std::string show(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t x : v) s += std::to_string(x) + " ";
  return s;
}

// Compares every corpus line with the golden record; returns the number of mismatching lines.
void check_golden(const Tokenizer& tok, const std::string& corpus_file, const std::string& golden_file) {
  auto corpus = read_jsonl(testdata(corpus_file));
  auto golden = read_jsonl(testdata(golden_file));
  ASSERT_EQ(corpus.size(), golden.size());
  ASSERT_GT(corpus.size(), 2000u);
  int mismatches = 0, checked = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    std::string text = corpus[i].get<std::string>();
    const Json& g = golden[i];
    auto expect_ids = [&](const char* key, const std::vector<int32_t>& got) {
      ++checked;
      auto want = g[key].get<std::vector<int32_t>>();
      if (got != want && ++mismatches <= 10)
        ADD_FAILURE() << golden_file << " line " << i << " " << key << " text=" << Json(text).dump() << "\n want "
                      << show(want) << "\n got  " << show(got);
    };
    auto ids = tok.encode(text, false);
    expect_ids("ids", ids);
    if (g.contains("ids_add_special")) expect_ids("ids_add_special", tok.encode(text, true));
    if (g.contains("ids_no_parse_special")) expect_ids("ids_no_parse_special", tok.encode(text, false, false));
    std::string want_dec = g.contains("decoded") ? g["decoded"].get<std::string>() : text;
    auto gold_ids = g["ids"].get<std::vector<int32_t>>();
    ++checked;
    std::string dec = tok.decode(gold_ids);
    if (dec != want_dec && ++mismatches <= 10)
      ADD_FAILURE() << golden_file << " line " << i << " decode: want " << Json(want_dec).dump() << " got "
                    << Json(dec).dump();
    if (g.contains("decoded_skip_special")) {
      ++checked;
      std::string ds = tok.decode(gold_ids, true);
      if (ds != g["decoded_skip_special"].get<std::string>() && ++mismatches <= 10)
        ADD_FAILURE() << golden_file << " line " << i << " decode(skip_special): want "
                      << g["decoded_skip_special"].dump() << " got " << Json(ds).dump();
    }
    // Streaming decode gives the same text as decode (skip_special=false to compare with the line above).
    Tokenizer::StreamDecoder sd(tok, false);
    std::string streamed;
    for (int32_t id : gold_ids) streamed += sd.push(id);
    streamed += sd.flush();
    ++checked;
    if (streamed != dec && ++mismatches <= 10)
      ADD_FAILURE() << golden_file << " line " << i << " stream decode: " << Json(streamed).dump() << " vs "
                    << Json(dec).dump();
  }
  std::printf("%s: %zu lines, %d comparisons, %d mismatches\n", golden_file.c_str(), corpus.size(), checked,
              mismatches);
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerQwen3, MatchesTokenizersLibraryOnCorpus) {
  check_golden(qwen3(), "corpus_qwen3.jsonl", "golden_qwen3.jsonl");
}

TEST(TokenizerQwen3, SpecialTokensAndVocab) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.vocab_size(), 151669);
  EXPECT_EQ(t.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(t.id_to_token(151645), "<|im_end|>");
  EXPECT_TRUE(t.is_special(151644));
  EXPECT_FALSE(t.is_special(151667));  // <think> is an added but not special token
  EXPECT_FALSE(t.bos_id().has_value());
  EXPECT_EQ(t.eos_id(), 151643);  // <|endoftext|>
  EXPECT_EQ(t.encode("<|im_start|>user", false), (std::vector<int32_t>{151644, 872}));
  // parse_special=false: the special token is plain text, <think> (not special) is still recognized.
  auto ids = t.encode("<|im_end|><think>", false, false);
  EXPECT_EQ(ids.back(), 151667);
  EXPECT_GT(ids.size(), 2u);
  EXPECT_THROW(t.id_to_token(151669), Error);
  EXPECT_THROW(t.decode(std::vector<int32_t>{-1}), Error);
}

TEST(TokenizerQwen3, StreamDecoderHoldsPartialUtf8) {
  const Tokenizer& t = qwen3();
  // One emoji is several byte-level tokens; none of its bytes may come out before the last one.
  auto ids = t.encode("a𓀀b", false);
  ASSERT_GT(ids.size(), 3u);
  Tokenizer::StreamDecoder sd(t);
  std::vector<std::string> parts;
  for (int32_t id : ids) parts.push_back(sd.push(id));
  std::string all;
  for (auto& p : parts) {
    all += p;
    size_t bad = 0;
    for (unsigned char c : p) bad += c == 0xEF;  // a U+FFFD would start with 0xEF
    EXPECT_EQ(bad, 0u);
  }
  EXPECT_EQ(all + sd.flush(), "a𓀀b");
  // A dangling partial character is given up as U+FFFD on flush.
  Tokenizer::StreamDecoder sd2(t);
  auto emoji = t.encode("𓀀", false);
  ASSERT_GT(emoji.size(), 1u);
  EXPECT_EQ(sd2.push(emoji[0]), "");
  EXPECT_EQ(sd2.flush(), "\xEF\xBF\xBD");
}

TEST(TokenizerQwen3, RejectsInvalidUtf8) {
  EXPECT_THROW(qwen3().encode(std::string("ab\xC3", 3), false), Error);
  EXPECT_THROW(qwen3().encode(std::string("\xED\xA0\x80", 3), false), Error);  // a surrogate
}

TEST(TokenizerQwen3, LongTextSpeed) {
  // A long prompt built from the corpus (repeated words hit the cache, which is how real prompts behave).
  auto corpus = read_jsonl(testdata("corpus_qwen3.jsonl"));
  std::string text;
  for (const auto& c : corpus) text += c.get<std::string>() + "\n";
  auto t_load = std::chrono::steady_clock::now();
  Tokenizer t = Tokenizer::from_file(unpacked("qwen3_tokenizer.json"));  // fresh: an empty word cache
  std::printf("load tokenizer.json: %.0f ms\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count() * 1e3);
  auto t0 = std::chrono::steady_clock::now();
  auto ids = t.encode(text, false);
  auto t1 = std::chrono::steady_clock::now();
  auto ids2 = t.encode(text, false);  // warm cache
  auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(ids, ids2);
  EXPECT_EQ(t.decode(ids), t.decode(ids2));
  double s1 = std::chrono::duration<double>(t1 - t0).count(), s2 = std::chrono::duration<double>(t2 - t1).count();
  std::printf("encode %zu bytes -> %zu tokens: cold %.1f ms (%.0f tokens/s), warm %.1f ms (%.0f tokens/s)\n",
              text.size(), ids.size(), s1 * 1e3, ids.size() / s1, s2 * 1e3, ids.size() / s2);
  // One long word with no merge shortcut must not be quadratic: 200k letters in well under a second.
  std::string word(200000, 'x');
  for (size_t i = 0; i < word.size(); i += 7) word[i] = 'a' + static_cast<char>(i % 26);
  auto t3 = std::chrono::steady_clock::now();
  auto w = t.encode(word, false);
  double s3 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t3).count();
  std::printf("one 200000-byte word -> %zu tokens in %.1f ms\n", w.size(), s3 * 1e3);
  EXPECT_EQ(t.decode(w), word);
  EXPECT_LT(s3, 2.0);
}

TEST(TokenizerMistral, MatchesTokenizersLibraryOnCorpus) {
  check_golden(mistral(), "corpus_mistral.jsonl", "golden_mistral.jsonl");
}

TEST(TokenizerMistral, MetaspaceVariantMatchesTokenizersLibrary) {
  // The same vocabulary with the non-legacy Metaspace pre-tokenizer (prepend_scheme "first") instead of the
  // Prepend + Replace normalizers; tools/tokenizer_golden.py makes the same edit.
  auto j = Json::parse(read_all(unpacked("mistral_tokenizer.json")));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
  Tokenizer t = Tokenizer::from_json(j.dump(), "mistral metaspace variant");
  check_golden(t, "corpus_mistral.jsonl", "golden_mistral_metaspace.jsonl");
}

TEST(TokenizerMistral, BosByteFallbackAndDecode) {
  const Tokenizer& t = mistral();
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  auto ids = t.encode("Hello", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  // A character outside the vocabulary falls back to its UTF-8 bytes as <0xNN> tokens.
  auto hiero = t.encode("𓀀", false);
  ASSERT_EQ(hiero.size(), 5u);  // "▁" then 4 byte tokens
  EXPECT_EQ(t.id_to_token(hiero[1]), "<0xF0>");
  EXPECT_EQ(t.decode(hiero), "𓀀");
  // Decoding drops the one space the normalizer prepended, and skip_special drops <s>.
  EXPECT_EQ(t.decode(ids, true), "Hello");
  EXPECT_EQ(t.decode(ids, false), "<s> Hello");
  Tokenizer::StreamDecoder sd(t);
  std::string s;
  for (int32_t id : t.encode(" two  spaces", true)) s += sd.push(id);
  EXPECT_EQ(s + sd.flush(), " two  spaces");
}

TEST(TokenizerJson, ErrorsNameTheField) {
  auto expect_error = [](const std::string& json, const std::string& needle) {
    try {
      Tokenizer::from_json(json, "t.json");
      ADD_FAILURE() << "no error for " << json;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  expect_error("{", "not valid JSON");
  expect_error(R"({"model": {"type": "WordPiece", "vocab": {}}})", "model type 'WordPiece' is not supported");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})", "model.vocab[\"a\"]");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [3]}})", "model.merges[0]");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}})", "merged token");
  expect_error("{" + model + R"(, "normalizer": {"type": "Lowercase"}})", "normalizer type 'Lowercase'");
  expect_error("{" + model + R"(, "pre_tokenizer": {"type": "Whitespace"}})", "pre_tokenizer type 'Whitespace'");
  expect_error("{" + model + R"(, "decoder": {"type": "WordPiece"}})", "decoder type 'WordPiece'");
  expect_error("{" + model + R"(, "added_tokens": [{"id": "1", "content": "x"}]})", "added_tokens[0].id");
  expect_error(
      "{" + model + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"}})",
      "cannot compile regex");
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), Error);
}

TEST(TokenizerSpecBuild, FromVocabWithoutJson) {
  // A tiny byte-level BPE built directly, as a GGUF loader would.
  TokenizerSpec spec;
  spec.vocab = {"h", "i", "hi", "Ġ", "Ġhi"};
  spec.merges = {{"h", "i"}, {"Ġ", "hi"}};
  PreTokenizerStep bl;
  bl.kind = PreTokenizerStep::Kind::kByteLevel;
  spec.pre_tokenizer = {bl};
  DecoderStep dl;
  dl.kind = DecoderStep::Kind::kByteLevel;
  spec.decoder = {dl};
  spec.added_tokens = {{5, "<eos>", true}};
  Tokenizer t = Tokenizer::from_vocab(spec);
  EXPECT_EQ(t.encode("hi hi<eos>", false), (std::vector<int32_t>{2, 4, 5}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{2, 4, 5}, true), "hi hi");
  EXPECT_EQ(t.eos_id(), 5);
}

}  // namespace
}  // namespace genesis::runtime
