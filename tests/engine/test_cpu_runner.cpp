#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
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
                                       int max_tokens, const CpuServingModel& m = smollm2()) {
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

// A model whose quantized cache keeps a scale and minimum per group of 32 channels: the runner's paged pool takes
// the model's group and gives the model's own tokens; with one pair per head, other tokens (so the group is used).
TEST(CpuModelRunner, PagedInt4GroupsOf32MatchTheModelWithItsGroupedCache) {
  REQUIRE_MODEL();
  CpuServingModel grouped = load_cpu_serving_model(model_path());
  // A fresh instance nobody else holds: the test may change its cache format.
  const auto model = std::const_pointer_cast<cpu::LlamaModel>(grouped.model);
  const cpu::KvRowStoreFactory g32 = cpu::kv_row_store_factory(cpu::KvDType::U4, 32);
  model->set_kv_store_factory(g32, 32);
  const EngineConfig one_at_a_time = runner_config(1, 4096, 64);
  const std::vector<std::string> prompts = {"The quick brown fox jumps over the lazy dog. The quick brown"};
  expect_engine_matches_model_alone(KvCacheDType::int4, g32, one_at_a_time, prompts, 12, grouped);
  CpuModelRunner runner(model, KvCacheDType::int4);
  EXPECT_NE(runner.describe().find("int4 g32"), std::string::npos) << runner.describe();
  const auto prompt = grouped.codec->encode(prompts[0], true);
  cpu::KvCache grouped_cache = model->new_cache(g32), per_head_cache = model->new_cache(cpu::make_u4_kv_row_store);
  EXPECT_NE(model->forward(prompt, grouped_cache), model->forward(prompt, per_head_cache))
      << "groups of 32 changed no logit: the test cannot tell the group is used";
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

// ---- prefix caching on the real model

// Forwards to a runner and keeps the logits the engine receives, per sequence, in order.
class RecordingRunner final : public ModelRunner {
 public:
  explicit RecordingRunner(std::unique_ptr<ModelRunner> inner) : inner_(std::move(inner)) {}
  int vocab_size() const override { return inner_->vocab_size(); }
  int max_context() const override { return inner_->max_context(); }
  std::size_t kv_block_bytes(int block_size) const override { return inner_->kv_block_bytes(block_size); }
  void allocate_kv_cache(const KvCacheSpec& spec) override { inner_->allocate_kv_cache(spec); }
  void release(std::int64_t sequence_id) override { inner_->release(sequence_id); }
  std::string describe() const override { return inner_->describe(); }
  void execute(std::span<const SequenceChunk> batch, std::span<float> logits) override {
    inner_->execute(batch, logits);
    const auto vocab = static_cast<std::size_t>(vocab_size());
    std::size_t k = 0;
    for (const SequenceChunk& chunk : batch) {
      if (!chunk.wants_logits) continue;
      const float* row = logits.data() + k++ * vocab;
      (*logits_)[chunk.sequence_id].emplace_back(row, row + vocab);
    }
  }
  std::shared_ptr<std::map<std::int64_t, std::vector<std::vector<float>>>> logits_ =
      std::make_shared<std::map<std::int64_t, std::vector<std::vector<float>>>>();

 private:
  std::unique_ptr<ModelRunner> inner_;
};

struct PrefixRun {
  std::vector<std::vector<std::int32_t>> tokens;                   // per request
  std::map<std::int64_t, std::vector<std::vector<float>>> logits;  // per request id (1, 2, ...)
  EngineStats stats;
};

// Requests sharing a system prompt, each submitted after the previous one finished (`sequential`) or all
// at once, through the engine with or without prefix caching.
PrefixRun run_shared_prefix(KvCacheDType dtype, bool caching, bool sequential, const EngineConfig& base,
                            int max_tokens) {
  const CpuServingModel& m = smollm2();
  EngineConfig config = base;
  config.enable_prefix_caching = caching;
  auto recording = std::make_unique<RecordingRunner>(std::make_unique<CpuModelRunner>(m.model, dtype));
  auto logits = recording->logits_;
  Engine engine(std::move(recording), m.codec, config);
  const std::string system =
      "You are a helpful assistant. Answer briefly and truthfully, and say so when you do not know.\n";
  PrefixRun run;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const char* question :
       {"What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"}) {
    GenerationRequest r;
    r.prompt = m.codec->encode(system + question, true);
    r.params.temperature = 0.0f;
    r.params.max_tokens = max_tokens;
    r.params.ignore_eos = true;
    streams.push_back(engine.submit(r));
    if (sequential) {
      while (engine.step()) {
      }
    }
  }
  while (engine.step()) {
  }
  for (auto& s : streams) run.tokens.push_back(s->wait().token_ids);
  run.logits = *logits;
  run.stats = engine.stats();
  engine.reset_prefix_cache();
  engine.step();
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
  EXPECT_EQ(engine.stats().kv_blocks_cached, 0);
  return run;
}

// Prefill chunks of one block, one request at a time: with and without the cache, every chunk the engine
// runs has the same shape and reads the same K/V, so the logits are bit-identical for every KV format
// (a cached quantized block is the block the request would have written).
TEST(CpuModelRunner, PrefixCachingGivesIdenticalLogitsForEveryKvFormat) {
  REQUIRE_MODEL();
  const EngineConfig one_block_chunks = runner_config(1, 16, 64);
  for (KvCacheDType dtype : {KvCacheDType::f32, KvCacheDType::f16, KvCacheDType::int8, KvCacheDType::int4}) {
    const PrefixRun off = run_shared_prefix(dtype, false, true, one_block_chunks, 4);
    const PrefixRun on = run_shared_prefix(dtype, true, true, one_block_chunks, 4);
    EXPECT_EQ(off.stats.prefix_cache_hit_tokens, 0);
    EXPECT_GE(on.stats.prefix_cache_hit_tokens, 2 * 16) << kv_cache_dtype_name(dtype);
    EXPECT_EQ(on.tokens, off.tokens) << kv_cache_dtype_name(dtype);
    ASSERT_EQ(on.logits.size(), off.logits.size());
    for (const auto& [id, rows] : off.logits) {
      EXPECT_TRUE(on.logits.at(id) == rows) << kv_cache_dtype_name(dtype) << ": logits of request " << id;
    }
  }
}

// All at once in a pool too small for them: batching, chunked prefill, preemption and eviction, and the
// greedy tokens are those of the model alone.
TEST(CpuModelRunner, PrefixCachingUnderPreemptionMatchesTheModelAlone) {
  REQUIRE_MODEL();
  EngineConfig tight = runner_config(3, 32, 8);
  tight.block_size = 8;
  const PrefixRun on = run_shared_prefix(KvCacheDType::f32, true, false, tight, 10);
  EXPECT_GT(on.stats.preemptions, 0);
  EXPECT_GT(on.stats.prefix_cache_hit_tokens, 0);
  EXPECT_GT(on.stats.prefix_cache_evictions, 0);
  const CpuServingModel& m = smollm2();
  const std::string system =
      "You are a helpful assistant. Answer briefly and truthfully, and say so when you do not know.\n";
  const char* questions[] = {"What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(on.tokens[i], reference_greedy(*m.model, m.codec->encode(system + questions[i], true), 10,
                                             cpu::make_f32_kv_row_store))
        << questions[i];
  }
}

}  // namespace
}  // namespace atom
