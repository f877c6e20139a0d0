#include "format/atom_checkpoint.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include <fmt/ranges.h>

#include "common/error.h"
#include "common/half.h"
#include "common/staged_dir.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace atom::quant {

namespace fs = std::filesystem;

namespace {

constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kLinears[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                    "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                    "mlp.down_proj"};

struct LinearShape {
  std::int64_t n = 0, k = 0;
};
LinearShape linear_shape(const ModelConfig& c, const std::string& linear) {
  const std::int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const std::int64_t q_dim = std::int64_t{c.num_heads} * c.head_dim,
                     kv_dim = std::int64_t{c.num_kv_heads} * c.head_dim;
  if (linear == "self_attn.q_proj") return {q_dim, hidden};
  if (linear == "self_attn.k_proj" || linear == "self_attn.v_proj") return {kv_dim, hidden};
  if (linear == "self_attn.o_proj") return {hidden, q_dim};
  if (linear == "mlp.gate_proj" || linear == "mlp.up_proj") return {inter, hidden};
  ATOM_CHECK(linear == "mlp.down_proj");
  return {hidden, inter};
}

QuantizedLinear& linear_of(QuantizedLayer& l, const std::string& suffix) {
  if (suffix == "self_attn.q_proj") return l.q_proj;
  if (suffix == "self_attn.k_proj") return l.k_proj;
  if (suffix == "self_attn.v_proj") return l.v_proj;
  if (suffix == "self_attn.o_proj") return l.o_proj;
  if (suffix == "mlp.gate_proj") return l.gate_proj;
  if (suffix == "mlp.up_proj") return l.up_proj;
  ATOM_CHECK(suffix == "mlp.down_proj");
  return l.down_proj;
}

// Row-parallel linears of a tensor-parallel layout: shard r of o_proj / down_proj is "<name>.tp_shards.<r>".
bool row_parallel(const std::string& suffix) { return suffix == "self_attn.o_proj" || suffix == "mlp.down_proj"; }
std::vector<QuantizedLinear>& shards_of(QuantizedLayer& l, const std::string& suffix) {
  return suffix == "self_attn.o_proj" ? l.o_proj_shards : l.down_proj_shards;
}
const std::vector<QuantizedLinear>& shards_of(const QuantizedLayer& l, const std::string& suffix) {
  return suffix == "self_attn.o_proj" ? l.o_proj_shards : l.down_proj_shards;
}
std::string shard_name(const std::string& linear, int shard) { return fmt::format("{}.tp_shards.{}", linear, shard); }

// KV centering vectors (docs/FORMAT.md, "KV centering"), F32 [num_kv_heads * head_dim] per layer.
constexpr const char* kKeyCenter = "self_attn.k_cache_center";
constexpr const char* kValueCenter = "self_attn.v_cache_center";

std::string kv_cache_name(int kv_bits) { return kv_bits == 4 ? "u4" : kv_bits == 8 ? "u8" : "f16"; }
int kv_bits_of(const std::string& kv_cache) { return kv_cache == "u4" ? 4 : kv_cache == "u8" ? 8 : 16; }

void write_json_file(const fs::path& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) fail("cannot write '{}'", path.string());
}

// The recipe a quantization_config describes, for checkpoints without the "atom" metadata (written by
// another tool through format/checkpoint.h): what running the model needs is all there.
QuantRecipe recipe_of(const AtomQuantConfig& q) {
  QuantRecipe r;
  r.preset = q.method;
  r.weight_format = r.act_format = q.format;
  r.quantize_activations = q.quantized_activations;
  r.group = q.group_size;
  r.outliers = q.method == "atom" ? -1 : 0;
  r.a_clip = q.act_clip;
  r.w_clip = q.weight_clip;
  r.gptq = q.weight_algorithm == "gptq";
  r.kv_bits = kv_bits_of(q.kv_cache);
  r.smoothquant = q.smoothquant;
  r.smooth_alpha = r.smoothquant ? q.smoothquant_alpha : 0.5f;
  if (q.calibration_samples > 0) r.calib_windows = q.calibration_samples;
  if (q.calibration_seq_len > 1) r.calib_len = q.calibration_seq_len;
  return r;
}

// The fields of the metadata recipe that running the model depends on must match quantization_config.
void check_agreement(const QuantRecipe& r, const AtomQuantConfig& q, const std::string& file) {
  const QuantRecipe c = recipe_of(q);
  const auto mismatch = [&](const char* field, const auto& in_metadata, const auto& in_config) {
    fail("Atom checkpoint '{}': the '{}' metadata says {} = {}, config.json's quantization_config says {}",
         file, kAtomMetadataKey, field, in_metadata, in_config);
  };
  if (r.weight_format != c.weight_format)
    mismatch("weight_format", format_name(r.weight_format), format_name(c.weight_format));
  if (r.quantize_activations != c.quantize_activations) {
    mismatch("quantize_activations", r.quantize_activations, c.quantize_activations);
  }
  if (r.quantize_activations && r.act_format != c.act_format) {
    mismatch("act_format", format_name(r.act_format), format_name(c.act_format));
  }
  if (r.group != c.group) mismatch("group", r.group, c.group);
  if (r.a_clip != c.a_clip) mismatch("a_clip", r.a_clip, c.a_clip);
  if (r.w_clip != c.w_clip) mismatch("w_clip", r.w_clip, c.w_clip);
  if (r.gptq != c.gptq) mismatch("gptq", r.gptq, c.gptq);
  if (r.kv_bits != c.kv_bits) mismatch("kv_bits", r.kv_bits, c.kv_bits);
  if (r.smoothquant != c.smoothquant) mismatch("smoothquant", r.smoothquant, c.smoothquant);
}

std::vector<float> read_float_tensor(const TensorStore& store, const std::string& name,
                                     const std::vector<std::int64_t>& shape, std::set<std::string>& used,
                                     DType* dtype = nullptr) {
  used.insert(name);
  const TensorView& t = store.get(name);
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16) {
    fail("Atom checkpoint: tensor '{}' in '{}' has dtype {}, expected F32, F16 or BF16", name, t.file,
         dtype_name(t.dtype));
  }
  if (dtype) *dtype = t.dtype;
  return store.load_f32(name, shape);
}

