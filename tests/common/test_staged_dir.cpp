// StagedDir: an output directory replaced all at once, whatever the spelling of its path ("OUT/"), and
// nothing else ever deleted (a pre-existing "OUT.tmp-..." of someone else's stays).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/staged_dir.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

class StagedDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "atom_staged_XXXXXX").string();
    ASSERT_TRUE(::mkdtemp(pattern.data()));
    root = pattern;
  }
  void TearDown() override { fs::remove_all(root); }
  static void touch(const fs::path& p, const std::string& text = "x") { std::ofstream(p) << text; }
  static std::string read(const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  fs::path root;
};

TEST_F(StagedDirTest, NormalizesTrailingSlashesAndDots) {
  EXPECT_EQ(normalize_output_dir((root / "Q").string() + "/"), root / "Q");
  EXPECT_EQ(normalize_output_dir((root / "Q").string() + "//"), root / "Q");
  EXPECT_EQ(normalize_output_dir((root / "Q").string() + "/."), root / "Q");
  EXPECT_THROW(normalize_output_dir("/"), Error);
  EXPECT_THROW(normalize_output_dir(""), Error);
}

TEST_F(StagedDirTest, TrailingSlashWithForceReplacesTheOutput) {
  const fs::path out = root / "Q";
  fs::create_directories(out);
  touch(out / "old.txt");
  {
    StagedDir staged(out.string() + "/", /*force=*/true, "test");
    EXPECT_EQ(staged.staging().parent_path(), root) << "the staging directory must be a sibling";
    touch(staged.staging() / "new.txt", "new");
    staged.commit();
  }
  EXPECT_FALSE(fs::exists(out / "old.txt"));
  EXPECT_EQ(read(out / "new.txt"), "new");
  EXPECT_EQ(std::distance(fs::directory_iterator(root), fs::directory_iterator()), 1) << "leftovers beside Q";
}

TEST_F(StagedDirTest, NewOutputWithTrailingSlash) {
  const fs::path out = root / "new" / "Q";
  StagedDir staged(out.string() + "/", /*force=*/false, "test");
  touch(staged.staging() / "a.txt", "a");
  staged.commit();
  EXPECT_EQ(read(out / "a.txt"), "a");
}

TEST_F(StagedDirTest, RefusesAnExistingOutputWithoutForce) {
  fs::create_directories(root / "Q");
  try {
    StagedDir staged((root / "Q").string() + "/", false, "test");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos);
  }
  touch(root / "file");
  EXPECT_THROW(StagedDir((root / "file").string(), true, "test"), Error);  // not a directory
}

TEST_F(StagedDirTest, FailureLeavesTheOutputAndOthersFilesAlone) {
  const fs::path out = root / "X";
  fs::create_directories(out);
  touch(out / "keep.txt", "keep");
  // Someone else's directory with a staging-like name is never touched.
  for (const char* name : {"X.tmp-convert", "X.tmp-test-0"}) {
    fs::create_directories(root / name);
    touch(root / name / "precious.txt");
  }
  {
    StagedDir staged(out.string(), /*force=*/true, "test");
    touch(staged.staging() / "partial.txt");
    // no commit: as when the work fails
  }
  EXPECT_EQ(read(out / "keep.txt"), "keep");
  EXPECT_TRUE(fs::exists(root / "X.tmp-convert" / "precious.txt"));
  EXPECT_TRUE(fs::exists(root / "X.tmp-test-0" / "precious.txt"));
  EXPECT_EQ(std::distance(fs::directory_iterator(root), fs::directory_iterator()), 3);
}

}  // namespace
}  // namespace atom
