// Atom checkpoints laid out for tensor parallelism (docs/FORMAT.md, "Tensor-parallel checkpoints"): o_proj and
// down_proj quantized per shard of their input channels, the checkpoint's tensors and recipe, and the CPU ranks
// of such a model against the same model on one device (bit for bit) and against the TP 1 checkpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/quantizer_ops.h"
#include "backend/cpu/tensor_parallel_llama.h"
#include "common/error.h"
#include "dist/in_process_communicator.h"
#include "format/atom_checkpoint.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/quantizer.h"
#include "test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

namespace fs = std::filesystem;

// The tiny model with heads and intermediate channels wide enough for two shards of whole 32-channel groups plus
// outliers: o_proj's shards are 64 channels (32 normal + 32 outliers), down_proj's 128 (96 + 32).
ModelConfig tp_config() {
  ModelConfig c = test::tiny_config();
  c.hidden_size = 128;
  c.head_dim = 32;
  c.intermediate_size = 256;
  return c;
}

QuantRecipe tp_recipe(int tp) {
  QuantRecipe r = test::tiny_recipe("atom-w4a4");
  r.kv_center_keys = true;  // as atom quantize makes them: the centering vectors are split with the KV heads
  r.tensor_parallel = tp;
  return r;
}

struct Quantized {
  QuantizedModel model;
  QuantizeReport report;
};

Quantized quantize(int tp) {
  const ModelConfig c = tp_config();
  QuantizeOptions o;
  o.show_progress = false;
  Quantized q;
  q.model = quantize_model(model_source(test::tiny_weights(c, 5)), test::tiny_tokens(600, 0, c.vocab_size, 9),
                           tp_recipe(tp), o, &q.report);
  return q;
}

const Quantized& tp1() {
  static const Quantized q = quantize(1);
  return q;
}
const Quantized& tp2() {
  static const Quantized q = quantize(2);
  return q;
}

using test::error_of;

const std::vector<std::int32_t>& prompt() {
  static const std::vector<std::int32_t> tokens = test::tiny_tokens(40, 0, tp_config().vocab_size, 31);
  return tokens;
}

// Prefill logits of the prompt, then two decode steps' logits, concatenated.
std::vector<float> run(const cpu::LlamaModel& model) {
  cpu::KvCache cache = model.new_cache();
  std::vector<float> out = model.forward(prompt(), cache, true);
  for (std::int32_t t : {7, 11}) {
    const std::vector<float> step = model.forward(std::vector<std::int32_t>{t}, cache);
    out.insert(out.end(), step.begin(), step.end());
  }
  return out;
}

TEST(TensorParallelQuant, RowParallelLayersGetTheirOutliersAndGroupsPerShard) {
  const Quantized& q = tp2();
  for (std::size_t i = 0; i < q.model.layers.size(); ++i) {
    const QuantizedLayer& l = q.model.layers[i];
    ASSERT_TRUE(l.sharded());
    EXPECT_EQ(l.o_proj.weights.n, 0);  // the layer's weights live in its shards
    for (const auto& [shards, k, outliers] : {std::tuple{&l.o_proj_shards, 64, 32}, std::tuple{&l.down_proj_shards, 128, 32}}) {
      ASSERT_EQ(shards->size(), 2u);
      for (const QuantizedLinear& s : *shards) {
        EXPECT_EQ(s.weights.n, 128);
        EXPECT_EQ(s.weights.k(), k);  // the shard's own channels, perm local to them
        EXPECT_EQ(s.weights.n_outliers, outliers);
        EXPECT_EQ(s.weights.k_normal % s.weights.group, 0);
        std::vector<std::int32_t> sorted = s.weights.perm;
        std::sort(sorted.begin(), sorted.end());
        std::vector<std::int32_t> iota(static_cast<std::size_t>(k));
        std::iota(iota.begin(), iota.end(), 0);
        EXPECT_EQ(sorted, iota);
      }
    }
    // The whole input's order: shard 1's channels all after shard 0's, each shard's outliers at its end.
    const std::vector<std::int32_t> order = sharded_input_order(l.down_proj_shards);
    for (std::size_t j = 0; j < order.size(); ++j) EXPECT_EQ(order[j] / 128, static_cast<std::int32_t>(j / 128));
  }
  // Every shard's input was measured on its own; column-parallel layers are quantized as at TP 1 (layer 0's
  // q/k/v and gate/up see the same inputs either way).
  int shard_inputs = 0;
  for (const InputReport& r : q.report.inputs) shard_inputs += r.input.find(".tp_shards.") != std::string::npos;
  EXPECT_EQ(shard_inputs, 2 * 2 * 2);
  EXPECT_EQ(q.model.layers[0].q_proj.weights.packed, tp1().model.layers[0].q_proj.weights.packed);
  EXPECT_EQ(q.model.layers[0].q_proj.weights.perm, tp1().model.layers[0].q_proj.weights.perm);
}

