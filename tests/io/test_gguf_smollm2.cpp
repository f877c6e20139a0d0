// The demo checkpoint, SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_model.sh): metadata, config,
// dequantized tensors against gguf-py (tests/data/io/gguf/smollm2_refs.json), Q/K un-permutation.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/gguf_store.h"

namespace atom {
namespace {

const std::string kModelPath =
    std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

class SmolLM2Gguf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kModelPath)) return;
    file_ = std::make_shared<const GgufFile>(kModelPath);
    store_ = make_gguf_tensor_store(file_).release();
  }
  static void TearDownTestSuite() {
    delete store_;
    store_ = nullptr;
    file_.reset();
  }
  void SetUp() override {
    if (file_) return;
    const char* skip = std::getenv("ATOM_SKIP_MODEL_TESTS");
    if (skip && std::string(skip) == "1")
      GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1 and " << kModelPath << " is absent";
    FAIL() << kModelPath << " is missing: run scripts/fetch_model.sh (or set ATOM_SKIP_MODEL_TESTS=1)";
  }

  static std::vector<float> raw_f32(const TensorView& t) {
    std::vector<float> out(static_cast<std::size_t>(t.numel()));
    dequantize_to_f32(t.dtype, t.data, out.data(), out.size());
    return out;
  }

  static std::shared_ptr<const GgufFile> file_;
  static TensorStore* store_;
};

std::shared_ptr<const GgufFile> SmolLM2Gguf::file_;
TensorStore* SmolLM2Gguf::store_ = nullptr;

// sum_i bits(v[i]) * (2i + 1) mod 2^64, as scripts/dev/make_dequant_refs.py computes it.
std::uint64_t bits_checksum(const std::vector<float>& v) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < v.size(); ++i)
    sum += std::uint64_t{std::bit_cast<std::uint32_t>(v[i])} * (2 * i + 1);
  return sum;
}

// convert_hf_to_gguf.py's permute, literally (reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)).
std::vector<float> llama_cpp_permute(const std::vector<float>& w, std::int64_t rows, std::int64_t cols,
                                     int n_head) {
  const std::int64_t A = n_head, B = 2, C = rows / n_head / 2, D = cols;
  std::vector<float> out(w.size());
  for (std::int64_t a = 0; a < A; ++a)
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t d = 0; d < D; ++d)
          out[((a * C + c) * B + b) * D + d] = w[((a * B + b) * C + c) * D + d];
  return out;
}

TEST_F(SmolLM2Gguf, MetadataAndConfig) {
  const GgufFile& f = *file_;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.get_u32("llama.block_count"), 30u);
  EXPECT_EQ(f.get_u32("llama.embedding_length"), 576u);
  EXPECT_EQ(f.get_u32("llama.attention.head_count"), 9u);
  EXPECT_EQ(f.get_u32("llama.attention.head_count_kv"), 3u);
  // Tokenizer metadata, for the tokenizer.
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "smollm");
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 49152u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(tokens[1], "<|im_start|>");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(f.get_array_values<std::int32_t>("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(f.get_u32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_FALSE(f.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(f.get_u32("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_NE(f.get_string("tokenizer.chat_template").find("<|im_start|>"), std::string::npos);

  const ModelConfig c = model_config_from_gguf(f);
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0f);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c.tie_word_embeddings);  // no output.weight
  EXPECT_FALSE(c.attention_bias);
}

TEST_F(SmolLM2Gguf, TensorsAreViewsOfTheMapping) {
  const auto names = store_->names();
  EXPECT_EQ(names.size(), 272u);
  std::map<std::string, int> by_dtype;
  const auto* begin = file_->mapped_file().data();
  const auto* end = begin + file_->mapped_file().size();
  for (const auto& name : names) {
    const TensorView& t = store_->get(name);
    by_dtype[std::string(dtype_name(t.dtype))]++;
    EXPECT_GE(t.data, begin + file_->data_offset()) << name;
    EXPECT_LE(t.data + t.nbytes, end) << name;
  }
  EXPECT_EQ(by_dtype["Q4_1"], 210);
  EXPECT_EQ(by_dtype["F32"], 61);
  EXPECT_EQ(by_dtype["Q8_0"], 1);
  EXPECT_EQ(store_->get("model.embed_tokens.weight").shape, (std::vector<std::int64_t>{49152, 576}));
  EXPECT_EQ(store_->get("model.layers.0.self_attn.k_proj.weight").shape,
            (std::vector<std::int64_t>{192, 576}));
  EXPECT_EQ(store_->get("model.layers.29.mlp.down_proj.weight").shape,
            (std::vector<std::int64_t>{576, 1536}));
  EXPECT_EQ(store_->get("model.layers.29.mlp.gate_proj.weight").dtype, DType::Q4_1);
  EXPECT_FALSE(store_->contains("lm_head.weight"));
}

TEST_F(SmolLM2Gguf, DequantizationMatchesGgufPy) {
  std::ifstream in(std::string(ATOM_TEST_DATA_DIR) + "/io/gguf/smollm2_refs.json");
  ASSERT_TRUE(in) << "missing smollm2_refs.json (scripts/dev/make_dequant_refs.py --model ...)";
  const auto refs = nlohmann::json::parse(in);
  ASSERT_GE(refs.at("tensors").size(), 6u);
  for (const auto& ref : refs.at("tensors")) {
    const std::string gguf_name = ref.at("name");
    SCOPED_TRACE(gguf_name);
    const TensorView& t = store_->get(hf_tensor_name(gguf_name));
    EXPECT_EQ(dtype_name(t.dtype), ref.at("dtype").get<std::string>());
    const auto values = raw_f32(t);  // GGUF row order, as gguf-py returns it
    EXPECT_EQ(fmt::format("{:016x}", bits_checksum(values)), ref.at("checksum").get<std::string>());
    const auto first = ref.at("first").get<std::vector<float>>();
    for (std::size_t i = 0; i < first.size(); ++i) EXPECT_EQ(values[i], first[i]) << i;
  }
}

TEST_F(SmolLM2Gguf, QKUnpermuteRoundTrips) {
  for (const int layer : {0, 17, 29}) {
    for (const auto& [proj, heads] : {std::pair{"q_proj", 9}, std::pair{"k_proj", 3}}) {
      const std::string name = fmt::format("model.layers.{}.self_attn.{}.weight", layer, proj);
      SCOPED_TRACE(name);
      const TensorView& t = store_->get(name);
      const auto hf = store_->load_f32(name, t.shape);
      const auto stored = raw_f32(t);
      EXPECT_NE(hf, stored);
      EXPECT_EQ(llama_cpp_permute(hf, t.shape[0], t.shape[1], heads), stored);
    }
    const std::string v = fmt::format("model.layers.{}.self_attn.v_proj.weight", layer);
    EXPECT_EQ(store_->load_f32(v), raw_f32(store_->get(v)));
  }
}

TEST_F(SmolLM2Gguf, EveryTensorLoads) {
  const auto start = std::chrono::steady_clock::now();
  std::size_t elements = 0;
  for (const auto& name : store_->names()) {
    const auto values = store_->load_f32(name);
    elements += values.size();
    std::size_t non_finite = 0;
    for (const float x : values) non_finite += !std::isfinite(x);
    EXPECT_EQ(non_finite, 0u) << name;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(elements, 134515008u);  // SmolLM2-135M, tied embeddings
  std::cout << fmt::format(
      "[ info ] load_f32 of all {} tensors: {} elements in {:.2f} s ({:.0f} M elements/s)\n",
      store_->names().size(), elements, seconds, elements / seconds / 1e6);
}

}  // namespace
}  // namespace atom