void check_scales(const std::vector<std::uint16_t>& scales, const std::string& name) {
  for (std::size_t i = 0; i < scales.size(); ++i) {
    const float s = fp16_to_fp32(scales[i]);
    if (!std::isfinite(s) || s < 0.0f)
      fail("Atom checkpoint: tensor '{}' entry {} is {}, not a scale", name, i, s);
  }
}

// INT3 codes are stored in nibbles; one outside [-4, 3] is not an INT3 code.
void check_int3_codes(const std::vector<std::uint8_t>& packed, const std::string& name) {
  for (std::size_t i = 0; i < packed.size(); ++i) {
    for (int half = 0; half < 2; ++half) {
      const std::int8_t v = nibble_to_int4(static_cast<std::uint8_t>((packed[i] >> (4 * half)) & 0x0Fu));
      if (v < -4 || v > 3) {
        fail("Atom checkpoint: tensor '{}' holds {} at element {}, outside INT3 [-4, 3]", name, v,
             2 * i + half);
      }
    }
  }
}

}  // namespace

AtomQuantConfig atom_quant_config(const QuantRecipe& recipe, const std::string& calibration_data) {
  if (recipe.quantize_activations && recipe.act_format != recipe.weight_format) {
    fail("an Atom checkpoint has one number format; the recipe uses {} weights and {} activations",
         format_name(recipe.weight_format), format_name(recipe.act_format));
  }
  AtomQuantConfig q;
  if (!recipe.quantize_activations) {
    q.method = "w4a16";
  } else if (recipe.weight_format == NumberFormat::kInt8) {
    q.method = "w8a8-smoothquant";
  } else if (recipe.group == 0 && recipe.outliers == 0) {
    q.method = "w4a4-rtn";
  } else {
    q.method = "atom";
  }
  q.weight_algorithm = recipe.gptq ? "gptq" : "rtn";
  q.format = recipe.weight_format;
  q.quantized_activations = recipe.quantize_activations;
  q.group_size = recipe.group;
  q.act_clip = recipe.a_clip;
  q.weight_clip = recipe.w_clip;
  q.kv_cache = kv_cache_name(recipe.kv_bits);
  q.smoothquant = recipe.smoothquant;
  q.smoothquant_alpha = recipe.smoothquant ? recipe.smooth_alpha : 0.0f;
  if (recipe.needs_calibration()) {
    q.calibration_samples = recipe.calib_windows;
    q.calibration_seq_len = recipe.calib_len;
    q.calibration_data = calibration_data;
  }
  return q;
}