// Each rank's o_proj and down_proj shard, on the integer path, against the format's reference product of the
// same shard (quantize_activations + atom_linear_reference), bit for bit.
TEST(TensorParallelQuant, EachRanksShardMatchesTheFormatReferenceBitForBit) {
  const QuantizedModel& m = tp2().model;
  dist::InProcessGroup group(2);
  std::mt19937_64 rng(3);
  for (int rank = 0; rank < 2; ++rank) {
    const auto model = build_cpu_model_rank(m, Execution::kInteger, group.communicator(rank));
    for (int li = 0; li < 2; ++li) {
      const QuantizedLayer& ql = m.layers[static_cast<std::size_t>(li)];
      for (const auto& [op, shard, order] :
           {std::tuple{model->layer(li).o_proj.get(), &ql.o_proj_shards[rank], cpu::InputOrder::kOriginal},
            std::tuple{model->layer(li).down_proj.get(), &ql.down_proj_shards[rank], cpu::InputOrder::kReordered}}) {
        const auto& local = dynamic_cast<const cpu::RowParallelLinear&>(*op).local();
        const QuantizedLinearWeights& w = shard->weights;
        const std::int64_t rows = 5, k = w.k();
        std::vector<float> x = test::normal_vector(rng, static_cast<std::size_t>(rows * k), 1.0f);
        for (std::int64_t r = 0; r < rows; ++r) x[static_cast<std::size_t>(r * k + w.perm[k - 1])] *= 20.0f;
        std::vector<float> y(static_cast<std::size_t>(rows * w.n));
        local.forward(x.data(), rows, y.data());
        // The reference gathers by perm itself: a reordered op's input is already gathered.
        std::vector<std::int32_t> identity(static_cast<std::size_t>(k));
        std::iota(identity.begin(), identity.end(), 0);
        const auto a = quantize_activations(x, rows, order == cpu::InputOrder::kOriginal ? w.perm : identity,
                                            w.n_outliers, w.group, m.recipe.act_format, m.recipe.a_clip);
        const std::vector<float> ref = atom_linear_reference(a, w);
        ASSERT_EQ(ref.size(), y.size());
        EXPECT_EQ(std::memcmp(ref.data(), y.data(), y.size() * sizeof(float)), 0) << "rank " << rank << " layer " << li;
      }
    }
  }
}

