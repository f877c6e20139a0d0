#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "common/error.h"
#include "engine/workload.h"
#include "fake_model.h"

namespace atom {
namespace {

TEST(Workload, SyntheticLengthsAreReproducibleAndNearTheShareGptMeans) {
  SyntheticWorkload spec;
  spec.num_requests = 4000;
  spec.seed = 7;
  spec.max_prompt_length = 100000;  // no clamping: the means should come out
  spec.max_output_length = 100000;
  spec.min_length = 1;
  const auto a = synthetic_workload(spec, 1000, 10);
  const auto b = synthetic_workload(spec, 1000, 10);
  ASSERT_EQ(a.size(), 4000u);
  double prompt_sum = 0, output_sum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].prompt, b[i].prompt);
    ASSERT_EQ(a[i].output_length, b[i].output_length);
    prompt_sum += static_cast<double>(a[i].prompt.size());
    output_sum += a[i].output_length;
    for (std::int32_t t : a[i].prompt) ASSERT_TRUE(t >= 10 && t < 1000);
  }
  // Standard errors of the means are about 3% (prompts) and 2.5% (outputs) of the mean at n = 4000.
  EXPECT_NEAR(prompt_sum / a.size(), 161.0, 161.0 * 0.1);
  EXPECT_NEAR(output_sum / a.size(), 338.0, 338.0 * 0.1);
  spec.seed = 8;
  EXPECT_NE(synthetic_workload(spec, 1000, 10)[0].prompt, a[0].prompt);
}

TEST(Workload, ClampsAndFixedLengths) {
  SyntheticWorkload spec;
  spec.num_requests = 300;
  spec.max_prompt_length = 64;
  spec.max_output_length = 32;
  for (const auto& r : synthetic_workload(spec, 500)) {
    EXPECT_GE(r.prompt.size(), 4u);
    EXPECT_LE(r.prompt.size(), 64u);
    EXPECT_GE(r.output_length, 4);
    EXPECT_LE(r.output_length, 32);
  }
  spec.fixed_prompt_length = 17;
  spec.fixed_output_length = 9;
  for (const auto& r : synthetic_workload(spec, 500)) {
    EXPECT_EQ(r.prompt.size(), 17u);
    EXPECT_EQ(r.output_length, 9);
  }
  spec.num_requests = 0;
  EXPECT_THROW(synthetic_workload(spec, 500), Error);
}

TEST(Workload, ReadsJsonlTracesAndNamesTheBadLine) {
  const std::string path = (std::filesystem::temp_directory_path() / "atom_test_trace.jsonl").string();
  testing::FakeCodec codec;
  {
    std::ofstream out(path);
    out << R"({"prompt": "hello", "output_length": 5})" << "\n\n"
        << R"({"prompt_length": 12})" << "\n";
  }
  const auto requests = load_trace_workload(path, codec, 64, 20, 1);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].prompt, codec.encode("hello", true));
  EXPECT_EQ(requests[0].output_length, 5);
  EXPECT_EQ(requests[1].prompt.size(), 12u);
  EXPECT_EQ(requests[1].output_length, 20);
  const auto clamped = load_trace_workload(path, codec, 64, 20, 1, 3, 4);
  EXPECT_EQ(clamped[1].prompt.size(), 3u);
  EXPECT_EQ(clamped[1].output_length, 4);
  {
    std::ofstream out(path);
    out << R"({"prompt": "ok"})" << "\n" << R"({"output_length": 3})" << "\n";
  }
  try {
    load_trace_workload(path, codec, 64, 20, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
  EXPECT_THROW(load_trace_workload(path, codec, 64, 20, 1), Error);
}

TEST(Workload, SharedPrefixStartsEveryPrompt) {
  SyntheticWorkload spec;
  spec.num_requests = 5;
  spec.seed = 3;
  spec.fixed_prompt_length = 7;
  spec.fixed_output_length = 2;
  const auto plain = synthetic_workload(spec, 1000, 10);
  spec.shared_prefix_length = 20;
  const auto shared = synthetic_workload(spec, 1000, 10);
  ASSERT_EQ(shared.size(), 5u);
  for (std::size_t i = 0; i < shared.size(); ++i) {
    ASSERT_EQ(shared[i].prompt.size(), 27u);
    EXPECT_TRUE(
        std::equal(shared[0].prompt.begin(), shared[0].prompt.begin() + 20, shared[i].prompt.begin()));
    EXPECT_TRUE(std::equal(plain[i].prompt.begin(), plain[i].prompt.end(), shared[i].prompt.begin() + 20));
    for (std::int32_t t : shared[i].prompt) EXPECT_GE(t, 10);
  }
  spec.shared_prefix_length = -1;
  EXPECT_THROW(synthetic_workload(spec, 1000, 10), Error);
}

}  // namespace
}  // namespace atom