void save_atom_checkpoint(const std::string& dir, const QuantizedModel& model,
                          const AtomCheckpointFiles& files, bool force) {
  // Refuses an existing output without force; "OUT/" is "OUT" (the staging directory is its sibling).
  StagedDir staged(dir, force, "atom");
  model.recipe.validate();
  if (!model.recipe.has_integer_form()) {
    fail("a model with {} outliers has no checkpoint form (it exists for the ablation only)",
         outlier_precision_name(model.recipe.outlier_precision));
  }
  const ModelConfig& c = model.config;
  ATOM_CHECK(static_cast<int>(model.layers.size()) == c.num_layers);
  const AtomQuantConfig quant = atom_quant_config(model.recipe, files.calibration_data);

  std::map<std::string, QuantizedLinearWeights> linears;
  std::vector<DenseTensor> dense;
  dense.push_back(
      {"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, *model.embed_tokens, model.embed_dtype});
  dense.push_back({"model.norm.weight", {c.hidden_size}, model.final_norm, DType::F32});
  if (model.lm_head) {
    dense.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, *model.lm_head, model.lm_head_dtype});
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const QuantizedLayer& l = model.layers[static_cast<std::size_t>(i)];
    dense.push_back(
        {layer_tensor_name(i, "input_layernorm.weight"), {c.hidden_size}, l.input_norm, DType::F32});
    dense.push_back({layer_tensor_name(i, "post_attention_layernorm.weight"),
                     {c.hidden_size},
                     l.post_attention_norm,
                     DType::F32});
    const int tp = model.recipe.tensor_parallel;
    for (const char* suffix : kLinears) {
      const QuantizedLinear& q = linear_of(const_cast<QuantizedLayer&>(l), suffix);
      const std::string name = layer_tensor_name(i, suffix);
      const LinearShape shape = linear_shape(c, suffix);
      if (tp > 1 && row_parallel(suffix)) {
        const std::vector<QuantizedLinear>& shards = shards_of(l, suffix);
        if (static_cast<int>(shards.size()) != tp)
          fail("cannot save '{}': the recipe says tensor_parallel {}, the model holds {} shards", name, tp,
               shards.size());
        for (int r = 0; r < tp; ++r) {
          const QuantizedLinearWeights& w = shards[static_cast<std::size_t>(r)].weights;
          if (w.n != shape.n || w.k() * tp != shape.k)
            fail("cannot save '{}': shard {} is [{} x {}], {} shards of [{} x {}] need [{} x {}]", name, r, w.n,
                 w.k(), tp, shape.n, shape.k, shape.n, shape.k / tp);
          linears.emplace(shard_name(name, r), w);
        }
      } else {
        if (row_parallel(suffix) && l.sharded())
          fail("cannot save '{}': the model is sharded, the recipe says tensor_parallel 1", name);
        linears.emplace(name, q.weights);
      }
      if (!q.bias.empty()) dense.push_back({name + ".bias", {shape.n}, q.bias, DType::F32});
    }
    const std::int64_t kv_dim = std::int64_t{c.num_kv_heads} * c.head_dim;
    for (const auto& [on, center, suffix] :
         {std::tuple{model.recipe.kv_center_keys, &l.key_center, kKeyCenter},
          std::tuple{model.recipe.kv_center_values, &l.value_center, kValueCenter}}) {
      const std::string name = layer_tensor_name(i, suffix);
      if (on != !center->empty() || (on && static_cast<std::int64_t>(center->size()) != kv_dim)) {
        fail("cannot save '{}': the recipe says KV centering {}, the model holds {} values (expected {})", name,
             on ? "on" : "off", center->size(), on ? kv_dim : 0);
      }
      if (on) dense.push_back({name, {kv_dim}, *center, DType::F32});
    }
  }
  const nlohmann::json metadata = {{"format_version", kAtomCheckpointVersion},
                                   {"recipe", model.recipe.to_json()}};
  HfConfigExtras extras = files.config_extras;
  extras.torch_dtype = model.embed_dtype == DType::F16    ? "float16"
                       : model.embed_dtype == DType::BF16 ? "bfloat16"
                                                          : "float32";

  // Everything goes to the staging directory first: a failure leaves the output as it was.
  const fs::path tmp_dir = staged.staging();
  write_atom_checkpoint(tmp_dir.string(), c, extras, quant, linears, dense, /*overwrite=*/false,
                        {{kAtomMetadataKey, metadata.dump()}});
  if (files.tokenizer_json) write_json_file(tmp_dir / "tokenizer.json", *files.tokenizer_json);
  if (files.tokenizer_config_json)
    write_json_file(tmp_dir / "tokenizer_config.json", *files.tokenizer_config_json);
  staged.commit();
}

