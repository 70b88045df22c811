// The encode/decode pipeline over a TokenizerSpec: added-token splitting, normalizers, pre-tokenizers, BPE,
// post-processing; decoding through a per-token form of the decoder chain (which also serves streaming).
#include "runtime/tokenizer/tokenizer.h"

#include <algorithm>
#include <unordered_map>

#include "common/error.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/text.h"

namespace genesis::runtime {

namespace {

// The GPT-2 pre-tokenizer pattern, used by ByteLevel when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Piece {
  std::string text;
  bool at_start;  // begins at offset 0 of the original input (Metaspace prepend_scheme "first" needs it)
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

bool is_word_char(uint32_t cp) {
  // Approximation of Rust's char::is_alphanumeric used by single_word matching: ASCII alnum, '_' and non-ASCII
  // letters are treated as word characters.
  return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_' || cp >= 0xAA;
}

uint32_t last_code_point(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  return text::next_code_point(s, i);
}

bool is_space_cp(uint32_t cp) {
  return (cp >= 9 && cp <= 13) || cp == ' ' || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace

struct Tokenizer::Impl {
  TokenizerSpec spec;
  std::unique_ptr<Bpe> bpe;
  std::vector<std::string> tokens;       // id -> token text (model vocabulary and added tokens)
  std::vector<std::string> piece_bytes;  // id -> bytes this token decodes to on its own
  std::vector<uint8_t> special;          // id -> is a special added token
  std::unordered_map<std::string, int32_t> added_ids;
  // Added tokens by first byte, longest first, for leftmost-longest matching.
  std::array<std::vector<int32_t>, 256> raw_candidates, norm_candidates;  // indices into spec.added_tokens
  bool have_norm_tokens = false;
  std::vector<std::optional<text::Regex>> normalizer_regex;  // per normalizer step
  std::vector<std::optional<text::Regex>> pre_regex;         // per pre-tokenizer step
  text::Regex gpt2_regex, ws_left, ws_right;
  bool join_with_space = false;  // no decoder: `tokenizers` joins tokens with spaces
  std::string strip_char;        // leading characters the decoder strips from the whole output
  int strip_left = 0;
  std::optional<int32_t> bos, eos;

  std::string normalize(std::string s) const;
  void pre_tokenize(std::vector<Piece>& pieces) const;
  void encode_text(std::string_view segment, bool at_start, std::vector<int32_t>& out) const;
  template <typename OnText, typename OnToken>
  void split_added(std::string_view s, bool normalized_pass, bool parse_special, OnText on_text,
                   OnToken on_token) const;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_vocab(TokenizerSpec spec) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  std::optional<int32_t> unk_id;
  if (spec.unk_token) {
    for (size_t i = 0; i < spec.vocab.size(); ++i)
      if (spec.vocab[i] == *spec.unk_token) unk_id = static_cast<int32_t>(i);
    if (!unk_id) fail("tokenizer: unk_token '{}' is not in the vocabulary", *spec.unk_token);
  }
  m.bpe = std::make_unique<Bpe>(spec.vocab, spec.merges,
                                BpeOptions{unk_id, spec.byte_fallback, spec.fuse_unk, spec.ignore_merges});

  size_t n = spec.vocab.size();
  for (const auto& t : spec.added_tokens) {
    if (t.id < 0) fail("tokenizer: added token '{}' has a negative id {}", t.content, t.id);
    if (t.content.empty()) fail("tokenizer: added token {} has empty content", t.id);
    if (text::utf8_invalid_offset(t.content) != t.content.size())
      fail("tokenizer: added token {} is not valid UTF-8", t.id);
    n = std::max(n, static_cast<size_t>(t.id) + 1);
  }
  m.tokens = spec.vocab;
  m.tokens.resize(n);
  m.special.assign(n, 0);
  for (size_t i = 0; i < spec.added_tokens.size(); ++i) {
    const auto& t = spec.added_tokens[i];
    m.tokens[t.id] = t.content;
    m.special[t.id] = t.special;
    m.added_ids[t.content] = t.id;
    auto& cands = t.normalized ? m.norm_candidates : m.raw_candidates;
    cands[static_cast<unsigned char>(t.content[0])].push_back(static_cast<int32_t>(i));
    m.have_norm_tokens |= t.normalized;
  }
  for (auto* table : {&m.raw_candidates, &m.norm_candidates}) {
    for (auto& list : *table) {
      std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
        return spec.added_tokens[a].content.size() > spec.added_tokens[b].content.size();
      });
    }
  }

