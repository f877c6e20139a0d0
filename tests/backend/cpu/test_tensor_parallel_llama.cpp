// A tensor-parallel fp32 Llama (one rank per thread, the in-process communicator) against the unsharded model.
//
// The bound: a sharded forward differs from the unsharded one only by the order of fp32 additions. o_proj and
// down_proj sum their input channels per rank, then across ranks in rank order (the unsharded sgemm sums them
// in its own blocks), and the slices of the column-parallel layers may be blocked differently by sgemm; the
// embedding's all-reduce and the lm_head's all-gather are exact. Each reassociated dot product of length K
// moves by at most about K * 2^-24 * sum|x_k w_k| (a few ulps of the typical output in practice); the layers
// carry that forward without large gain on these models, so logits agree to 1e-5 of the largest logit
// (relative max) while a shard mix-up (a wrong head, channel or vocabulary block) moves them by O(1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "backend/cpu/llama_model.h"
#include "backend/cpu/tensor_parallel_llama.h"
#include "common/error.h"
#include "dist/in_process_communicator.h"
#include "goldens.h"
#include "io/checkpoint.h"
#include "model/sampler.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

constexpr double kTolerance = 1e-5;  // relative max, see above

struct Run {
  std::vector<float> prefill;                // [prompt, vocab]
  std::vector<std::vector<float>> decode;    // [vocab] per decode token
  std::vector<float> batched;                // a two-sequence batch's logits
};

// Prefill of `prompt` (all logits), decode of `next` one token at a time, then one batch of two sequences on
// fresh caches (a prefill beside a decode).
Run run_model(const LlamaModel& model, const std::vector<std::int32_t>& prompt,
              const std::vector<std::int32_t>& next) {
  Run run;
  KvCache cache = model.new_cache();
  run.prefill = model.forward(prompt, cache, /*all_logits=*/true);
  for (std::int32_t t : next) run.decode.push_back(model.forward(std::vector<std::int32_t>{t}, cache));
  KvCache a = model.new_cache(), b = model.new_cache();
  const std::vector<std::int32_t> first(prompt.begin(), prompt.begin() + 3);
  model.forward(first, b);
  const std::vector<std::int32_t> one = {prompt[3]};
  const SequenceInput batch[] = {{prompt, &a, true}, {one, &b, false}};
  model.forward(batch, run.batched);
  return run;
}

// The same calls on every rank of a `world`-rank group; returns each rank's results.
std::vector<Run> run_tensor_parallel(const LlamaWeights& weights, int world, const std::vector<std::int32_t>& prompt,
                                     const std::vector<std::int32_t>& next) {
  dist::InProcessGroup group(world);
  std::vector<Run> runs(static_cast<std::size_t>(world));
  dist::run_ranks(group, [&](dist::Communicator& comm) {
    const LlamaModel rank = make_tensor_parallel_rank(weights, comm);
    const auto shard = dist::tensor_parallel_shard(weights.config, world, comm.rank());
    EXPECT_EQ(rank.cache_shape().num_kv_heads, shard.kv_heads.size());  // a cache of this rank's KV heads only
    runs[static_cast<std::size_t>(comm.rank())] = run_model(rank, prompt, next);
  });
  return runs;
}

