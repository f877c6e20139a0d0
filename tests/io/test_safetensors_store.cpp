// Hugging Face checkpoint directories as a TensorStore: single file, sharded index, and broken indexes.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/half.h"
#include "io/hf_store.h"
#include "io/safetensors.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "atom_hf_store_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    return;
  }
  ADD_FAILURE() << "no atom::Error thrown";
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Tensors named by `names`, each F32 [2, 3] holding base + 0.5 * i where base is the tensor's position.
void write_f32_shard(const std::string& path, const std::vector<std::string>& names) {
  std::vector<std::vector<float>> values;
  std::vector<SafetensorsWriteTensor> tensors;
  for (std::size_t k = 0; k < names.size(); ++k) {
    values.emplace_back();
    for (int i = 0; i < 6; ++i) values.back().push_back(static_cast<float>(k) * 10 + 0.5f * i);
  }
  for (std::size_t k = 0; k < names.size(); ++k)
    tensors.push_back({names[k], DType::F32, {2, 3},
                       {reinterpret_cast<const std::uint8_t*>(values[k].data()), values[k].size() * 4}});
  write_safetensors(path, tensors, {}, /*overwrite=*/true);
}

std::vector<float> expected_f32(int position) {
  std::vector<float> out;
  for (int i = 0; i < 6; ++i) out.push_back(static_cast<float>(position) * 10 + 0.5f * i);
  return out;
}

std::string index_json(const std::vector<std::pair<std::string, std::string>>& weight_map) {
  std::string entries;
  for (const auto& [tensor, shard] : weight_map)
    entries += fmt::format("{}\"{}\": \"{}\"", entries.empty() ? "" : ", ", tensor, shard);
  return fmt::format(R"({{"metadata": {{"total_size": 0}}, "weight_map": {{{}}}}})", entries);
}

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

// Two shards: a, b in the first, c in the second; the index as given.
void write_sharded(const TempDir& dir, const std::vector<std::pair<std::string, std::string>>& weight_map,
                   const std::vector<std::string>& shard1 = {"a", "b"},
                   const std::vector<std::string>& shard2 = {"c"}) {
  write_f32_shard(dir.file(kShard1), shard1);
  write_f32_shard(dir.file(kShard2), shard2);
  write_text(dir.file("model.safetensors.index.json"), index_json(weight_map));
}

const std::vector<std::pair<std::string, std::string>> kGoodMap = {{"a", kShard1}, {"b", kShard1}, {"c", kShard2}};

TEST(HfStore, SingleFileMixedDTypesLoadAsF32) {
  TempDir dir;
  std::vector<std::uint16_t> embed_bf16, head_f16;
  std::vector<float> embed, head, norm = {1.0f, -2.0f, 0.25f};
  for (int i = 0; i < 12; ++i) {
    embed.push_back((i - 6) * 0.125f);
    head.push_back((i - 3) * 0.75f);
    embed_bf16.push_back(fp32_to_bf16(embed.back()));
    head_f16.push_back(fp32_to_fp16(head.back()));
  }
  auto bytes = [](const auto& v) {
    return std::span(reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * sizeof(v[0]));
  };
  const std::vector<SafetensorsWriteTensor> tensors = {
      {"model.embed_tokens.weight", DType::BF16, {4, 3}, bytes(embed_bf16)},
      {"lm_head.weight", DType::F16, {4, 3}, bytes(head_f16)},
      {"model.norm.weight", DType::F32, {3}, bytes(norm)},
  };
  write_safetensors(dir.file("model.safetensors"), tensors);

  const auto store = open_hf_tensor_store(dir.str());
  auto names = store->names();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}));
  EXPECT_EQ(store->load_f32("model.embed_tokens.weight", {4, 3}), embed);
  EXPECT_EQ(store->load_f32("lm_head.weight", {4, 3}), head);
  EXPECT_EQ(store->load_f32("model.norm.weight"), norm);
  EXPECT_EQ(store->get("model.norm.weight").file, dir.file("model.safetensors"));
  EXPECT_FALSE(store->contains("model.layers.0.mlp.up_proj.weight"));
  expect_error([&] { store->get("model.layers.0.mlp.up_proj.weight"); },
               {dir.file("model.safetensors"), "model.layers.0.mlp.up_proj.weight"});
  expect_error([&] { store->load_f32("model.norm.weight", {4}); }, {"model.norm.weight", "[3]", "[4]"});
}

