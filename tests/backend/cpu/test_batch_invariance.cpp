// Batch invariance (the serving runner's mode): a row's result, bit for bit, does not depend on the other
// rows of its batch nor on how a prompt is cut into chunks: every linear op, attention, and the whole model.
#include <gtest/gtest.h>

#include <bit>
#include <functional>
#include <numeric>
#include <random>

#include <fmt/format.h>

#include "backend/cpu/kernels.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/quant_kv_cache.h"
#include "backend/cpu/quant_linear.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

using quant::NumberFormat;

class BatchInvariance : public ::testing::Test {
 protected:
  void SetUp() override { set_batch_invariant(true); }
  void TearDown() override { set_batch_invariant(false); }
};

std::vector<float> random_vector(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

int count_bit_differences(const float* a, const float* b, std::int64_t n) {
  int bad = 0;
  for (std::int64_t i = 0; i < n; ++i)
    bad += std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i]);
  return bad;
}

const std::vector<std::int64_t> kBatchSizes = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 70};

// Each row alone, then the first `size` rows together for every batch size: bit-equal rows.
void expect_rows_invariant(const LinearOp& op, const std::string& what) {
  const std::int64_t K = op.in_features(), N = op.out_features(), M = kBatchSizes.back();
  const std::vector<float> x = random_vector(static_cast<std::size_t>(M * K), 7);
  std::vector<float> alone(static_cast<std::size_t>(M * N));
  for (std::int64_t r = 0; r < M; ++r) op.forward(x.data() + r * K, 1, alone.data() + r * N);
  for (std::int64_t size : kBatchSizes) {
    // The same rows at every offset of a larger batch too (rows before them change nothing).
    for (std::int64_t offset : {std::int64_t{0}, M - size}) {
      std::vector<float> y(static_cast<std::size_t>(size * N));
      op.forward(x.data() + offset * K, size, y.data());
      EXPECT_EQ(count_bit_differences(y.data(), alone.data() + offset * N, size * N), 0)
          << what << ": batch of " << size << " rows at offset " << offset;
    }
  }
}

TEST_F(BatchInvariance, DenseLinear) {
  for (auto [n, k] : {std::pair<std::int64_t, std::int64_t>{61, 83}, {100, 576}, {7, 5}}) {
    auto w = std::make_shared<std::vector<float>>(random_vector(static_cast<std::size_t>(n * k), 3, 0.05f));
    expect_rows_invariant(DenseLinear(w, n, k), fmt::format("dense {}x{}", n, k));
    expect_rows_invariant(DenseLinear(w, n, k, random_vector(static_cast<std::size_t>(n), 4)),
                          fmt::format("dense {}x{} + bias", n, k));
  }
}

TEST_F(BatchInvariance, AtomAndWeightOnlyLinear) {
  const std::int64_t n = 37, k = 384;
  const std::vector<float> w = random_vector(static_cast<std::size_t>(n * k), 5, 0.05f);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(6));
  for (auto format : {NumberFormat::kInt4, NumberFormat::kFp4, NumberFormat::kInt8}) {
    const auto q = quant::quantize_weights_rtn(w, n, perm, format == NumberFormat::kInt8 ? 0 : 128,
                                               format == NumberFormat::kInt8 ? k : 128, format, 0.9f);
    expect_rows_invariant(AtomLinear(q, 0.9f, "atom"), std::string("atom ") + quant::format_name(format));
    if (format != NumberFormat::kInt8) {
      expect_rows_invariant(WeightOnlyLinear(q, "w4a16"),
                            std::string("weight-only ") + quant::format_name(format));
    }
  }
}

