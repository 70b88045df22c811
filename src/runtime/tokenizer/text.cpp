// UTF-8 helpers, the GPT-2 byte map, normalization through utf8proc, and the PCRE2 wrapper used by pre-tokenizers.
#include "runtime/tokenizer/text.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <mutex>

#include "common/error.h"

namespace genesis::runtime::text {

namespace {

// Length of a well-formed sequence at s[i], or 0 when the bytes there are not one.
size_t valid_seq_at(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  size_t n = s.size() - i;
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return k < n && (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 2) return 0;
    unsigned char c1 = b(1);
    if (c == 0xE0 && c1 < 0xA0) return 0;  // overlong
    if (c == 0xED && c1 > 0x9F) return 0;  // surrogate
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 2) return 0;
    unsigned char c1 = b(1);
    if (c == 0xF0 && c1 < 0x90) return 0;
    if (c == 0xF4 && c1 > 0x8F) return 0;
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

// Number of bytes of s[i..] that form a valid but incomplete prefix of a sequence (0 if none).
size_t incomplete_prefix_at(std::string_view s, size_t i) {
  size_t need = utf8_seq_len(static_cast<unsigned char>(s[i]));
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (need == 1 || c == 0xC0 || c == 0xC1 || c > 0xF4) return 0;
  size_t n = s.size() - i;
  if (n >= need) return 0;
  for (size_t k = 1; k < n; ++k) {
    unsigned char ck = static_cast<unsigned char>(s[i + k]);
    if ((ck & 0xC0) != 0x80) return 0;
    if (k == 1 &&
        ((c == 0xE0 && ck < 0xA0) || (c == 0xED && ck > 0x9F) || (c == 0xF0 && ck < 0x90) || (c == 0xF4 && ck > 0x8F)))
      return 0;
  }
  return n;
}

}  // namespace

size_t utf8_invalid_offset(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t n = valid_seq_at(s, i);
    if (n == 0) return i;
    i += n;
  }
  return s.size();
}

size_t utf8_complete_prefix(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t n = valid_seq_at(s, i);
    if (n == 0) {
      if (incomplete_prefix_at(s, i) != 0) return i;
      n = 1;
    }
    i += n;
  }
  return s.size();
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t n = valid_seq_at(s, i);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    // A maximal invalid subsequence: the longest prefix of a valid sequence (at least one byte).
    size_t k = 1;
    size_t need = utf8_seq_len(static_cast<unsigned char>(s[i]));
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (need > 1 && c >= 0xC2 && c <= 0xF4) {
      while (k < need && i + k < s.size()) {
        unsigned char ck = static_cast<unsigned char>(s[i + k]);
        if ((ck & 0xC0) != 0x80) break;
        if (k == 1 && ((c == 0xE0 && ck < 0xA0) || (c == 0xED && ck > 0x9F) || (c == 0xF0 && ck < 0x90) ||
                       (c == 0xF4 && ck > 0x8F)))
          break;
        ++k;
      }
    }
    out.append("\xEF\xBF\xBD");
    i += k;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t next_code_point(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = utf8_seq_len(c);
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

namespace {
// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 to U+0100 upwards.
struct ByteMap {
  std::array<std::string, 256> to_unicode;
  std::array<int, 324> from_unicode;  // code points up to U+0143 cover the whole alphabet
  ByteMap() {
    from_unicode.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(next++);
      append_utf8(to_unicode[b], cp);
      from_unicode[cp] = b;
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

const std::array<std::string, 256>& byte_to_unicode() { return byte_map().to_unicode; }

int unicode_to_byte(uint32_t cp) { return cp < 324 ? byte_map().from_unicode[cp] : -1; }

std::string normalize(std::string_view s, NormalForm form) {
  bool ascii = true;
  for (char c : s) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii || s.empty()) return std::string(s);
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNfc:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalForm::kNfd:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalForm::kNfkc:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalForm::kNfkd:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* dst = nullptr;
  utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()), &dst,
                   static_cast<utf8proc_option_t>(options));
  if (n < 0) fail("unicode normalization failed: {}", utf8proc_errmsg(n));
  std::string out(reinterpret_cast<char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

namespace {
// Oniguruma's \s is Unicode White_Space, which includes U+0085; PCRE2's UCP \s does not.
std::string onig_to_pcre2(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      ++i;
      if (n == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (n == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out.push_back('\\');
        out.push_back(n);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal inside the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}
}  // namespace

struct Regex::Impl {
  pcre2_code* code = nullptr;
  ~Impl() { pcre2_code_free(code); }
};

Regex Regex::compile(std::string_view pattern, bool literal, std::string_view what) {
  std::string pat = literal ? std::string(pattern) : onig_to_pcre2(pattern);
  // PCRE2_LITERAL refuses UCP (meaningless there).
  uint32_t options = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  auto impl = std::make_shared<Impl>();
  impl->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), options, &err, &err_off, nullptr);
  if (!impl->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: cannot compile regex '{}' at offset {}: {}", what, pattern, err_off, reinterpret_cast<char*>(msg));
  }
  pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE);  // JIT is an optimization: failure leaves the interpreter
  Regex r;
  r.impl_ = std::move(impl);
  return r;
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  // Match data per thread: encode() may run on several threads with one tokenizer.
  thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create(4, nullptr), &pcre2_match_data_free);
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(impl_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex match failed: {}", reinterpret_cast<char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    size_t b = ov[0], e = ov[1];
    if (e == b) {  // empty match: skip one character, as the Rust regex iterator does
      if (b >= s.size()) break;
      pos = b + utf8_seq_len(static_cast<unsigned char>(s[b]));
      continue;
    }
    out.emplace_back(b, e);
    pos = e;
  }
}

}  // namespace genesis::runtime::text
