#include "common/staged_dir.h"

#include <unistd.h>

#include "common/error.h"

namespace atom {

namespace fs = std::filesystem;

fs::path normalize_output_dir(const std::string& dir) {
  if (dir.empty()) fail("the output directory is an empty path");
  std::error_code ec;
  fs::path path = fs::absolute(fs::path(dir), ec);
  if (ec) fail("output '{}': {}", dir, ec.message());
  path = path.lexically_normal();
  while (!path.has_filename() && path.has_relative_path()) path = path.parent_path();  // "a/b/" -> "a/b"
  if (!path.has_relative_path() || path.filename() == "..") {
    fail("output '{}' names no directory that can be replaced (it resolves to '{}')", dir, path.string());
  }
  return path;
}

StagedDir::StagedDir(const std::string& output, bool force, const char* tag)
    : output_(normalize_output_dir(output)), force_(force) {
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(output_, ec);
  if (fs::exists(status)) {
    if (!force) fail("output '{}' already exists; pass --force to replace it", output);
    if (!fs::is_directory(status)) fail("output '{}' exists and is not a directory", output);
  }
  fs::create_directories(output_.parent_path(), ec);
  if (ec) fail("cannot create the parent directory of output '{}': {}", output, ec.message());
  for (int n = 0;; ++n) {
    staging_ = output_;
    staging_ += fmt::format(".tmp-{}-{}-{}", tag, ::getpid(), n);
    if (fs::create_directory(staging_, ec)) break;  // false: it exists (someone else's): try the next name
    if (ec) fail("cannot create the staging directory '{}': {}", staging_.string(), ec.message());
    if (n > 1000) fail("cannot find a free staging directory name next to '{}'", output);
  }
}

StagedDir::~StagedDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagedDir::commit() {
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(output_, ec))) {
    ATOM_CHECK(force_);
    for (int n = 0;; ++n) {
      old = output_;
      old += fmt::format(".old-{}-{}", ::getpid(), n);
      if (!fs::exists(fs::symlink_status(old, ec))) break;
    }
    fs::rename(output_, old, ec);
    if (ec) fail("cannot move the old output '{}' aside: {}", output_.string(), ec.message());
  }
  fs::rename(staging_, output_, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, output_, ec);  // put the old output back
    fail("cannot move '{}' to '{}': {}", staging_.string(), output_.string(), ec.message());
  }
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace atom