// Two ranks (threads, in-process all-reduce and all-gather) give the logits of the same sharded model on one
// device bit for bit: the column-parallel layers compute each output row as the whole layer does, the shards'
// partial sums are added in rank order by both, and batch-invariant mode makes the fp32 lm_head's rows
// independent of how many rows one product holds.
TEST(TensorParallelQuant, RanksGiveTheSingleDeviceLogitsBitForBit) {
  cpu::set_batch_invariant(true);
  const QuantizedModel& m = tp2().model;
  const std::vector<float> single = run(*build_cpu_model(m, Execution::kInteger));
  dist::InProcessGroup group(2);
  std::vector<std::vector<float>> ranks(2);
  dist::run_ranks(group, [&](dist::Communicator& comm) {
    const auto model = build_cpu_model_rank(m, Execution::kInteger, comm);
    EXPECT_EQ(model->cache_shape().num_kv_heads, 1);
    ranks[static_cast<std::size_t>(comm.rank())] = run(*model);
  });
  cpu::set_batch_invariant(false);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(ranks[static_cast<std::size_t>(r)].size(), single.size());
    EXPECT_EQ(std::memcmp(ranks[static_cast<std::size_t>(r)].data(), single.data(), single.size() * sizeof(float)), 0)
        << "rank " << r;
  }
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// The TP 2 layout is another W4A4 quantization of the same weights: only o_proj's and down_proj's channel
// grouping and outlier choice differ (per shard, twice the outlier channels in all). Its logits stay within the
// TP 1 checkpoint's own quantization error of fp32: relative L2 to the fp32 model at most 1.25x the TP 1
// error, and to the TP 1 logits at most 2x it (two errors of that size, not aligned).
TEST(TensorParallelQuant, ShardedLogitsAreCloseToTheSingleDeviceCheckpoint) {
  const cpu::LlamaModel fp(test::tiny_weights(tp_config(), 5));
  const std::vector<float> f = run(fp);
  const std::vector<float> a = run(*build_cpu_model(tp1().model, Execution::kInteger));
  const std::vector<float> b = run(*build_cpu_model(tp2().model, Execution::kInteger));
  const double e1 = relative_l2(a, f), e2 = relative_l2(b, f), e12 = relative_l2(b, a);
  std::printf("  relative L2 to fp32: TP 1 %.4f, TP 2 %.4f; TP 2 to TP 1 %.4f\n", e1, e2, e12);
  EXPECT_GT(e1, 0.0);
  EXPECT_LE(e2, 1.25 * e1);
  EXPECT_LE(e12, 2.0 * e1);
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("atom_tp_ckpt_test_{}", ::getpid());
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(TensorParallelQuant, CheckpointStoresTheShardsAndLoadsToTheSameLogits) {
  const QuantizedModel& m = tp2().model;
  TempDir tmp;
  save_atom_checkpoint(tmp.path.string(), m, {});
  const Checkpoint ckpt = open_checkpoint(tmp.path.string());
  const std::vector<std::string> names = ckpt.tensors->names();
  const auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  EXPECT_TRUE(has("model.layers.1.self_attn.o_proj.tp_shards.1.qweight"));
  EXPECT_TRUE(has("model.layers.0.mlp.down_proj.tp_shards.0.perm"));
  EXPECT_FALSE(has("model.layers.0.mlp.down_proj.qweight"));
  const QuantizedModel back = load_atom_checkpoint(ckpt);
  EXPECT_EQ(back.recipe.tensor_parallel, 2);
  EXPECT_EQ(back.recipe.to_json(), m.recipe.to_json());
  EXPECT_EQ(run(*cpu::load_cpu_model(ckpt)), [&] {
    auto built = build_cpu_model(m, Execution::kInteger);
    cpu::use_lm_head_precision(*built, cpu::lm_head_precision_from_env());  // as load_cpu_model does
    return run(*built);
  }());

  // A shard missing from the file is named.
  std::vector<std::vector<std::uint8_t>> bytes;
  std::vector<SafetensorsWriteTensor> kept;
  std::map<std::string, std::string> metadata;
  {
    const SafetensorsFile f((tmp.path / "model.safetensors").string());
    bytes.reserve(f.tensors().size());
    for (const TensorView& t : f.tensors()) {
      if (t.name.starts_with("model.layers.1.mlp.down_proj.tp_shards.1.")) continue;
      bytes.emplace_back(t.data, t.data + t.nbytes);
      kept.push_back({t.name, t.dtype, t.shape, bytes.back()});
    }
    metadata = f.metadata();
  }
  write_safetensors((tmp.path / "model.safetensors").string(), kept, metadata, true);
  const std::string error = error_of([&] { cpu::load_cpu_model(open_checkpoint(tmp.path.string())); });
  EXPECT_NE(error.find("model.layers.1.mlp.down_proj.tp_shards.1"), std::string::npos) << error;
}

TEST(TensorParallelQuant, SingleDeviceRecipesKeepTheirJsonAndRefuseRanks) {
  EXPECT_FALSE(tp1().model.recipe.to_json().contains("tensor_parallel"));  // TP 1 checkpoints are as before
  EXPECT_EQ(tp2().model.recipe.to_json().at("tensor_parallel"), 2);
  dist::InProcessGroup group(2);
  EXPECT_NE(error_of([&] { build_cpu_model_rank(tp1().model, Execution::kInteger, group.communicator(0)); })
                .find("quantized for tensor_parallel 1 cannot run on 2 ranks"),
            std::string::npos);
}

TEST(TensorParallelQuant, LayoutsThatCannotSplitAreRefusedByName) {
  // TP 4: o_proj's shards would be 32 channels, one group and no room for outliers.
  EXPECT_NE(error_of([&] { check_tensor_parallel_layout(tp_config(), tp_recipe(4)); })
                .find("tensor_parallel 4: o_proj's shards of 32 input channels"),
            std::string::npos)
      << error_of([&] { check_tensor_parallel_layout(tp_config(), tp_recipe(4)); });
  EXPECT_NE(error_of([&] { check_tensor_parallel_layout(tp_config(), tp_recipe(3)); }).find("num_heads 4"),
            std::string::npos);
  QuantRecipe r = tp_recipe(2);
  r.down_hadamard = true;
  EXPECT_NE(error_of([&] { r.validate(); }).find("down_hadamard"), std::string::npos);
  nlohmann::json j = tp_recipe(2).to_json();
  j["tensor_parallel"] = 0;
  EXPECT_NE(error_of([&] { QuantRecipe::from_json(j, "test"); }).find("'tensor_parallel' must be in [1, 1024], found 0"),
            std::string::npos);
}

}  // namespace
}  // namespace atom::quant
