// BPE merging with a min-heap over (rank, position), the same order `tokenizers` applies merges in, so results match
// it id for id; words are cached because real text repeats them.
#include "runtime/tokenizer/bpe.h"

#include <fmt/format.h>

#include <array>
#include <queue>

#include "common/error.h"
#include "runtime/tokenizer/text.h"

namespace genesis::runtime {

namespace {
constexpr size_t kCacheMaxEntries = 1 << 17;
constexpr size_t kCacheMaxWordBytes = 256;  // long words are rare and would bloat the cache
inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
}  // namespace

Bpe::Bpe(const std::vector<std::string>& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions options)
    : options_(options) {
  token_to_id_.reserve(vocab.size());
  for (size_t id = 0; id < vocab.size(); ++id) {
    if (!vocab[id].empty()) token_to_id_.emplace(vocab[id], static_cast<int32_t>(id));
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), im = token_to_id_.find(a + b);
    if (ia == token_to_id_.end() || ib == token_to_id_.end())
      fail("BPE merge {} ('{}' '{}'): a part is not in the vocabulary", rank, a, b);
    if (im == token_to_id_.end())
      fail("BPE merge {} ('{}' '{}'): the merged token is not in the vocabulary", rank, a, b);
    // The first (best-ranked) occurrence of a pair wins, as in `tokenizers`.
    merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(static_cast<int32_t>(rank), im->second));
  }
  byte_ids_.fill(-1);
  have_all_bytes_ = true;
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(fmt::format("<0x{:02X}>", b));
    if (it != token_to_id_.end())
      byte_ids_[b] = it->second;
    else
      have_all_bytes_ = false;
  }
}

std::optional<int32_t> Bpe::find(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto id = find(word)) {
      out.push_back(*id);
      return;
    }
  }
  bool cacheable = word.size() <= kCacheMaxWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(std::move(key), std::move(ids));
  }
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto push = [&](int32_t id) {
    int32_t n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, -1, true});
    if (n > 0) sym[n - 1].next = n;
  };
  bool last_was_unk = false;
  std::string ch;
  for (size_t i = 0; i < word.size();) {
    size_t n = std::min(text::utf8_seq_len(static_cast<unsigned char>(word[i])), word.size() - i);
    ch.assign(word.substr(i, n));
    i += n;
    auto it = token_to_id_.find(ch);
    if (it != token_to_id_.end()) {
      push(it->second);
      last_was_unk = false;
      continue;
    }
    if (options_.byte_fallback && have_all_bytes_) {
      for (unsigned char b : ch) push(byte_ids_[b]);
      last_was_unk = false;
      continue;
    }
    if (options_.unk_id) {
      if (!(options_.fuse_unk && last_was_unk)) push(*options_.unk_id);
      last_was_unk = true;
    }
    // Without an unk token the character is dropped, as `tokenizers` does.
  }

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int32_t pos) {
    int32_t next = sym[pos].next;
    if (next < 0) return;
    auto it = merges_.find(pair_key(sym[pos].id, sym[next].id));
    if (it != merges_.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i);
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    Symbol& left = sym[c.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.second != c.new_id) continue;  // stale entry
    left.id = c.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = c.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace genesis::runtime