  for (const auto& st : spec.normalizer) {
    bool needs = st.kind == NormalizerStep::Kind::kReplace && st.regex;
    m.normalizer_regex.push_back(needs ? std::optional(text::Regex::compile(st.pattern, false, "normalizer Replace"))
                                       : std::nullopt);
  }
  for (const auto& st : spec.pre_tokenizer) {
    std::optional<text::Regex> re;
    if (st.kind == PreTokenizerStep::Kind::kSplit) {
      if (st.pattern.empty()) fail("tokenizer: pre_tokenizer Split has an empty pattern");
      re = text::Regex::compile(st.pattern, !st.regex, "pre_tokenizer Split");
    } else if (st.kind == PreTokenizerStep::Kind::kDigits) {
      re = text::Regex::compile(R"(\p{N})", false, "pre_tokenizer Digits");
    } else if (st.kind == PreTokenizerStep::Kind::kMetaspace) {
      if (st.replacement.empty()) fail("tokenizer: pre_tokenizer Metaspace has an empty replacement");
      re = text::Regex::compile(st.replacement, true, "pre_tokenizer Metaspace");
    }
    m.pre_regex.push_back(std::move(re));
  }
  m.gpt2_regex = text::Regex::compile(kGpt2Pattern, false, "ByteLevel pre-tokenizer");
  m.ws_left = text::Regex::compile(R"(^\s+)", false, "Strip");
  m.ws_right = text::Regex::compile(R"(\s+$)", false, "Strip");

  // The decoder chain applied to each token alone; Strip after the chain is fused applies to the whole output.
  m.join_with_space = spec.decoder.empty();
  m.piece_bytes.resize(n);
  bool fused = false;
  for (const auto& st : spec.decoder) {
    if (st.kind == DecoderStep::Kind::kStrip && st.stop != 0)
      fail("tokenizer: decoder Strip with stop={} is not supported (only leading strip)", st.stop);
  }
  for (size_t id = 0; id < n; ++id) {
    std::string s = m.tokens[id];
    bool per_token_fused = false;
    for (const auto& st : spec.decoder) {
      switch (st.kind) {
        case DecoderStep::Kind::kReplace:
          replace_all(s, st.pattern, st.content);
          break;
        case DecoderStep::Kind::kByteFallback:
          if (s.size() == 6 && s.starts_with("<0x") && s.back() == '>' &&
              std::isxdigit(static_cast<unsigned char>(s[3])) && std::isxdigit(static_cast<unsigned char>(s[4])))
            s = std::string(1, static_cast<char>(std::stoi(s.substr(3, 2), nullptr, 16)));
          break;
        case DecoderStep::Kind::kByteLevel: {
          // As `tokenizers`: a token with a character outside the byte alphabet keeps its UTF-8 bytes.
          std::string bytes;
          bool ok = true;
          for (size_t i = 0; i < s.size() && ok;) {
            int b = text::unicode_to_byte(text::next_code_point(s, i));
            if (b < 0)
              ok = false;
            else
              bytes.push_back(static_cast<char>(b));
          }
          if (ok) s = std::move(bytes);
          per_token_fused = true;
          break;
        }
        case DecoderStep::Kind::kMetaspace:
          replace_all(s, st.replacement, " ");
          if (st.prepend_scheme != PrependScheme::kNever && id == 0) {
            m.strip_char = " ";
            m.strip_left = 1;
          }
          break;
        case DecoderStep::Kind::kFuse:
          per_token_fused = true;
          break;
        case DecoderStep::Kind::kStrip:
          if (per_token_fused) {
            if (id == 0) {
              m.strip_char = st.content;
              m.strip_left = st.start;
            }
          } else {
            for (int k = 0; k < st.start && s.starts_with(st.content); ++k) s.erase(0, st.content.size());
          }
          break;
      }
    }
    fused |= per_token_fused;
    m.piece_bytes[id] = std::move(s);
  }
  (void)fused;

