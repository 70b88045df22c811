// The BPE model: one pre-tokenized word -> token ids by rank-ordered merges (a priority queue, as `tokenizers`
// does it), byte fallback (<0xNN> tokens), unk handling and a word cache. Normalization and splitting happen before.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace genesis::runtime {

struct BpeOptions {
  std::optional<int32_t> unk_id;  // id of the unknown token, if the model has one
  bool byte_fallback = false;     // characters missing from the vocab become <0xNN> tokens
  bool fuse_unk = false;          // consecutive unknown characters become one unk token
  bool ignore_merges = false;     // a word found whole in the vocab is one token, whatever the merges say
};

class Bpe {
 public:
  // vocab: id -> token text (ids without a model token hold ""); merges in priority order (rank 0 first).
  // Throws genesis::Error when a merge names a token that is not in the vocab, or its result is not in it.
  Bpe(const std::vector<std::string>& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options);

  // Appends the ids of one word to out. Thread-safe; results are cached per word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> find(std::string_view token) const;

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> token_to_id_;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::array<int32_t, 256> byte_ids_{};  // <0xNN> ids when byte fallback is on (-1 when missing)
  bool have_all_bytes_ = false;
  BpeOptions options_;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace genesis::runtime
