#include "io/hf_store.h"

#include <filesystem>
#include <map>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

class HfTensorStore : public TensorStore {
 public:
  HfTensorStore(std::string description, std::vector<std::unique_ptr<SafetensorsFile>> files)
      : description_(std::move(description)), files_(std::move(files)) {
    for (const auto& file : files_)
      for (const auto& t : file->tensors()) {
        const bool inserted = by_name_.emplace(t.name, &t).second;
        ATOM_CHECK(inserted);  // duplicates are rejected before the store is built
      }
  }

  const TensorView* find(std::string_view name) const override {
    const auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : it->second;
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& file : files_)
      for (const auto& t : file->tensors()) out.push_back(t.name);
    return out;
  }

 protected:
  std::string describe() const override { return description_; }

 private:
  std::string description_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, const TensorView*> by_name_;
};

// A shard name from the index must stay inside the checkpoint directory.
void check_shard_name(const std::string& index_path, const std::string& tensor, const std::string& shard) {
  const fs::path p(shard);
  bool escapes = shard.empty() || p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  if (escapes)
    fail("index '{}': tensor '{}' is placed in shard \"{}\", which is not a file name inside the checkpoint "
         "directory", index_path, tensor, shard);
}

std::unique_ptr<TensorStore> open_sharded(const std::string& dir, const std::string& index_path) {
  const nlohmann::json index = read_json_file(index_path);
  if (!index.is_object()) fail("index '{}': must be a JSON object, found {}", index_path, json_snippet(index));
  const auto weight_map_it = index.find("weight_map");
  if (weight_map_it == index.end()) fail("index '{}': missing field 'weight_map'", index_path);
  if (!weight_map_it->is_object())
    fail("index '{}': field 'weight_map' must be an object, found {}", index_path, json_snippet(*weight_map_it));

  std::map<std::string, std::string> shard_of;  // tensor -> shard, as the index says
  std::map<std::string, std::string> first_tensor_of;  // shard -> a tensor placed there, for messages
  for (const auto& [tensor, shard] : weight_map_it->items()) {
    if (!shard.is_string())
      fail("index '{}': 'weight_map' entry for tensor '{}' must be a file name, found {}", index_path, tensor,
           json_snippet(shard));
    const auto& shard_name = shard.get_ref<const std::string&>();
    check_shard_name(index_path, tensor, shard_name);
    shard_of.emplace(tensor, shard_name);
    first_tensor_of.emplace(shard_name, tensor);
  }
  if (shard_of.empty()) fail("index '{}': 'weight_map' lists no tensors", index_path);

  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::vector<std::string>> holders;  // tensor -> shards that hold it
  for (const auto& [shard, tensor] : first_tensor_of) {
    const fs::path shard_path = fs::path(dir) / shard;
    std::error_code ec;
    if (!fs::is_regular_file(shard_path, ec))
      fail("index '{}': shard '{}' (holding tensor '{}' and maybe others) does not exist", index_path,
           shard_path.string(), tensor);
    files.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
    for (const auto& t : files.back()->tensors()) holders[t.name].push_back(shard);
  }

  for (const auto& [tensor, shards] : holders)
    if (shards.size() > 1)
      fail("index '{}': tensor '{}' appears in both shard '{}' and shard '{}'", index_path, tensor, shards[0],
           shards[1]);
  for (const auto& [tensor, shards] : holders) {
    const auto listed = shard_of.find(tensor);
    if (listed == shard_of.end())
      fail("index '{}': shard '{}' holds tensor '{}', which the index does not list", index_path, shards[0],
           tensor);
    if (listed->second != shards[0])
      fail("index '{}': tensor '{}' is listed in shard '{}' but found in shard '{}'", index_path, tensor,
           listed->second, shards[0]);
  }
  for (const auto& [tensor, shard] : shard_of)
    if (!holders.contains(tensor))
      fail("index '{}': tensor '{}' is listed in shard '{}', which does not contain it", index_path, tensor,
           shard);

  return std::make_unique<HfTensorStore>(
      fmt::format("safetensors checkpoint '{}' ({} shards)", dir, files.size()), std::move(files));
}

}  // namespace

std::unique_ptr<TensorStore> open_hf_tensor_store(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("'{}' is not a directory (expected a Hugging Face checkpoint directory holding {} or {})", dir,
         kSingleFile, kIndexFile);
  const fs::path single = fs::path(dir) / kSingleFile;
  if (fs::exists(single, ec)) {
    std::vector<std::unique_ptr<SafetensorsFile>> files;
    files.push_back(std::make_unique<SafetensorsFile>(single.string()));
    return std::make_unique<HfTensorStore>(fmt::format("safetensors checkpoint '{}'", single.string()),
                                           std::move(files));
  }
  const fs::path index = fs::path(dir) / kIndexFile;
  if (fs::exists(index, ec)) return open_sharded(dir, index.string());
  fail("checkpoint directory '{}' holds neither {} nor {}", dir, kSingleFile, kIndexFile);
}

}  // namespace atom
