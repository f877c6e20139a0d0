#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/mapped_file.h"
#include "common/progress.h"

namespace atom {
namespace {

TEST(MappedFile, MapsContentsAndNamesMissingFiles) {
  const auto path = std::filesystem::temp_directory_path() / "atom_mapped_file_test.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out << "hello atom";
  }
  MappedFile f(path.string());
  ASSERT_EQ(f.size(), 10u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.data()), f.size()), "hello atom");
  MappedFile moved = std::move(f);
  EXPECT_EQ(moved.size(), 10u);
  EXPECT_EQ(f.data(), nullptr);
  std::filesystem::remove(path);

  try {
    MappedFile missing("/nonexistent/dir/model.gguf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.gguf"), std::string::npos);
  }
  EXPECT_THROW(MappedFile(std::filesystem::temp_directory_path().string()), Error);  // a directory
}

TEST(MappedFile, EmptyFileHasNoData) {
  const auto path = std::filesystem::temp_directory_path() / "atom_mapped_file_empty.bin";
  { std::ofstream out(path, std::ios::binary); }
  MappedFile f(path.string());
  EXPECT_EQ(f.size(), 0u);
  std::filesystem::remove(path);
}

TEST(Progress, CountsAndTimes) {
  Progress p("test", 3, /*enabled=*/false);
  p.advance();
  p.advance(2);
  EXPECT_GE(p.elapsed_seconds(), 0.0);
  p.finish();
}

}  // namespace
}  // namespace atom
