#pragma once
// Releases generated text while watching for stop strings, like vLLM: text that could still become the
// start of a stop string is held back; a completed stop string ends the output just before it.
#include <string>
#include <vector>

namespace atom {

class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stop_strings);

  // Adds decoded text; returns the text that can now be released. After a stop string completes,
  // stopped() is true and everything from the stop string on is dropped.
  std::string append(const std::string& text);
  // The generation ended for another reason: releases what was held back.
  std::string flush();
  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stop_strings_;
  std::string pending_;  // decoded but not yet released
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace atom
