#include "io/json_file.h"

#include <set>
#include <vector>

#include "common/error.h"
#include "common/mapped_file.h"

namespace atom {

nlohmann::json parse_json(std::string_view text, const std::string& source) {
  // One set of seen keys per open object, innermost last.
  std::vector<std::set<std::string>> open_objects;
  auto reject_duplicates = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      open_objects.pop_back();
    } else if (event == Event::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) fail("{}: duplicate JSON key \"{}\"", source, key);
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), reject_duplicates);
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 5: ..."; keep the tail.
    std::string what = e.what();
    const auto colon = what.find(": ");
    const std::string reason = colon == std::string::npos ? what : what.substr(colon + 2);
    fail("{}: invalid JSON at byte {}: {}", source, e.byte, reason);
  }
}

nlohmann::json read_json_file(const std::string& path) {
  MappedFile file(path);
  const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  return parse_json(text, fmt::format("'{}'", path));
}

std::string json_snippet(const nlohmann::json& value) {
  constexpr std::size_t kMaxChars = 80;
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

}  // namespace atom