bool is_atom_checkpoint(const Checkpoint& checkpoint) {
  if (checkpoint.format != CheckpointFormat::HfDirectory) return false;
  if (has_atom_quant_config(read_json_file((fs::path(checkpoint.path) / "config.json").string())))
    return true;
  for (const std::string& name : checkpoint.tensors->names()) {
    if (name.ends_with(".qweight")) return true;
  }
  return false;
}

QuantizedModel load_atom_checkpoint(const Checkpoint& checkpoint, bool runs_online_transforms) {
  const fs::path dir(checkpoint.path);
  const std::string config_path = (dir / "config.json").string();
  if (checkpoint.format != CheckpointFormat::HfDirectory) {
    fail("'{}' is not an Atom checkpoint (a GGUF file; Atom checkpoints are model directories)",
         checkpoint.path);
  }
  const nlohmann::json config_json = read_json_file(config_path);
  if (!has_atom_quant_config(config_json)) {
    fail("Atom checkpoint '{}': config.json has no quantization_config with quant_method \"atom\"",
         checkpoint.path);
  }
  const AtomQuantConfig quant = read_atom_quant_config(config_json, config_path);  // checks atom_version

  QuantizedModel m;
  m.config = checkpoint.config;
  m.recipe = recipe_of(quant);
  const std::string weights_path = (dir / kWeightsFile).string();
  if (fs::exists(weights_path)) {
    const SafetensorsFile file(weights_path);
    const auto it = file.metadata().find(kAtomMetadataKey);
    if (it != file.metadata().end()) {
      const nlohmann::json meta =
          parse_json(it->second, fmt::format("'{}' metadata '{}'", weights_path, kAtomMetadataKey));
      if (!meta.is_object() || !meta.contains("format_version") ||
          !meta["format_version"].is_number_integer()) {
        fail("Atom checkpoint '{}': metadata '{}' has no integer format_version", weights_path,
             kAtomMetadataKey);
      }
      const int version = meta["format_version"].get<int>();
      if (version != kAtomCheckpointVersion) {
        fail("Atom checkpoint '{}': metadata '{}' format_version {} (this build reads version {})",
             weights_path, kAtomMetadataKey, version, kAtomCheckpointVersion);
      }
      if (!meta.contains("recipe"))
        fail("Atom checkpoint '{}': metadata '{}' has no recipe", weights_path, kAtomMetadataKey);
      m.recipe = QuantRecipe::from_json(
          meta["recipe"], fmt::format("'{}' metadata '{}' recipe", weights_path, kAtomMetadataKey));
      check_agreement(m.recipe, quant, weights_path);
    }
  }
  if (m.recipe.has_online_transform() && !runs_online_transforms) {
    fail(
        "Atom checkpoint '{}': its recipe applies online Hadamard transforms (qk_hadamard {}, "
        "down_hadamard {}) that this runtime does not implement",
        checkpoint.path, m.recipe.qk_hadamard, m.recipe.down_hadamard);
  }
  if (!m.recipe.has_integer_form()) {
    fail("Atom checkpoint '{}': {} outliers have no stored form", checkpoint.path,
         outlier_precision_name(m.recipe.outlier_precision));
  }

  const ModelConfig& c = m.config;
  try {
    m.recipe.kv_group_for(c.head_dim);
  } catch (const Error& e) {
    fail("Atom checkpoint '{}': {}", checkpoint.path, e.what());
  }
  const TensorStore& store = *checkpoint.tensors;
  std::set<std::string> used;
  const std::int64_t hidden = c.hidden_size, vocab = c.vocab_size;
  m.embed_tokens = std::make_shared<const std::vector<float>>(
      read_float_tensor(store, "model.embed_tokens.weight", {vocab, hidden}, used, &m.embed_dtype));
  m.final_norm = read_float_tensor(store, "model.norm.weight", {hidden}, used);
  if (!c.tie_word_embeddings) {
    m.lm_head = std::make_shared<const std::vector<float>>(
        read_float_tensor(store, "lm_head.weight", {vocab, hidden}, used, &m.lm_head_dtype));
  }
  for (int i = 0; i < c.num_layers; ++i) {
    QuantizedLayer l;
    l.input_norm = read_float_tensor(store, layer_tensor_name(i, "input_layernorm.weight"), {hidden}, used);
    l.post_attention_norm =
        read_float_tensor(store, layer_tensor_name(i, "post_attention_layernorm.weight"), {hidden}, used);
    const int tp = m.recipe.tensor_parallel;
    for (const char* suffix : kLinears) {
      const std::string name = layer_tensor_name(i, suffix);
      const LinearShape shape = linear_shape(c, suffix);
      QuantizedLinear& q = linear_of(l, suffix);
      // One linear, or (tensor-parallel row-parallel layers) tp shards of shape.k / tp input channels each.
      const auto load_part = [&](const std::string& part_name, std::int64_t k, QuantizedLinear& part) {
        part.weights = load_quantized_linear(store, part_name, quant);
        for (const char* tensor : {".qweight", ".scales", ".qweight_outlier", ".scales_outlier", ".perm"}) {
          used.insert(part_name + tensor);
        }
        if (part.weights.n != shape.n || part.weights.k() != k) {
          fail(
              "Atom checkpoint: '{}' is [{} x {}] (qweight rows x perm length), the model config needs [{} x "
              "{}]",
              part_name, part.weights.n, part.weights.k(), shape.n, k);
        }
        check_scales(part.weights.scales, part_name + ".scales");
        check_scales(part.weights.outlier_scales, part_name + ".scales_outlier");
        if (part.weights.format == NumberFormat::kInt3) check_int3_codes(part.weights.packed, part_name + ".qweight");
      };
      if (tp > 1 && row_parallel(suffix)) {
        if (shape.k % tp != 0)
          fail("Atom checkpoint: '{}' has {} input channels, not divisible by its recipe's tensor_parallel {}", name,
               shape.k, tp);
        std::vector<QuantizedLinear>& shards = shards_of(l, suffix);
        shards.resize(static_cast<std::size_t>(tp));
        for (int r = 0; r < tp; ++r) load_part(shard_name(name, r), shape.k / tp, shards[static_cast<std::size_t>(r)]);
      } else {
        load_part(name, shape.k, q);
      }
      const std::string s = suffix;
      const bool qkv = s == "self_attn.q_proj" || s == "self_attn.k_proj" || s == "self_attn.v_proj";
      const bool bias_allowed = (qkv && c.attention_bias) || s == "self_attn.o_proj";
      if (store.contains(name + ".bias")) {
        if (!bias_allowed)
          fail("Atom checkpoint: tensor '{}.bias' is present, but this linear has no bias", name);
        q.bias = read_float_tensor(store, name + ".bias", {shape.n}, used);
      } else if (qkv && c.attention_bias) {
        fail("Atom checkpoint: tensor '{}.bias' is missing (the config says attention_bias = true)", name);
      }
    }
    const std::int64_t kv_dim = std::int64_t{c.num_kv_heads} * c.head_dim;
    for (const auto& [on, center, suffix, rows] :
         {std::tuple{m.recipe.kv_center_keys, &l.key_center, kKeyCenter, "keys"},
          std::tuple{m.recipe.kv_center_values, &l.value_center, kValueCenter, "values"}}) {
      const std::string name = layer_tensor_name(i, suffix);
      if (!on) continue;  // present without the recipe's kv_centering: refused below as unexpected
      if (!store.contains(name)) {
        fail("Atom checkpoint '{}': tensor '{}' is missing (the recipe centers the KV cache's {})", checkpoint.path,
             name, rows);
      }
      const TensorView& t = store.get(name);
      if (t.shape != std::vector<std::int64_t>{kv_dim}) {
        fail("Atom checkpoint: tensor '{}' has shape [{}], expected [{}] (num_kv_heads {} x head_dim {})", name,
             fmt::join(t.shape, ", "), kv_dim, c.num_kv_heads, c.head_dim);
      }
      *center = read_float_tensor(store, name, {kv_dim}, used);
      for (std::size_t j = 0; j < center->size(); ++j) {
        if (!std::isfinite((*center)[j])) fail("Atom checkpoint: tensor '{}' entry {} is {}", name, j, (*center)[j]);
      }
    }
    if (l.k_proj.weights.perm != l.q_proj.weights.perm || l.v_proj.weights.perm != l.q_proj.weights.perm) {
      fail(
          "Atom checkpoint: layer {}: q_proj, k_proj and v_proj do not share one .perm (it is fused into "
          "input_layernorm)",
          i);
    }
    if (l.up_proj.weights.perm != l.gate_proj.weights.perm) {
      fail(
          "Atom checkpoint: layer {}: gate_proj and up_proj do not share one .perm (it is fused into "
          "post_attention_layernorm)",
          i);
    }
    m.layers.push_back(std::move(l));
  }
  for (const std::string& name : store.names()) {
    if (used.count(name) == 0) fail("Atom checkpoint '{}': unexpected tensor '{}'", checkpoint.path, name);
  }
  return m;
}

}  // namespace atom::quant
