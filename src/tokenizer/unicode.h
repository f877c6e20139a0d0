#pragma once
// UTF-8 and Unicode helpers the tokenizer needs: decoding/encoding, Rust-compatible lossy decoding,
// canonical normalization (NFC/NFD) and the whitespace predicates of Rust and Python.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace atom {

// Decodes the code point at `pos` of VALID UTF-8 and advances `pos` past it.
inline char32_t next_code_point(std::string_view s, std::size_t& pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) {
    pos += 1;
    return lead;
  }
  if (lead < 0xE0) {
    const char32_t cp = (char32_t(lead & 0x1F) << 6) | (byte(pos + 1) & 0x3F);
    pos += 2;
    return cp;
  }
  if (lead < 0xF0) {
    const char32_t cp =
        (char32_t(lead & 0x0F) << 12) | (char32_t(byte(pos + 1) & 0x3F) << 6) | (byte(pos + 2) & 0x3F);
    pos += 3;
    return cp;
  }
  const char32_t cp = (char32_t(lead & 0x07) << 18) | (char32_t(byte(pos + 1) & 0x3F) << 12) |
                      (char32_t(byte(pos + 2) & 0x3F) << 6) | (byte(pos + 3) & 0x3F);
  pos += 4;
  return cp;
}

// Whether `byte` continues a UTF-8 sequence (is not the first byte of a character).
inline bool is_utf8_continuation(char byte) { return (static_cast<unsigned char>(byte) & 0xC0) == 0x80; }

// Offset of the first byte of the character that ends at `end` (> 0) of valid UTF-8.
inline std::size_t previous_code_point_start(std::string_view s, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && is_utf8_continuation(s[start])) --start;
  return start;
}

// `s` without its leading (left) and/or trailing (right) characters for which `trimmed` holds.
template <class Predicate>
std::string_view trim_code_points(std::string_view s, bool left, bool right, Predicate trimmed) {
  std::size_t begin = 0, end = s.size();
  while (left && begin < end) {
    std::size_t next = begin;
    if (!trimmed(next_code_point(s, next))) break;
    begin = next;
  }
  while (right && end > begin) {
    const std::size_t start = previous_code_point_start(s, end);
    std::size_t pos = start;
    if (!trimmed(next_code_point(s, pos))) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// Byte length of the UTF-8 sequence that starts with `lead` (1 for continuation/invalid bytes).
inline std::size_t utf8_length(unsigned char lead) {
  return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void append_utf8(std::string& out, char32_t cp);

// Offset of the first byte that is not part of well-formed UTF-8, or nullopt when `s` is valid.
std::optional<std::size_t> find_invalid_utf8(std::string_view s);

// Rust's String::from_utf8_lossy (= Python's decode(errors="replace")): each maximal ill-formed
// subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Unicode canonical normalization forms of valid UTF-8.
std::string to_nfc(std::string_view s);
std::string to_nfd(std::string_view s);

// Unicode White_Space (Rust's char::is_whitespace, the \s of Oniguruma and PCRE2-UCP).
bool is_unicode_whitespace(char32_t cp);
// Python's str.isspace(), which Jinja's strip()/trim use (White_Space plus U+001C..U+001F).
bool is_python_whitespace(char32_t cp);

}  // namespace atom
