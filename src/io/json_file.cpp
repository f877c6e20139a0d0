#include "io/json_file.h"

#include <set>
#include <vector>

#include "common/error.h"
#include "common/mapped_file.h"

namespace atom {

nlohmann::json parse_json(std::string_view text, const std::string& source, bool reject_duplicate_keys) {
  // One set of seen keys per open object, innermost last.
  std::vector<std::set<std::string>> open_objects;
  auto check = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start || event == Event::array_start) {
      // `depth` counts the containers already open around this one.
      if (depth >= kMaxJsonDepth) {
        fail("{}: JSON nested deeper than {} levels (arrays/objects inside each other)", source,
             kMaxJsonDepth);
      }
      if (event == Event::object_start && reject_duplicate_keys) open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (reject_duplicate_keys) open_objects.pop_back();
    } else if (event == Event::key && reject_duplicate_keys) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) {
        fail("{}: duplicate JSON key \"{}\"", source, key.size() > 80 ? key.substr(0, 80) + "..." : key);
      }
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 5: ..."; keep the tail.
    std::string what = e.what();
    const auto colon = what.find(": ");
    const std::string reason = colon == std::string::npos ? what : what.substr(colon + 2);
    fail("{}: invalid JSON at byte {}: {}", source, e.byte, reason);
  } catch (const nlohmann::json::exception& e) {
    // out_of_range.406: a number that overflows a double (1e400); the message names the number's text.
    std::string what = e.what();
    const auto bracket = what.find("] ");
    fail("{}: invalid JSON: {}", source, bracket == std::string::npos ? what : what.substr(bracket + 2));
  }
}

nlohmann::json read_json_file(const std::string& path) {
  MappedFile file(path);
  const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  return parse_json(text, fmt::format("'{}'", path));
}

namespace {

constexpr std::size_t kSnippetChars = 80;

// Appends `value` to `out`, stopping (with "...") once `out` holds kSnippetChars or at depth 4.
void render(const nlohmann::json& value, std::string& out, int depth) {
  if (out.size() >= kSnippetChars) return;
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    out += nlohmann::json(s.size() > kSnippetChars ? s.substr(0, kSnippetChars) : s)
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else if (value.is_object() || value.is_array()) {
    const bool object = value.is_object();
    out += object ? '{' : '[';
    if (depth >= 4 && !value.empty()) {
      out += "...";
    } else {
      bool first = true;
      for (auto it = value.begin(); it != value.end(); ++it) {
        if (out.size() >= kSnippetChars) {
          out += ",...";
          break;
        }
        if (!first) out += ',';
        first = false;
        if (object) {
          render(nlohmann::json(it.key()), out, depth + 1);
          out += ':';
        }
        render(*it, out, depth + 1);
      }
    }
    out += object ? '}' : ']';
  } else {
    out += value.dump();  // a number, boolean or null: short
  }
}

}  // namespace

std::string json_snippet(const nlohmann::json& value) {
  std::string text;
  render(value, text, 0);
  if (text.size() > kSnippetChars) text = text.substr(0, kSnippetChars) + "...";
  return text;
}

}  // namespace atom
