#pragma once
// Shared by the libFuzzer targets: inputs that the code under test reads from files are written to a
// per-process file in /dev/shm (or $TMPDIR); expected failures are atom::Error (or ApiError), anything else
// (a crash, a sanitizer report, another exception escaping) is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace atom::fuzz {

inline std::string scratch_dir() {
  static const std::string dir = [] {
    const std::string base =
        std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path().string();
    const std::string d = base + "/atom-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::string write_file(const std::string& name, const std::uint8_t* data, std::size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

}  // namespace atom::fuzz
