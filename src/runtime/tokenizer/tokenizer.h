// Text <-> token ids for the inference runtime: added/special tokens, normalizers, pre-tokenizers, the BPE model
// (byte-level as in GPT-2 / Qwen / Llama-3, or sentencepiece-style with byte fallback as in Llama-2 / Mistral),
// post-processing (BOS/EOS) and decoding, including a streaming decoder. Built from a TokenizerSpec, which
// tokenizer.json (from_file / from_json) or a GGUF loader fills in; chat templates live in chat.h.
//
// Supported tokenizer.json parts (anything else is a genesis::Error naming the type):
//   model: BPE (no dropout, no continuing_subword_prefix / end_of_word_suffix)
//   normalizer: NFC, NFD, NFKC, NFKD, Prepend, Replace (string or regex), Strip, Sequence
//   pre_tokenizer: Split (string or regex; Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous),
//                  ByteLevel, Metaspace, Digits, Sequence
//   post_processor: TemplateProcessing (single sequence), ByteLevel, RobertaProcessing, BertProcessing, Sequence
//   decoder: ByteLevel, Metaspace, Replace (string), ByteFallback, Fuse, Strip (start only), Sequence
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace genesis::runtime {

struct NormalizerStep {
  enum class Kind { kNfc, kNfd, kNfkc, kNfkd, kPrepend, kReplace, kStrip };
  Kind kind = Kind::kNfc;
  std::string pattern;               // kReplace: what to replace; kPrepend: the text to prepend
  std::string content;               // kReplace: the replacement
  bool regex = false;                // kReplace: pattern is a regex rather than a literal string
  bool left = false, right = false;  // kStrip: which ends lose their whitespace
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kMetaspace, kDigits };
  Kind kind = Kind::kSplit;
  std::string pattern;                                    // kSplit
  bool regex = true;                                      // kSplit: pattern is a regex (else a literal string)
  SplitBehavior behavior = SplitBehavior::kIsolated;      // kSplit
  bool add_prefix_space = false;                          // kByteLevel
  bool use_regex = true;                                  // kByteLevel: split with the GPT-2 pattern first
  std::string replacement = "\xE2\x96\x81";               // kMetaspace: U+2581
  PrependScheme prepend_scheme = PrependScheme::kAlways;  // kMetaspace
  bool split = true;                                      // kMetaspace: split words at the replacement character
  bool individual_digits = false;                         // kDigits
};

struct DecoderStep {
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
  Kind kind = Kind::kByteLevel;
  std::string pattern, content;              // kReplace: pattern -> content; kStrip: content is the stripped character
  std::string replacement = "\xE2\x96\x81";  // kMetaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;  // kMetaspace
  int start = 0, stop = 0;                                // kStrip
};

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = true;       // special tokens are skipped by decode(skip_special) and by parse_special=false
  bool lstrip = false;       // the match swallows whitespace on its left
  bool rstrip = false;       // ... on its right
  bool normalized = false;   // matched in the normalized text rather than the raw text
  bool single_word = false;  // only matched as a whole word
};

// Everything a Tokenizer is made of, as plain data: tokenizer.json and GGUF metadata both end up here.
struct TokenizerSpec {
  std::vector<std::string> vocab;  // model vocabulary: id -> token text ("" for ids the model does not use)
  std::vector<std::pair<std::string, std::string>> merges;  // BPE merges, best (rank 0) first
  std::optional<std::string> unk_token;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::vector<AddedToken> added_tokens;  // ids may lie inside or past the model vocabulary
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<DecoderStep> decoder;             // empty: tokens are joined with spaces (as `tokenizers` does)
  std::vector<int32_t> prefix_ids, suffix_ids;  // added around one sequence when add_special is true
  std::optional<int32_t> bos_id, eos_id;        // unset: guessed from the post-processor and common token names
};

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  // `origin` names the source in error messages.
  static Tokenizer from_json(std::string_view json_text, std::string_view origin = "tokenizer.json");
  static Tokenizer from_vocab(TokenizerSpec spec);
  // Only the parser (for tests and for callers that want to edit a spec before building).
  static TokenizerSpec parse_json(std::string_view json_text, std::string_view origin = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // text must be valid UTF-8 (else genesis::Error with the byte offset). add_special: add what the
  // post-processor adds (BOS ...). parse_special: special tokens written in the text become their ids; when false
  // they are tokenized as plain text (non-special added tokens are still recognized, as in `tokenizers`).
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special = true) const;
  // Invalid UTF-8 in the result (a sequence cut between tokens) becomes U+FFFD. Throws on ids out of range.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws genesis::Error when id is out of range
  int32_t vocab_size() const;                        // one past the largest id (model vocabulary and added tokens)
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  bool is_special(int32_t id) const;

  // Streaming decode: push ids as they are generated and get text as soon as it is complete UTF-8; bytes of a
  // partial character are held back until a later token completes them (flush() gives them up as U+FFFD).
  // Output concatenated equals decode() of all pushed ids for valid text. Holds a reference to the tokenizer.
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
    std::string push(int32_t id);
    std::string flush();

   private:
    const Tokenizer& tok_;
    bool skip_special_;
    int strip_left_;  // leading strip characters still to remove (decoders that drop the first space)
    bool started_ = false;
    std::string pending_;
  };

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace genesis::runtime
