// Hostile JSON in every file format that holds some: nesting bounded before a DOM exists, numbers out of
// a double's range reported with the file, and error messages that never render a whole large value.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no atom::Error";
  return "";
}

std::string deep(std::size_t levels, char open = '[', char close = ']') {
  return std::string(levels, open) + std::string(levels, close);
}

class JsonFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "atom_json_XXXXXX").string();
    ASSERT_TRUE(::mkdtemp(pattern.data()));
    dir = pattern;
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  fs::path dir;
};

TEST(ParseJson, NestingIsBoundedBeforeTheDomIsBuilt) {
  EXPECT_NO_THROW(parse_json(deep(kMaxJsonDepth), "ok"));
  for (const std::string& text :
       {deep(kMaxJsonDepth + 1), deep(100000), std::string(100000, '['), "{\"a\":" + deep(200000) + "}"}) {
    const std::string message = error_of([&] { parse_json(text, "src.json"); });
    EXPECT_NE(message.find("src.json"), std::string::npos) << message;
    EXPECT_NE(message.find("nested deeper than 128"), std::string::npos) << message;
  }
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"k\":";
  objects += "1" + std::string(100000, '}');
  EXPECT_NE(error_of([&] { parse_json(objects, "o.json"); }).find("nested deeper"), std::string::npos);
}

TEST(ParseJson, NumbersOutOfRangeAreErrorsNamingTheSource) {
  for (const char* text : {"1e400", "[-1e999]", "{\"x\": 1e309}"}) {
    const std::string message = error_of([&] { parse_json(text, "'numbers.json'"); });
    EXPECT_NE(message.find("'numbers.json'"), std::string::npos) << message;
    EXPECT_NE(message.find("number overflow"), std::string::npos) << message;
  }
}

TEST(ParseJson, DuplicateKeysOptionallyAllowed) {
  EXPECT_THROW(parse_json(R"({"a": 1, "a": 2})", "dup"), Error);
  EXPECT_EQ(parse_json(R"({"a": 1, "a": 2})", "dup", /*reject_duplicate_keys=*/false)["a"], 2);
}

TEST(JsonSnippet, BoundedWhateverTheValue) {
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(std::string(100, 'x'));
  EXPECT_LE(json_snippet(big).size(), 90u);
  EXPECT_LE(json_snippet(std::string(1 << 20, 'y')).size(), 90u);
  nlohmann::json nested = parse_json(deep(kMaxJsonDepth), "n");
  const std::string snippet = json_snippet(nested);
  EXPECT_LE(snippet.size(), 90u);
  EXPECT_NE(snippet.find("..."), std::string::npos) << snippet;
  EXPECT_EQ(json_snippet(nlohmann::json::parse(R"({"a":[1,2],"b":"c"})")), R"({"a":[1,2],"b":"c"})");
}

TEST_F(JsonFiles, ConfigJsonHostileValues) {
  const std::string huge = write("config.json", R"({"model_type": "llama", "hidden_size": 1e400})");
  std::string message = error_of([&] { read_hf_config(huge); });
  EXPECT_NE(message.find(huge), std::string::npos) << message;
  const std::string nested = write("deep.json", "{\"model_type\": " + deep(100000) + "}");
  message = error_of([&] { read_hf_config(nested); });
  EXPECT_NE(message.find(nested), std::string::npos) << message;
  EXPECT_NE(message.find("nested deeper"), std::string::npos) << message;
  // A deep-but-allowed value in a field of the wrong type: the message shows a bounded snippet.
  const std::string wrong =
      write("wrong.json", "{\"model_type\": \"llama\", \"hidden_size\": " + deep(100) + "}");
  message = error_of([&] { read_hf_config(wrong); });
  EXPECT_LT(message.size(), 400u) << message;
}

TEST_F(JsonFiles, SafetensorsHeaderNestingIsBounded) {
  const std::string header = "{\"t\": " + deep(100000) + "}";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  const std::string path = write("deep.safetensors", bytes + header);
  const std::string message = error_of([&] { SafetensorsFile file(path); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("nested deeper"), std::string::npos) << message;
}

}  // namespace
}  // namespace atom
