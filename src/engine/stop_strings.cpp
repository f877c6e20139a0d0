#include "engine/stop_strings.h"

#include <algorithm>
#include <string_view>

namespace atom {

StopStringFilter::StopStringFilter(std::vector<std::string> stop_strings) {
  for (auto& s : stop_strings) {
    if (!s.empty()) stop_strings_.push_back(std::move(s));
  }
}

std::string StopStringFilter::append(const std::string& text) {
  if (stopped_) return {};
  if (stop_strings_.empty()) return text;
  pending_ += text;
  // Earliest complete match. Released text never holds the start of a match (see the hold-back below),
  // so searching the pending text is enough.
  std::size_t first = std::string::npos;
  for (const auto& stop : stop_strings_) {
    const std::size_t at = pending_.find(stop);
    if (at < first) {
      first = at;
      matched_ = stop;
    }
  }
  if (first != std::string::npos) {
    stopped_ = true;
    std::string released = pending_.substr(0, first);
    pending_.clear();
    return released;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  std::size_t hold = 0;
  const std::string_view pending(pending_);
  for (const auto& stop : stop_strings_) {
    const std::size_t longest = std::min(stop.size() - 1, pending.size());
    for (std::size_t k = longest; k > hold; --k) {
      if (pending.substr(pending.size() - k) == std::string_view(stop).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  std::string released = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return released;
}

std::string StopStringFilter::flush() {
  if (stopped_) return {};
  std::string released;
  released.swap(pending_);
  return released;
}

}  // namespace atom