TEST(HfStore, ShardedCheckpointFindsEveryTensorInItsShard) {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  const auto store = open_hf_tensor_store(dir.str());
  EXPECT_EQ(store->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(store->load_f32("a", {2, 3}), expected_f32(0));
  EXPECT_EQ(store->load_f32("b", {2, 3}), expected_f32(1));
  EXPECT_EQ(store->load_f32("c", {2, 3}), expected_f32(0));
  EXPECT_EQ(store->get("b").file, dir.file(kShard1));
  EXPECT_EQ(store->get("c").file, dir.file(kShard2));
  expect_error([&] { store->get("d"); }, {dir.str(), "2 shards", "'d'"});
}

TEST(HfStore, PrefersTheSingleFileOverAnIndex) {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  write_f32_shard(dir.file("model.safetensors"), {"only"});
  const auto store = open_hf_tensor_store(dir.str());
  EXPECT_EQ(store->names(), (std::vector<std::string>{"only"}));
}

TEST(HfStore, RejectsMissingOrEmptyDirectories) {
  TempDir dir;
  expect_error([&] { open_hf_tensor_store(dir.file("nope")); }, {dir.file("nope"), "not a directory"});
  expect_error([&] { open_hf_tensor_store(dir.str()); },
               {dir.str(), "neither model.safetensors nor model.safetensors.index.json"});
  write_f32_shard(dir.file("x.safetensors"), {"a"});
  expect_error([&] { open_hf_tensor_store(dir.file("x.safetensors")); }, {"x.safetensors", "not a directory"});
}

TEST(HfStore, RejectsAMissingShard) {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  fs::remove(dir.file(kShard2));
  expect_error([&] { open_hf_tensor_store(dir.str()); },
               {dir.file("model.safetensors.index.json"), dir.file(kShard2), "'c'", "does not exist"});
}

TEST(HfStore, RejectsTensorsListedButAbsent) {
  TempDir dir;
  auto map = kGoodMap;
  map.emplace_back("d", kShard2);
  write_sharded(dir, map);
  expect_error([&] { open_hf_tensor_store(dir.str()); },
               {"model.safetensors.index.json", "tensor 'd'", kShard2, "does not contain it"});
}

TEST(HfStore, RejectsTensorsInTwoShards) {
  TempDir dir;
  write_sharded(dir, kGoodMap, {"a", "b"}, {"c", "a"});
  expect_error([&] { open_hf_tensor_store(dir.str()); },
               {"model.safetensors.index.json", "tensor 'a'", "both", kShard1, kShard2});
}

TEST(HfStore, RejectsTensorsTheIndexDoesNotPlaceThere) {
  TempDir dir;
  write_sharded(dir, kGoodMap, {"a", "b", "extra"});
  expect_error([&] { open_hf_tensor_store(dir.str()); },
               {"model.safetensors.index.json", "tensor 'extra'", kShard1, "does not list"});
  write_sharded(dir, {{"a", kShard1}, {"b", kShard2}, {"c", kShard2}});
  expect_error([&] { open_hf_tensor_store(dir.str()); },
               {"tensor 'b'", std::string("listed in shard '") + kShard2, std::string("found in shard '") + kShard1});
}

TEST(HfStore, RejectsMalformedIndexes) {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  const std::string index = dir.file("model.safetensors.index.json");
  auto expect_index_error = [&](const std::string& text, std::initializer_list<std::string> parts) {
    write_text(index, text);
    SCOPED_TRACE(text);
    expect_error([&] { open_hf_tensor_store(dir.str()); }, {index});
    expect_error([&] { open_hf_tensor_store(dir.str()); }, parts);
  };
  expect_index_error(R"({"weight_map": {"a": )", {"invalid JSON at byte"});
  expect_index_error(R"([])", {"must be a JSON object"});
  expect_index_error(R"({"metadata": {}})", {"missing field 'weight_map'"});
  expect_index_error(R"({"weight_map": ["a"]})", {"field 'weight_map' must be an object"});
  expect_index_error(R"({"weight_map": {}})", {"lists no tensors"});
  expect_index_error(R"({"weight_map": {"a": 1}})", {"tensor 'a'", "must be a file name, found 1"});
  expect_index_error(R"({"weight_map": {"a": "../model.safetensors"}})", {"tensor 'a'", "../model.safetensors"});
  expect_index_error(R"({"weight_map": {"a": "/etc/passwd"}})", {"tensor 'a'", "/etc/passwd"});
  expect_index_error(R"({"weight_map": {"a": ""}})", {"tensor 'a'", "not a file name"});
}

TEST(HfStore, ACorruptShardIsNamed) {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  fs::resize_file(dir.file(kShard2), 20);
  expect_error([&] { open_hf_tensor_store(dir.str()); }, {dir.file(kShard2), "runs past the end of the file"});
}

}  // namespace
}  // namespace atom
