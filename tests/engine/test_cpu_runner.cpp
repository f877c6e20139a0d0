#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "backend/cpu/cpu_runner.h"
#include "backend/cpu/paged_kv.h"
#include "backend/cpu/quant_kv_cache.h"
#include "common/error.h"
#include "common/half.h"
#include "engine/cpu_serving_model.h"
#include "engine/engine.h"
#include "format/format.h"
#include "model/sampler.h"

namespace atom {
namespace {

// ---- paged pool against the format references, on fresh random rows and scattered block tables

std::vector<float> random_rows(std::mt19937& rng, std::int64_t n, std::int64_t width) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> rows(static_cast<std::size_t>(n * width));
  for (auto& v : rows) v = normal(rng);
  for (std::int64_t i = 0; i < width; ++i) rows[static_cast<std::size_t>(width + i)] = 0.75f;  // a constant row
  return rows;
}

// The reference decoding of each format, row by row (fp32 scalar).
std::vector<float> reference_decode(KvCacheDType dtype, const std::vector<float>& rows, std::int64_t n,
                                    std::int64_t width, std::int64_t head_dim) {
  switch (dtype) {
    case KvCacheDType::f32: return rows;
    case KvCacheDType::f16: {
      std::vector<float> out(rows.size());
      for (std::size_t i = 0; i < rows.size(); ++i) out[i] = fp16_to_fp32(fp32_to_fp16(rows[i]));
      return out;
    }
    default: {
      const int bits = dtype == KvCacheDType::int8 ? 8 : 4;
      const quant::AsymmetricGroups q = quant::quantize_asymmetric_groups(rows, n, width, head_dim, bits);
      return quant::dequantize_asymmetric_groups(q, n, width, head_dim);
    }
  }
}

TEST(PagedKvPool, EveryDtypeRoundTripsThroughScatteredBlocksLikeTheFormatReference) {
  std::mt19937 rng(21);
  const std::int64_t head_dim = 64, width = 3 * head_dim;
  for (KvCacheDType dtype : {KvCacheDType::f32, KvCacheDType::f16, KvCacheDType::int8, KvCacheDType::int4}) {
    SCOPED_TRACE(kv_cache_dtype_name(dtype));
    PagedKvPool pool(dtype, /*regions=*/2, /*num_blocks=*/9, /*block_size=*/4, width, head_dim);
    EXPECT_EQ(pool.bytes(), PagedKvPool::row_bytes(dtype, width, head_dim) * 2 * 9 * 4);
    // Two sequences interleaved over the pool, written in uneven pieces.
    const std::vector<std::int32_t> table_a = {7, 2, 5, 0}, table_b = {1, 8, 3};
    const std::int64_t n_a = 15, n_b = 10;
    const auto rows_a = random_rows(rng, n_a, width), rows_b = random_rows(rng, n_b, width);
    pool.write(1, table_a, 0, rows_a.data(), 3);
    pool.write(1, table_b, 0, rows_b.data(), 10);
    pool.write(1, table_a, 3, rows_a.data() + 3 * width, n_a - 3);
    pool.write(0, table_a, 0, rows_b.data(), 10);  // another region: must not disturb region 1
    std::vector<float> got_a(rows_a.size()), got_b(rows_b.size());
    pool.read(1, table_a, 0, n_a, got_a.data());
    pool.read(1, table_b, 0, n_b, got_b.data());
    EXPECT_EQ(got_a, reference_decode(dtype, rows_a, n_a, width, head_dim));
    EXPECT_EQ(got_b, reference_decode(dtype, rows_b, n_b, width, head_dim));
    // A window that starts and ends inside blocks.
    std::vector<float> window(static_cast<std::size_t>(6 * width));
    pool.read(1, table_a, 5, 11, window.data());
    const auto expected = reference_decode(dtype, rows_a, n_a, width, head_dim);
    EXPECT_TRUE(std::equal(window.begin(), window.end(), expected.begin() + 5 * width));
    if (dtype == KvCacheDType::int4 || dtype == KvCacheDType::int8) {
      // The constant row (row 1) is exact.
      EXPECT_TRUE(std::all_of(got_a.begin() + width, got_a.begin() + 2 * width, [](float v) { return v == 0.75f; }));
    }
    EXPECT_THROW(pool.write(1, table_b, 10, rows_b.data(), 3), Error);  // beyond the table's 12 positions
    EXPECT_THROW(pool.read(1, table_b, 0, 13, got_b.data()), Error);
  }
  EXPECT_THROW(parse_kv_cache_dtype("int3"), Error);
  EXPECT_EQ(parse_kv_cache_dtype("fp16"), KvCacheDType::f16);
}

// ---- the real model

std::string model_path() {
  return std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

bool skip_model_tests() {
  const char* skip = std::getenv("ATOM_SKIP_MODEL_TESTS");
  return skip && std::string(skip) == "1";
}

const CpuServingModel& smollm2() {
  static const CpuServingModel model = [] {
    if (!std::filesystem::exists(model_path())) {
      throw std::runtime_error("missing " + model_path() + ": run scripts/fetch_model.sh");
    }
    return load_cpu_serving_model(model_path());
  }();
  return model;
}

#define REQUIRE_MODEL()                                                                               \
  do {                                                                                                \
    if (skip_model_tests()) GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1";                                \
    ASSERT_TRUE(std::filesystem::exists(model_path())) << "missing " << model_path()                  \
                                                       << ": run scripts/fetch_model.sh";             \
  } while (0)

// Greedy generation on the model alone: one sequence, a contiguous cache of the given kind.
std::vector<std::int32_t> reference_greedy(const cpu::LlamaModel& model, const std::vector<std::int32_t>& prompt,
                                           int n, const cpu::KvRowStoreFactory& factory) {
  cpu::KvCache cache = model.new_cache(factory);
  std::vector<float> logits = model.forward(prompt, cache);
  std::vector<std::int32_t> out;
  for (int i = 0; i < n; ++i) {
    const std::int32_t t = argmax(logits);
    out.push_back(t);
    const std::vector<std::int32_t> next = {t};
    logits = model.forward(next, cache);
  }
  return out;
}

// Runs prompts through the engine (greedy, fixed length) and compares with the model alone.
void expect_engine_matches_model_alone(KvCacheDType dtype, const cpu::KvRowStoreFactory& factory,
                                       const EngineConfig& config, const std::vector<std::string>& texts,
                                       int max_tokens) {
  const CpuServingModel& m = smollm2();
  Engine engine(std::make_unique<CpuModelRunner>(m.model, dtype), m.codec, config);
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& text : texts) {
    prompts.push_back(m.codec->encode(text, true));
    GenerationRequest r;
    r.prompt = prompts.back();
    r.params.temperature = 0.0f;
    r.params.max_tokens = max_tokens;
    r.params.ignore_eos = true;
    streams.push_back(engine.submit(r));
  }
  while (engine.step()) {
  }
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const RequestOutput out = streams[i]->wait();
    EXPECT_EQ(out.token_ids, reference_greedy(*m.model, prompts[i], max_tokens, factory)) << texts[i];
    EXPECT_FALSE(out.text.empty());
  }
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
}

EngineConfig runner_config(int max_batch, int max_batched_tokens, int num_blocks) {
  EngineConfig config;
  config.limits.max_batch = max_batch;
  config.limits.max_batched_tokens = max_batched_tokens;
  config.num_kv_blocks = num_blocks;
  config.block_size = 16;
  return config;
}

// Mixed batches (prompts in chunks next to decodes) through the paged fp32 cache give the tokens the
// model gives one sequence at a time: the batch changes nothing but the order of the rows.
TEST(CpuModelRunner, BatchedPagedF32MatchesTheModelAlone) {
  REQUIRE_MODEL();
  expect_engine_matches_model_alone(KvCacheDType::f32, cpu::make_f32_kv_row_store, runner_config(3, 16, 64),
                                    {"The capital of France is", "Once upon a time, in a land far away, there",
                                     "1, 2, 3, 4,"},
                                    8);
}

// Paged INT8/INT4 rows decode to exactly what the model's own quantized row stores hold. One sequence at
// a time, so that K/V come out of products of the same shapes as in the reference (under batching, last-bit
// differences of K/V can move a 4-bit code and later a near-tie argmax).
TEST(CpuModelRunner, PagedInt8AndInt4MatchTheModelWithItsQuantizedCaches) {
  REQUIRE_MODEL();
  const EngineConfig one_at_a_time = runner_config(1, 4096, 64);
  expect_engine_matches_model_alone(KvCacheDType::int8, cpu::make_u8_kv_row_store, one_at_a_time,
                                    {"The quick brown fox"}, 8);
  expect_engine_matches_model_alone(KvCacheDType::int4, cpu::make_u4_kv_row_store, one_at_a_time,
                                    {"Water boils at"}, 8);
}

TEST(CpuModelRunner, PreemptedSequencesRecomputeToTheSameOutput) {
  REQUIRE_MODEL();
  const CpuServingModel& m = smollm2();
  // 5 blocks of 8 positions for 3 sequences of about 17: preemption is certain.
  EngineConfig config = runner_config(8, 64, 5);
  config.block_size = 8;
  Engine engine(std::make_unique<CpuModelRunner>(m.model, KvCacheDType::f32), m.codec, config);
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const char* text : {"Paris is", "Bread is made of", "Cats like to"}) {
    prompts.push_back(m.codec->encode(text, true));
    GenerationRequest r;
    r.prompt = prompts.back();
    r.params.temperature = 0.0f;
    r.params.max_tokens = 12;
    r.params.ignore_eos = true;
    streams.push_back(engine.submit(r));
  }
  while (engine.step()) {
  }
  EXPECT_GT(engine.stats().preemptions, 0);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(streams[i]->wait().token_ids, reference_greedy(*m.model, prompts[i], 12, cpu::make_f32_kv_row_store));
  }
}

}  // namespace
}  // namespace atom
