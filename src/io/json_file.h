#pragma once
// JSON reading with errors that say where: the file (or other source) and the byte offset.
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace atom {

// Parses `text` as one JSON value. Throws atom::Error naming `source` and the byte offset of a syntax
// error, and naming the key when an object repeats a key (parsers disagree on which copy wins).
nlohmann::json parse_json(std::string_view text, const std::string& source);

// Reads and parses a whole file; errors name the path.
nlohmann::json read_json_file(const std::string& path);

// A JSON value rendered for an error message, cut short when long.
std::string json_snippet(const nlohmann::json& value);

}  // namespace atom