TEST_F(BatchInvariance, AttentionDoesNotDependOnChunking) {
  AttentionShape shape;
  shape.num_heads = 4;
  shape.num_kv_heads = 2;
  shape.head_dim = 16;
  shape.scale = 0.25f;
  const std::int64_t T = 70, qw = 4 * 16, kw = 2 * 16;
  const auto q = random_vector(static_cast<std::size_t>(T * qw), 11);
  const auto k = random_vector(static_cast<std::size_t>(T * kw), 12);
  const auto v = random_vector(static_cast<std::size_t>(T * kw), 13);
  auto run = [&](const std::vector<std::int64_t>& chunks) {
    std::vector<float> out(static_cast<std::size_t>(T * qw));
    std::int64_t start = 0;
    for (std::int64_t n : chunks) {
      // One chunk at a time, beside an unrelated sequence (another batch member).
      AttentionJob job{q.data() + start * qw, k.data(), v.data(), out.data() + start * qw, n, start};
      std::vector<float> other_out(static_cast<std::size_t>(3 * qw));
      AttentionJob other{q.data(), k.data(), v.data(), other_out.data(), 3, 0};
      const std::vector<AttentionJob> jobs = {other, job};
      causal_attention(jobs, shape);
      start += n;
    }
    return out;
  };
  const auto whole = run({T});
  for (const auto& chunks :
       std::vector<std::vector<std::int64_t>>{{1, 69}, {35, 35}, {17, 23, 30}, {64, 6}, {33, 1, 36}}) {
    const auto got = run(chunks);
    EXPECT_EQ(count_bit_differences(got.data(), whole.data(), T * qw), 0)
        << "chunks of " << chunks[0] << "...";
  }
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 61;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 2;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  return c;
}

// With an fp32 KV cache, and with UINT8 / UINT4 caches, whose codes attention reads in place.
void expect_model_logits_invariant(const KvRowStoreFactory& kv_factory, const std::string& what) {
  SCOPED_TRACE(what);
  const ModelConfig c = tiny_config();
  LlamaModel model(test::random_llama_weights(c, 41));
  model.set_kv_store_factory(kv_factory);
  std::mt19937_64 rng(42);
  std::vector<std::int32_t> prompt(40);
  for (auto& t : prompt) t = static_cast<std::int32_t>(rng() % c.vocab_size);
  // Alone: the whole prompt in one step, then 5 decode steps.
  KvCache alone_cache = model.new_cache();
  std::vector<std::vector<float>> alone;
  alone.push_back(model.forward(prompt, alone_cache));
  for (int i = 0; i < 5; ++i) {
    const std::int32_t next = static_cast<std::int32_t>(i * 7 % c.vocab_size);
    alone.push_back(model.forward(std::span<const std::int32_t>(&next, 1), alone_cache));
  }
  // In batches: the prompt in chunks of 13, 1, 26 beside other sequences, then the same decode steps.
  for (int others : {1, 3, 8}) {
    KvCache cache = model.new_cache();
    std::vector<KvCache> other_caches;
    for (int o = 0; o < others; ++o) other_caches.push_back(model.new_cache());
    std::vector<std::int32_t> other_tokens(static_cast<std::size_t>(5 + others));
    for (auto& t : other_tokens) t = static_cast<std::int32_t>(rng() % c.vocab_size);
    std::vector<float> last;
    auto step = [&](std::span<const std::int32_t> tokens) {
      std::vector<SequenceInput> batch;
      for (int o = 0; o < others; ++o)
        batch.push_back({std::span(other_tokens).first(static_cast<std::size_t>(1 + o)),
                         &other_caches[static_cast<std::size_t>(o)], false});
      batch.push_back({tokens, &cache, false});
      std::vector<float> logits;
      model.forward(batch, logits);
      last.assign(logits.end() - c.vocab_size, logits.end());
    };
    step(std::span(prompt).subspan(0, 13));
    step(std::span(prompt).subspan(13, 1));
    step(std::span(prompt).subspan(14));
    EXPECT_EQ(count_bit_differences(last.data(), alone[0].data(), c.vocab_size), 0)
        << others << " others, prompt";
    for (int i = 0; i < 5; ++i) {
      const std::int32_t next = static_cast<std::int32_t>(i * 7 % c.vocab_size);
      step(std::span<const std::int32_t>(&next, 1));
      EXPECT_EQ(
          count_bit_differences(last.data(), alone[static_cast<std::size_t>(i + 1)].data(), c.vocab_size), 0)
          << others << " others, decode step " << i;
    }
  }
}

TEST_F(BatchInvariance, ModelLogitsDoNotDependOnBatchOrChunks) {
  expect_model_logits_invariant(make_f32_kv_row_store, "f32 KV cache");
  expect_model_logits_invariant(make_u8_kv_row_store, "u8 KV cache");
  expect_model_logits_invariant(make_u4_kv_row_store, "u4 KV cache");
}

}  // namespace
}  // namespace atom::cpu
