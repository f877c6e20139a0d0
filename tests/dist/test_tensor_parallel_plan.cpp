#include <gtest/gtest.h>

#include <string>

#include "common/error.h"
#include "dist/tensor_parallel_plan.h"

namespace atom::dist {
namespace {

ModelConfig config(int heads, int kv_heads, int hidden, int inter, int vocab) {
  ModelConfig c;
  c.architecture = "llama";
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.hidden_size = hidden;
  c.head_dim = hidden / heads;
  c.intermediate_size = inter;
  c.vocab_size = vocab;
  c.num_layers = 2;
  return c;
}

std::string error_of(const ModelConfig& c, int world) {
  try {
    check_tensor_parallel(c, world);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TensorParallelPlan, SmolLm2SplitsThreeWaysAndRefusesTwoByName) {
  const ModelConfig smol = config(9, 3, 576, 1536, 49152);  // SmolLM2-135M
  EXPECT_EQ(error_of(smol, 3), "");
  EXPECT_NE(error_of(smol, 2).find("num_heads 9 is not divisible by the tensor-parallel degree 2"),
            std::string::npos) << error_of(smol, 2);
  const TensorParallelShard s = tensor_parallel_shard(smol, 3, 1);
  EXPECT_EQ(s.heads, (ChannelRange{3, 6}));
  EXPECT_EQ(s.kv_heads, (ChannelRange{1, 2}));
  EXPECT_EQ(s.kv_head_replicas, 1);
  EXPECT_EQ(s.intermediate, (ChannelRange{512, 1024}));
  EXPECT_EQ(s.q_channels(64), (ChannelRange{192, 384}));
  EXPECT_EQ(s.kv_channels(64), (ChannelRange{64, 128}));
  EXPECT_EQ(s.vocab, (ChannelRange{16384, 32768}));
  const ModelConfig local = s.local_config(smol);
  EXPECT_EQ(local.num_heads, 3);
  EXPECT_EQ(local.num_kv_heads, 1);
  EXPECT_EQ(local.intermediate_size, 512);
  EXPECT_EQ(local.hidden_size, 576);
  EXPECT_EQ(local.vocab_size, 49152);
}

TEST(TensorParallelPlan, RefusalsNameTheValue) {
  EXPECT_NE(error_of(config(8, 8, 512, 1000, 100), 3).find("num_heads 8"), std::string::npos);
  EXPECT_NE(error_of(config(8, 8, 512, 1001, 100), 2).find("intermediate_size 1001"), std::string::npos);
  EXPECT_NE(error_of(config(12, 6, 768, 1200, 100), 4).find("num_kv_heads 6 and the tensor-parallel degree 4"),
            std::string::npos);
  EXPECT_NE(error_of(config(12, 4, 768, 1200, 100), 6).find("num_kv_heads 4"), std::string::npos);
  EXPECT_EQ(error_of(config(12, 3, 768, 1200, 100), 6), "");  // 3 KV heads, each on 2 of 6 ranks
  EXPECT_NE(error_of(config(8, 8, 512, 1000, 100), 0).find("at least 1, found 0"), std::string::npos);
  EXPECT_THROW(tensor_parallel_shard(config(8, 8, 512, 1000, 100), 2, 2), Error);
}

TEST(TensorParallelPlan, FewerKvHeadsThanRanksReplicatesTheHeadOfEachRanksQueries) {
  const ModelConfig c = config(32, 2, 4096, 11008, 32000);  // 16 query heads per KV head
  for (int r = 0; r < 8; ++r) {
    const TensorParallelShard s = tensor_parallel_shard(c, 8, r);
    EXPECT_EQ(s.kv_head_replicas, 4);
    EXPECT_EQ(s.kv_heads.size(), 1);
    const int group = c.num_heads / c.num_kv_heads;
    for (std::int64_t h = s.heads.begin; h < s.heads.end; ++h) EXPECT_EQ(h / group, s.kv_heads.begin) << r;
  }
}

TEST(TensorParallelPlan, ShardsTileEveryDimensionExactlyOnce) {
  const ModelConfig c = config(16, 4, 1024, 2816, 1001);  // vocab not a multiple of the degree
  for (int world : {1, 2, 4, 8, 16}) {
    std::int64_t heads = 0, inter = 0, vocab = 0;
    for (int r = 0; r < world; ++r) {
      const TensorParallelShard s = tensor_parallel_shard(c, world, r);
      EXPECT_EQ(s.heads.begin, heads);
      EXPECT_EQ(s.intermediate.begin, inter);
      EXPECT_EQ(s.vocab.begin, vocab);
      EXPECT_LE(s.vocab.size(), s.vocab_per_rank);
      heads = s.heads.end;
      inter = s.intermediate.end;
      vocab = s.vocab.end;
    }
    EXPECT_EQ(heads, c.num_heads);
    EXPECT_EQ(inter, c.intermediate_size);
    EXPECT_EQ(vocab, c.vocab_size);
  }
}

}  // namespace
}  // namespace atom::dist
