#pragma once
// Reading the text files the commands take (--text, --calib): errors say which option and why.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/error.h"

namespace atom::cli {

// The whole file. `what` names it in errors ("calibration text", "text file"); a directory, a missing
// file and an empty file are each called what they are.
inline std::string read_text_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("{} '{}' is a directory, not a text file", what, path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {} '{}': {}", what, path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read {} '{}'", what, path);
  std::string text = ss.str();
  if (text.empty()) fail("{} '{}' is empty", what, path);
  return text;
}

}  // namespace atom::cli
