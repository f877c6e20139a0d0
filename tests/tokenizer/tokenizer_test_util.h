#pragma once
// Shared helpers of the tokenizer tests: the reference data of scripts/dev/make_tokenizer_refs.py,
// the shared tokenizer fixtures, and the demo GGUF.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/json_file.h"
#include "tokenizer/tokenizer.h"

namespace atom::test {

inline std::string data_path(const std::string& name) {
  return std::string(ATOM_TEST_DATA_DIR) + "/tokenizer/" + name;
}
inline std::string fixture_dir(const std::string& name) {
  return std::string(ATOM_SOURCE_DIR) + "/../shared/fixtures/tokenizers/" + name;
}
inline std::string smollm2_gguf_path() {
  return std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// GTEST_SKIP / FAIL when the demo model is absent, as the project requires.
#define ATOM_REQUIRE_SMOLLM2()                                                                  \
  do {                                                                                          \
    if (!std::filesystem::exists(::atom::test::smollm2_gguf_path())) {                          \
      const char* skip = std::getenv("ATOM_SKIP_MODEL_TESTS");                                  \
      if (skip && std::string(skip) == "1") GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1";          \
      FAIL() << ::atom::test::smollm2_gguf_path() << " is missing: run scripts/fetch_model.sh"; \
    }                                                                                           \
  } while (0)

// GTEST_SKIP when a shared tokenizer fixture is absent (a clone without ../shared beside it), saying so.
#define ATOM_REQUIRE_FIXTURE(name)                                                                       \
  do {                                                                                                   \
    if (!std::filesystem::exists(::atom::test::fixture_dir(name))) {                                     \
      GTEST_SKIP() << "tokenizer fixture " << ::atom::test::fixture_dir(name)                            \
                   << " is missing: these tests need ../shared/fixtures/tokenizers beside the checkout"; \
    }                                                                                                    \
  } while (0)

inline const nlohmann::json& reference(const std::string& file) {
  static std::mutex mutex;
  static std::map<std::string, nlohmann::json> cache;
  std::lock_guard lock(mutex);
  auto it = cache.find(file);
  if (it == cache.end()) it = cache.emplace(file, read_json_file(data_path(file))).first;
  return it->second;
}

inline const std::vector<std::string>& test_strings() {
  static const std::vector<std::string> strings = reference("strings.json").get<std::vector<std::string>>();
  return strings;
}

inline nlohmann::json fixture_json(const std::string& name) {
  return read_tokenizer_json(fixture_dir(name) + "/tokenizer.json.gz");
}

}  // namespace atom::test