double relative_max(const std::vector<float>& ours, const std::vector<float>& ref) {
  EXPECT_EQ(ours.size(), ref.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    diff = std::max(diff, std::fabs(double(ours[i]) - ref[i]));
    scale = std::max(scale, std::fabs(double(ref[i])));
  }
  return diff / scale;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Every world size checks: every rank holds the same logits bit for bit, and they are the unsharded ones to
// kTolerance. Returns the largest error seen.
double expect_sharded_matches(const LlamaWeights& weights, const std::vector<int>& worlds,
                              const std::vector<std::int32_t>& prompt, const std::string& what) {
  const LlamaModel reference{LlamaWeights(weights)};
  const auto vocab = static_cast<std::size_t>(weights.config.vocab_size);
  // Decode the reference's greedy continuation, fed to every run alike.
  std::vector<std::int32_t> next;
  {
    KvCache cache = reference.new_cache();
    std::vector<float> logits = reference.forward(prompt, cache);
    for (int i = 0; i < 3; ++i) {
      next.push_back(argmax(std::span<const float>(logits.data(), vocab)));
      logits = reference.forward(std::vector<std::int32_t>{next.back()}, cache);
    }
  }
  const Run ref = run_model(reference, prompt, next);
  double worst = 0;
  for (int world : worlds) {
    const std::vector<Run> runs = run_tensor_parallel(weights, world, prompt, next);
    for (int r = 1; r < world; ++r) {
      const Run& a = runs[0];
      const Run& b = runs[static_cast<std::size_t>(r)];
      EXPECT_TRUE(same_bits(a.prefill, b.prefill) && same_bits(a.batched, b.batched)) << what << " rank " << r;
      for (std::size_t i = 0; i < next.size(); ++i) EXPECT_TRUE(same_bits(a.decode[i], b.decode[i])) << what;
    }
    const Run& run = runs[0];
    double e = relative_max(run.prefill, ref.prefill);
    for (std::size_t i = 0; i < next.size(); ++i) e = std::max(e, relative_max(run.decode[i], ref.decode[i]));
    e = std::max(e, relative_max(run.batched, ref.batched));
    EXPECT_LE(e, kTolerance) << what << " TP " << world;
    std::printf("  %s TP %d: max |sharded - unsharded| / max |logit| = %.2e\n", what.c_str(), world, e);
    worst = std::max(worst, e);
  }
  return worst;
}

LlamaWeights load_weights(const std::string& path) {
  const Checkpoint checkpoint = open_checkpoint(path);
  return load_llama_weights(checkpoint.config, *checkpoint.tensors);
}

const std::vector<std::int32_t> kPrompt = {1, 17, 42, 99, 5, 63, 120, 7, 33, 64, 2, 90};

TEST(TensorParallelLlama, TinyGqaModelSplitsKvHeadsThenReplicatesThem) {
  // 4 query heads, 2 KV heads: TP 2 splits the KV heads, TP 4 replicates each on two ranks.
  const LlamaWeights w = load_weights(test::model_data_dir() + "/tiny_llama_gqa");
  expect_sharded_matches(w, {1, 2, 4}, kPrompt, "tiny_llama_gqa");
}

TEST(TensorParallelLlama, TinyLlama3ModelWithOneKvHead) {
  const LlamaWeights w = load_weights(test::model_data_dir() + "/tiny_llama3_rope");
  expect_sharded_matches(w, {2, 4}, kPrompt, "tiny_llama3_rope");
}

TEST(TensorParallelLlama, BiasesTiedEmbeddingsAndAVocabularyTheRanksDoNotDivide) {
  ModelConfig c;
  c.architecture = "qwen2";
  c.vocab_size = 127;  // blocks of 32 at TP 4: the last rank holds 31 rows and one padding row
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 12;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  LlamaWeights w = test::random_llama_weights(c, 5);
  std::mt19937_64 rng(6);
  for (LayerWeights& l : w.layers) l.o_bias = test::random_vector(rng, 48, 0.3f);  // added once, after the sum
  expect_sharded_matches(w, {2, 4}, kPrompt, "random qwen2 with biases");
}

TEST(TensorParallelLlama, RefusesADegreeThatDoesNotDivideTheHeadsByName) {
  const LlamaWeights w = load_weights(test::model_data_dir() + "/tiny_llama_gqa");
  dist::InProcessGroup group(3);
  try {
    make_tensor_parallel_rank(w, group.communicator(0));
    FAIL() << "TP 3 of 4 heads was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_heads 4 is not divisible by the tensor-parallel degree 3"),
              std::string::npos) << e.what();
  }
}

TEST(TensorParallelLlama, SmolLm2RunsOnThreeRanks) {
  if (test::smollm2_unavailable()) GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1";
  const LlamaWeights w = load_weights(test::smollm2_gguf_path());  // 9 heads, 3 KV heads: TP 3, not 2
  const std::vector<std::int32_t> prompt = {1, 504, 3458, 282, 4649, 314, 253, 1345};
  expect_sharded_matches(w, {3}, prompt, "SmolLM2-135M");
  dist::InProcessGroup two(2);
  EXPECT_THROW(make_tensor_parallel_rank(w, two.communicator(0)), Error);
}

}  // namespace
}  // namespace atom::cpu