  m.bos = spec.bos_id;
  m.eos = spec.eos_id;
  if (!m.bos && !spec.prefix_ids.empty() && m.special[spec.prefix_ids.front()]) m.bos = spec.prefix_ids.front();
  if (!m.eos && !spec.suffix_ids.empty() && m.special[spec.suffix_ids.back()]) m.eos = spec.suffix_ids.back();
  if (!m.eos) {
    for (const char* name : {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"}) {
      auto it = m.added_ids.find(name);
      if (it != m.added_ids.end()) {
        m.eos = it->second;
        break;
      }
    }
  }
  for (int32_t id : spec.prefix_ids)
    if (id < 0 || static_cast<size_t>(id) >= n) fail("tokenizer: post-processor id {} is out of range", id);
  for (int32_t id : spec.suffix_ids)
    if (id < 0 || static_cast<size_t>(id) >= n) fail("tokenizer: post-processor id {} is out of range", id);
  m.spec = std::move(spec);
  return Tokenizer(std::move(impl));
}

std::string Tokenizer::Impl::normalize(std::string s) const {
  for (size_t i = 0; i < spec.normalizer.size(); ++i) {
    const auto& st = spec.normalizer[i];
    switch (st.kind) {
      case NormalizerStep::Kind::kNfc:
        s = text::normalize(s, text::NormalForm::kNfc);
        break;
      case NormalizerStep::Kind::kNfd:
        s = text::normalize(s, text::NormalForm::kNfd);
        break;
      case NormalizerStep::Kind::kNfkc:
        s = text::normalize(s, text::NormalForm::kNfkc);
        break;
      case NormalizerStep::Kind::kNfkd:
        s = text::normalize(s, text::NormalForm::kNfkd);
        break;
      case NormalizerStep::Kind::kPrepend:
        if (!s.empty()) s.insert(0, st.pattern);
        break;
      case NormalizerStep::Kind::kReplace:
        if (!st.regex) {
          replace_all(s, st.pattern, st.content);
        } else {
          std::vector<std::pair<size_t, size_t>> hits;
          normalizer_regex[i]->find_all(s, hits);
          std::string out;
          size_t pos = 0;
          for (auto [b, e] : hits) {
            out.append(s, pos, b - pos);
            out.append(st.content);
            pos = e;
          }
          out.append(s, pos, std::string::npos);
          s = std::move(out);
        }
        break;
      case NormalizerStep::Kind::kStrip: {
        std::vector<std::pair<size_t, size_t>> hits;
        if (st.right) {
          ws_right.find_all(s, hits);
          if (!hits.empty()) s.resize(hits.back().first);
        }
        if (st.left) {
          ws_left.find_all(s, hits);
          if (!hits.empty()) s.erase(0, hits.front().second);
        }
        break;
      }
    }
  }
  return s;
}

void Tokenizer::Impl::pre_tokenize(std::vector<Piece>& pieces) const {
  std::vector<Piece> next;
  std::vector<std::pair<size_t, size_t>> hits;
  auto split = [&](const text::Regex& re, SplitBehavior behavior) {
    next.clear();
    for (auto& p : pieces) {
      re.find_all(p.text, hits);
      auto emit = [&](size_t b, size_t e) {
        if (e > b) next.push_back({p.text.substr(b, e - b), p.at_start && b == 0});
      };
      size_t pos = 0;   // end of what has been emitted
      size_t open = 0;  // start of the piece under construction (MergedWithNext / Contiguous)
      for (size_t h = 0; h < hits.size(); ++h) {
        auto [b, e] = hits[h];
        switch (behavior) {
          case SplitBehavior::kRemoved:
            emit(pos, b);
            break;
          case SplitBehavior::kIsolated:
            emit(pos, b);
            emit(b, e);
            break;
          case SplitBehavior::kMergedWithPrevious:
            emit(pos, e);
            break;
          case SplitBehavior::kMergedWithNext:
            emit(open, b);
            open = b;
            break;
          case SplitBehavior::kContiguous:
            if (h > 0 && hits[h - 1].second == b) {
              // extends the previous match run
            } else {
              emit(open, b);
              open = b;
            }
            if (h + 1 == hits.size() || hits[h + 1].first != e) {
              emit(open, e);
              open = e;
            }
            break;
        }
        pos = e;
        if (behavior != SplitBehavior::kMergedWithNext && behavior != SplitBehavior::kContiguous) open = e;
      }
      if (behavior == SplitBehavior::kMergedWithNext || behavior == SplitBehavior::kContiguous)
        emit(open, p.text.size());
      else
        emit(pos, p.text.size());
    }
    pieces.swap(next);
  };

  for (size_t i = 0; i < spec.pre_tokenizer.size(); ++i) {
    const auto& st = spec.pre_tokenizer[i];
    switch (st.kind) {
      case PreTokenizerStep::Kind::kSplit:
        split(*pre_regex[i], st.behavior);
        break;
      case PreTokenizerStep::Kind::kDigits:
        split(*pre_regex[i], st.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
        break;
      case PreTokenizerStep::Kind::kByteLevel: {
        if (st.add_prefix_space)
          for (auto& p : pieces)
            if (!p.text.starts_with(' ')) p.text = " " + p.text;
        if (st.use_regex) split(gpt2_regex, SplitBehavior::kIsolated);
        const auto& map = text::byte_to_unicode();
        for (auto& p : pieces) {
          std::string mapped;
          mapped.reserve(p.text.size() * 2);
          for (unsigned char c : p.text) mapped += map[c];
          p.text = std::move(mapped);
        }
        break;
      }
      case PreTokenizerStep::Kind::kMetaspace: {
        for (auto& p : pieces) {
          replace_all(p.text, " ", st.replacement);
          bool prepend =
              st.prepend_scheme == PrependScheme::kAlways || (st.prepend_scheme == PrependScheme::kFirst && p.at_start);
          if (prepend && !p.text.starts_with(st.replacement)) p.text.insert(0, st.replacement);
        }
        if (st.split) split(*pre_regex[i], SplitBehavior::kMergedWithNext);
        break;
      }
    }
  }
}

template <typename OnText, typename OnToken>
void Tokenizer::Impl::split_added(std::string_view s, bool normalized_pass, bool parse_special, OnText on_text,
                                  OnToken on_token) const {
  const auto& table = normalized_pass ? norm_candidates : raw_candidates;
  size_t emitted = 0;  // text before this offset has been handed on
  size_t i = 0;
  while (i < s.size()) {
    const AddedToken* hit = nullptr;
    for (int32_t idx : table[static_cast<unsigned char>(s[i])]) {
      const AddedToken& t = spec.added_tokens[idx];
      if (!parse_special && t.special) continue;
      if (s.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        size_t e = i + t.content.size();
        size_t k = e;
        if (i > 0 && is_word_char(last_code_point(s.substr(0, i)))) continue;
        if (e < s.size() && is_word_char(text::next_code_point(s, k))) continue;
      }
      hit = &t;
      break;
    }
    if (!hit) {
      i += text::utf8_seq_len(static_cast<unsigned char>(s[i]));
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      while (b > emitted && is_space_cp(last_code_point(s.substr(emitted, b - emitted)))) {
        size_t k = b;
        while (k > emitted && (static_cast<unsigned char>(s[k - 1]) & 0xC0) == 0x80) --k;
        b = k - 1;
      }
    if (hit->rstrip)
      while (e < s.size()) {
        size_t k = e;
        if (!is_space_cp(text::next_code_point(s, k))) break;
        e = k;
      }
    if (b > emitted) on_text(s.substr(emitted, b - emitted), emitted == 0);
    on_token(hit->id);
    emitted = i = e;
  }
  if (emitted < s.size()) on_text(s.substr(emitted), emitted == 0);
}

void Tokenizer::Impl::encode_text(std::string_view segment, bool at_start, std::vector<int32_t>& out) const {
  std::vector<Piece> pieces{{std::string(segment), at_start}};
  pre_tokenize(pieces);
  for (const auto& p : pieces) bpe->encode_word(p.text, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& m = *impl_;
  size_t bad = text::utf8_invalid_offset(text);
  if (bad != text.size()) fail("tokenizer: input text is not valid UTF-8 (byte offset {})", bad);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special) out.insert(out.end(), m.spec.prefix_ids.begin(), m.spec.prefix_ids.end());
  auto on_token = [&](int32_t id) { out.push_back(id); };
  m.split_added(
      text, false, parse_special,
      [&](std::string_view seg, bool at_start) {
        std::string norm = m.normalize(std::string(seg));
        if (!m.have_norm_tokens) {
          m.encode_text(norm, at_start, out);
          return;
        }
        m.split_added(
            norm, true, parse_special,
            [&](std::string_view sub, bool sub_start) { m.encode_text(sub, at_start && sub_start, out); }, on_token);
      },
      on_token);
  if (add_special) out.insert(out.end(), m.spec.suffix_ids.begin(), m.spec.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= m.tokens.size()) fail("tokenizer: decode: id {} out of range", id);
    if (skip_special && m.special[id]) continue;
    if (m.join_with_space && !first) bytes.push_back(' ');
    bytes += m.piece_bytes[id];
    first = false;
  }
  size_t cut = 0;
  for (int k = 0;
       k < m.strip_left && !m.strip_char.empty() && bytes.compare(cut, m.strip_char.size(), m.strip_char) == 0; ++k)
    cut += m.strip_char.size();
  return text::utf8_lossy(std::string_view(bytes).substr(cut));
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->added_ids.find(std::string(token));
  if (it != impl_->added_ids.end()) return it->second;
  return impl_->bpe->find(token);
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->tokens.size())
    fail("tokenizer: id {} out of range (vocabulary size {})", id, impl_->tokens.size());
  return impl_->tokens[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}

Tokenizer::StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tok_(tokenizer), skip_special_(skip_special), strip_left_(tokenizer.impl_->strip_left) {}

std::string Tokenizer::StreamDecoder::push(int32_t id) {
  const Impl& m = *tok_.impl_;
  if (id < 0 || static_cast<size_t>(id) >= m.tokens.size()) fail("tokenizer: stream decode: id {} out of range", id);
  if (skip_special_ && m.special[id]) return {};
  if (m.join_with_space && started_) pending_.push_back(' ');
  started_ = true;
  pending_ += m.piece_bytes[id];
  while (strip_left_ > 0 && !pending_.empty()) {
    if (!m.strip_char.empty() && pending_.starts_with(m.strip_char)) {
      pending_.erase(0, m.strip_char.size());
      --strip_left_;
    } else {
      strip_left_ = 0;
    }
  }
  size_t n = text::utf8_complete_prefix(pending_);
  std::string out = text::utf8_lossy(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string Tokenizer::StreamDecoder::flush() {
  std::string out = text::utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace genesis::runtime
