// Text primitives the tokenizer is built on: UTF-8 walking and validation, the GPT-2 byte<->unicode map,
// Unicode normalization (utf8proc) and a PCRE2 regex with the Oniguruma meaning of \s that tokenizer.json assumes.
// Knows nothing about vocabularies or models.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace genesis::runtime::text {

// Length of the UTF-8 sequence that starts with `lead` (1 for a stray continuation byte, so walks always advance).
inline size_t utf8_seq_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlongs, surrogates, > U+10FFFF),
// or s.size() when all of s is well formed.
size_t utf8_invalid_offset(std::string_view s);

// Length of the longest prefix of s that ends on a complete character; a trailing incomplete but so far valid
// sequence is left out (it may be completed by later bytes). Invalid bytes count as complete (they become U+FFFD).
size_t utf8_complete_prefix(std::string_view s);

// Well-formed UTF-8 from arbitrary bytes: each maximal invalid subsequence becomes U+FFFD (as Rust's
// String::from_utf8_lossy and Python's errors="replace" do).
std::string utf8_lossy(std::string_view s);

void append_utf8(std::string& out, uint32_t cp);

// The GPT-2 byte-level alphabet: byte b is shown as the code point byte_to_unicode()[b], and back.
const std::array<std::string, 256>& byte_to_unicode();
// Code point -> byte, -1 when the code point is not in the alphabet.
int unicode_to_byte(uint32_t cp);
// Decodes one UTF-8 code point at s[i] (s must be valid UTF-8); advances i.
uint32_t next_code_point(std::string_view s, size_t& i);

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
// s must be valid UTF-8. Pure ASCII is returned unchanged without calling into utf8proc.
std::string normalize(std::string_view s, NormalForm form);

// A compiled PCRE2 pattern (UTF + UCP, JIT when available). Patterns in tokenizer.json are written for Oniguruma /
// the Rust regex crate, where \s also matches U+0085; compile() rewrites \s and \S accordingly.
class Regex {
 public:
  // literal=true matches `pattern` as plain text. Throws genesis::Error naming `what` on a bad pattern.
  static Regex compile(std::string_view pattern, bool literal, std::string_view what);
  // All non-overlapping matches in s (valid UTF-8) as [begin, end) byte offsets, left to right.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace genesis::runtime::text
