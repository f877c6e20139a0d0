#pragma once
// Writing an output directory all at once: the files go to a fresh sibling directory, which replaces the
// output only when everything is written. A failure (or an exception) leaves the output as it was, and
// nothing that existed before is ever deleted except the output itself, replaced under --force.
#include <filesystem>
#include <string>

namespace atom {

// The output directory `dir` as an absolute path without trailing separators or dot components
// ("Q/" and "Q/." are "Q"). Throws atom::Error for an output that names no directory ("/", "").
std::filesystem::path normalize_output_dir(const std::string& dir);

class StagedDir {
 public:
  // Refuses an existing output unless `force`. Creates a new, empty sibling "<out>.tmp-<tag>-<pid>-<n>"
  // (never one that exists already).
  StagedDir(const std::string& output, bool force, const char* tag);
  ~StagedDir();  // removes the staging directory unless committed
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  const std::filesystem::path& staging() const { return staging_; }
  const std::filesystem::path& output() const { return output_; }

  // Moves the staging directory to the output; an existing output (force) is moved aside first and
  // removed only after the new one is in place.
  void commit();

 private:
  std::filesystem::path output_, staging_;
  bool force_;
  bool committed_ = false;
};

}  // namespace atom
