#pragma once
// The regexes of HF tokenizer.json files, compiled with PCRE2 (UTF + UCP, JIT).
// HF `tokenizers` runs them with Oniguruma (Ruby syntax). PCRE2-UCP agrees with it on everything
// these patterns use (\p{..}, \s = Unicode White_Space, (?i:) with Unicode case folding, lookahead);
// Oniguruma's \h / \H (hex digit) are translated, since PCRE2 reads them as horizontal space.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace atom {

class Regex {
 public:
  // Throws atom::Error naming `context` and the pattern when it does not compile.
  Regex(const std::string& pattern, const std::string& context);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // All non-overlapping matches [start, end) in byte offsets, left to right, iterated like the
  // Rust `onig` crate's find_iter (an empty match right after the previous match is skipped).
  // `text` must be valid UTF-8.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const;

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code*
};

}  // namespace atom
