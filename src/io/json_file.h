#pragma once
// JSON reading with errors that say where: the file (or other source) and the byte offset.
// Every JSON input (config.json, safetensors headers, tokenizer files, request bodies) goes through
// parse_json: nesting is bounded (kMaxJsonDepth) before any DOM is built, so that no later recursive walk
// (copying, dumping, comparing) can overflow the stack on hostile input.
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace atom {

// Most nested arrays/objects accepted in any JSON input (real files nest fewer than 10 levels).
inline constexpr int kMaxJsonDepth = 128;

// Parses `text` as one JSON value. Throws atom::Error naming `source` and the byte offset of a syntax
// error or of an out-of-range number, naming the key when an object repeats a key (parsers disagree on
// which copy wins; unless reject_duplicate_keys is false, when the last copy wins), and saying so when the
// value nests deeper than kMaxJsonDepth.
nlohmann::json parse_json(std::string_view text, const std::string& source,
                          bool reject_duplicate_keys = true);

// Reads and parses a whole file; errors name the path.
nlohmann::json read_json_file(const std::string& path);

// A JSON value rendered for an error message: at most ~80 characters and a few levels deep, whatever
// the value's size or depth (safe on any value; never renders the whole of a large value).
std::string json_snippet(const nlohmann::json& value);

}  // namespace atom
