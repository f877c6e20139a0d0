#include "io/gguf_store.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/error.h"

namespace atom {
namespace {

constexpr std::pair<std::string_view, std::string_view> kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

// blk.N.<gguf> -> model.layers.N.<hf>, followed by ".weight" or ".bias".
constexpr std::pair<std::string_view, std::string_view> kLayerNames[] = {
    {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
    {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},   {"attn_output", "self_attn.o_proj"},
    {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};

bool is_supported_architecture(std::string_view arch) { return arch == "llama" || arch == "qwen2"; }

std::string_view architecture_of(const GgufFile& file) {
  const std::string_view arch = file.architecture();
  if (!is_supported_architecture(arch)) {
    fail("GGUF file '{}': general.architecture '{}' is not supported (supported: llama, qwen2)", file.path(),
         arch);
  }
  return arch;
}

int head_count(const GgufFile& file, std::string_view arch) {
  return static_cast<int>(file.get_u32(fmt::format("{}.attention.head_count", arch)));
}

int kv_head_count(const GgufFile& file, std::string_view arch) {
  const std::string key = fmt::format("{}.attention.head_count_kv", arch);
  return file.find(key) ? static_cast<int>(file.get_u32(key)) : head_count(file, arch);
}

class GgufTensorStore : public TensorStore {
 public:
  explicit GgufTensorStore(std::shared_ptr<const GgufFile> file) : file_(std::move(file)) {
    const std::string_view arch = architecture_of(*file_);
    const bool permuted_qk = arch == "llama";  // qwen2 uses NEOX rotary: its converter does not permute
    // Head counts are read only when there are Q/K tensors to un-permute.
    const auto n_head = [&] { return head_count(*file_, arch); };
    const auto n_head_kv = [&] { return kv_head_count(*file_, arch); };

    views_.reserve(file_->tensors().size());
    for (const auto& info : file_->tensors()) {
      TensorView v;
      v.name = hf_tensor_name(info.name);
      v.dtype = info.dtype;
      v.shape.assign(info.ne.rbegin(), info.ne.rend());
      v.data = info.data;
      v.nbytes = info.nbytes;
      v.file = file_->path();
      int heads = 0;
      if (permuted_qk && v.name.starts_with("model.layers.")) {
        if (v.name.ends_with(".self_attn.q_proj.weight") || v.name.ends_with(".self_attn.q_proj.bias")) {
          heads = n_head();
        } else if (v.name.ends_with(".self_attn.k_proj.weight") ||
                   v.name.ends_with(".self_attn.k_proj.bias")) {
          heads = n_head_kv();
        }
      }
      views_.push_back(std::move(v));
      unpermute_heads_.push_back(heads);
      if (!index_.emplace(views_.back().name, views_.size() - 1).second) {
        fail("GGUF file '{}': tensor '{}' and another tensor both map to the name '{}'", file_->path(),
             info.name, views_.back().name);
      }
    }
  }

  const TensorView* find(std::string_view name) const override {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &views_[it->second];
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(views_.size());
    for (const auto& v : views_) out.push_back(v.name);
    return out;
  }

 protected:
  void fix_up_f32(const TensorView& t, std::vector<float>& data) const override {
    const auto it = index_.find(t.name);
    ATOM_CHECK(it != index_.end() && &views_[it->second] == &t);
    const int heads = unpermute_heads_[it->second];
    if (heads == 0) return;
    const std::int64_t rows = t.shape[0];
    const std::int64_t cols = t.shape.size() > 1 ? t.numel() / rows : 1;
    unpermute_llama_qk_rows(fmt::format("{}: tensor '{}'", describe(), t.name), data.data(), rows, cols,
                            heads);
  }

  std::string describe() const override { return fmt::format("GGUF file '{}'", file_->path()); }

 private:
  std::shared_ptr<const GgufFile> file_;
  std::vector<TensorView> views_;
  std::vector<int> unpermute_heads_;  // per view: head count of the llama Q/K row permutation, 0 = none
  // Keys view the names in views_, which are never moved after construction (reserved up front).
  std::unordered_map<std::string_view, std::size_t> index_;
};

}  // namespace

std::string hf_tensor_name(std::string_view gguf_name) {
  for (const auto& [gguf, hf] : kGlobalNames) {
    if (gguf_name == gguf) return std::string(hf);
  }
  constexpr std::string_view kBlock = "blk.";
  if (!gguf_name.starts_with(kBlock)) return std::string(gguf_name);
  const std::string_view rest = gguf_name.substr(kBlock.size());
  const std::size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::string(gguf_name);
  const std::string_view layer = rest.substr(0, dot);
  if (!std::all_of(layer.begin(), layer.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::string(gguf_name);
  }
  const std::string_view tail = rest.substr(dot + 1);  // "attn_q.weight"
  for (const auto& [gguf, hf] : kLayerNames) {
    for (const std::string_view suffix : {".weight", ".bias"}) {
      if (tail.size() == gguf.size() + suffix.size() && tail.starts_with(gguf) && tail.ends_with(suffix)) {
        return fmt::format("model.layers.{}.{}{}", layer, hf, suffix);
      }
    }
  }
  return std::string(gguf_name);
}

void unpermute_llama_qk_rows(std::string_view tensor, float* data, std::int64_t rows, std::int64_t cols,
                             int n_head) {
  if (n_head <= 0 || rows % (2 * static_cast<std::int64_t>(n_head)) != 0) {
    fail(
        "{}: cannot undo llama.cpp's Q/K row permutation: {} rows do not split into {} heads of an even "
        "number of rows",
        tensor, rows, n_head);
  }
  const std::int64_t head_rows = rows / n_head;
  const std::int64_t half = head_rows / 2;
  const auto row_bytes = static_cast<std::size_t>(cols) * sizeof(float);
  std::vector<float> head(static_cast<std::size_t>(head_rows * cols));
  for (std::int64_t h = 0; h < n_head; ++h) {
    float* base = data + h * head_rows * cols;
    std::copy(base, base + head_rows * cols, head.begin());
    for (std::int64_t i = 0; i < half; ++i) {
      for (std::int64_t s = 0; s < 2; ++s) {
        std::memcpy(base + (s * half + i) * cols, head.data() + (2 * i + s) * cols, row_bytes);
      }
    }
  }
}

ModelConfig model_config_from_gguf(const GgufFile& file) {
  const std::string_view arch = architecture_of(file);
  const auto key = [&](std::string_view name) { return fmt::format("{}.{}", arch, name); };
  const auto get_int = [&](std::string_view name) {
    const std::string k = key(name);
    const std::uint32_t v = file.get_u32(k);
    if (v > static_cast<std::uint32_t>(std::numeric_limits<int>::max())) {
      fail("GGUF file '{}': metadata key '{}' is {}, too large", file.path(), k, v);
    }
    return static_cast<int>(v);
  };

  ModelConfig c;
  c.architecture = std::string(arch);
  c.max_position_embeddings = get_int("context_length");
  c.hidden_size = get_int("embedding_length");
  c.num_layers = get_int("block_count");
  c.intermediate_size = get_int("feed_forward_length");
  c.num_heads = get_int("attention.head_count");
  c.num_kv_heads =
      file.find(key("attention.head_count_kv")) ? get_int("attention.head_count_kv") : c.num_heads;
  c.rms_norm_eps = file.get_f32(key("attention.layer_norm_rms_epsilon"));
  c.rope_theta = file.find(key("rope.freq_base")) ? file.get_f32(key("rope.freq_base")) : 10000.0f;

  // head_dim is attention.key_length (default hidden / heads, as llama.cpp); rotary must cover all of it.
  if (file.find(key("attention.key_length"))) {
    c.head_dim = get_int("attention.key_length");
  } else if (c.num_heads > 0 && c.hidden_size % c.num_heads == 0) {
    c.head_dim = c.hidden_size / c.num_heads;
  } else if (c.num_heads > 0) {
    fail("GGUF file '{}': {} {} is not divisible by {} {} and {} is not given", file.path(),
         key("embedding_length"), c.hidden_size, key("attention.head_count"), c.num_heads,
         key("attention.key_length"));
  }  // else 0 heads, which validate() reports
  if (file.find(key("rope.dimension_count")) && get_int("rope.dimension_count") != c.head_dim) {
    fail("GGUF file '{}': {} is {} but the head dimension is {}: partial rotary embeddings are not supported",
         file.path(), key("rope.dimension_count"), get_int("rope.dimension_count"), c.head_dim);
  }
  if (file.find(key("attention.value_length")) && get_int("attention.value_length") != c.head_dim) {
    fail("GGUF file '{}': {} is {} but {} is {}: different key and value head sizes are not supported",
         file.path(), key("attention.value_length"), get_int("attention.value_length"),
         key("attention.key_length"), c.head_dim);
  }
  if (const std::string k = key("rope.scaling.type"); file.find(k)) {
    const std::string_view type = file.get_string(k);
    if (type != "none") fail("GGUF file '{}': {} '{}' is not supported", file.path(), k, type);
  }
  if (file.find_tensor("rope_freqs.weight")) {
    fail(
        "GGUF file '{}': tensor 'rope_freqs.weight' (Llama 3.1-style rope scaling) is not supported in GGUF "
        "files; use the Hugging Face checkpoint",
        file.path());
  }

  const GgufTensorInfo* embed = file.find_tensor("token_embd.weight");
  if (!embed) fail("GGUF file '{}': tensor 'token_embd.weight' is missing", file.path());
  if (embed->ne.size() != 2 || embed->ne[0] != c.hidden_size) {
    fail("GGUF file '{}': tensor 'token_embd.weight' has ne [{}], expected [{}, vocab_size]", file.path(),
         fmt::join(embed->ne, ", "), c.hidden_size);
  }
  if (embed->ne[1] > std::numeric_limits<int>::max()) {
    fail("GGUF file '{}': vocabulary of {} tokens is too large", file.path(), embed->ne[1]);
  }
  c.vocab_size = static_cast<int>(embed->ne[1]);
  if (file.find(key("vocab_size")) && get_int("vocab_size") != c.vocab_size) {
    fail("GGUF file '{}': {} is {} but tensor 'token_embd.weight' has {} rows", file.path(),
         key("vocab_size"), get_int("vocab_size"), c.vocab_size);
  }
  c.tie_word_embeddings = file.find_tensor("output.weight") == nullptr;
  c.attention_bias = file.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.validate(fmt::format("GGUF file '{}'", file.path()));
  return c;
}

std::unique_ptr<TensorStore> make_gguf_tensor_store(std::shared_ptr<const GgufFile> file) {
  ATOM_CHECK(file != nullptr);
  return std::make_unique<GgufTensorStore>(std::move(file));
}

}  // namespace atom
