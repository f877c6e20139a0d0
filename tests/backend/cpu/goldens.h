#pragma once
// Reading the golden logits written by scripts/dev/make_model_goldens.py (tests/data/model/...), and the
// error measures the fp32 decoder is held to against them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace atom::test {

inline std::string model_data_dir() { return std::string(ATOM_TEST_DATA_DIR) + "/model"; }

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

inline std::vector<float> read_f32(const std::string& path, std::size_t expected_count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<float> v(expected_count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(expected_count * sizeof(float)));
  if (static_cast<std::size_t>(in.gcount()) != expected_count * sizeof(float) || in.peek() != EOF) {
    throw std::runtime_error("unexpected size of " + path);
  }
  return v;
}

struct LogitsError {
  double relative_l2 = 0;   // ||ours - ref|| / ||ref||
  double relative_max = 0;  // max |ours - ref| / max |ref|
};

inline LogitsError logits_error(const float* ours, const float* ref, std::size_t n) {
  double num = 0, den = 0, max_diff = 0, max_ref = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = double(ours[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
    max_diff = std::max(max_diff, std::fabs(d));
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
  }
  return {std::sqrt(num / den), max_diff / max_ref};
}

// Checks one logits row against its golden; returns the error for reporting.
inline LogitsError expect_logits_near(const float* ours, const float* ref, std::size_t vocab, double tolerance,
                                      const std::string& what) {
  const LogitsError e = logits_error(ours, ref, vocab);
  EXPECT_LE(e.relative_l2, tolerance) << what;
  EXPECT_LE(e.relative_max, tolerance) << what;
  return e;
}

inline std::string smollm2_gguf_path() {
  return std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// True when the SmolLM2 test must be skipped (ATOM_SKIP_MODEL_TESTS=1); adds a failure when the model is
// simply absent.
inline bool smollm2_unavailable() {
  const char* skip = std::getenv("ATOM_SKIP_MODEL_TESTS");
  if (skip != nullptr && std::string(skip) == "1") return true;
  std::ifstream f(smollm2_gguf_path());
  if (!f) {
    ADD_FAILURE() << "SmolLM2 GGUF not found at " << smollm2_gguf_path()
                  << ": run scripts/fetch_model.sh (or set ATOM_SKIP_MODEL_TESTS=1)";
    return true;
  }
  return false;
}

}  // namespace atom::test
