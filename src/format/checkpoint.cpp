#include "format/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/ranges.h>

#include "common/error.h"
#include "common/half.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace atom::quant {

namespace {

const char* const kMethods[] = {"atom", "w4a4-rtn", "w8a8-smoothquant", "w4a16"};
const char* const kKvCaches[] = {"f16", "u8", "u4"};

template <class T>
T get_field(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key)) fail("{}: quantization_config has no field '{}'", source, key);
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: quantization_config field '{}' has the wrong type ({})", source, key, json_snippet(j.at(key)));
  }
}

double json_float(float v) { return std::stod(fmt::format("{}", v)); }  // 0.9f -> 0.9, not 0.899999976

bool one_of(const std::string& s, const auto& list) {
  for (const char* item : list) {
    if (s == item) return true;
  }
  return false;
}

std::vector<std::uint8_t> to_bytes(const std::vector<float>& data, DType dtype, const std::string& name) {
  std::vector<std::uint8_t> out;
  switch (dtype) {
    case DType::F32:
      out.resize(data.size() * 4);
      std::memcpy(out.data(), data.data(), out.size());
      return out;
    case DType::F16:
    case DType::BF16: {
      out.resize(data.size() * 2);
      for (std::size_t i = 0; i < data.size(); ++i) {
        const std::uint16_t h = dtype == DType::F16 ? fp32_to_fp16(data[i]) : fp32_to_bf16(data[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      return out;
    }
    default: fail("checkpoint: tensor '{}' cannot be written as {} (F32, F16 or BF16)", name, dtype_name(dtype));
  }
}

template <class T>
std::span<const std::uint8_t> byte_span(const std::vector<T>& v) {
  return {reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * sizeof(T)};
}

const TensorView& expect_tensor(const TensorStore& store, const std::string& name, DType dtype,
                                const std::vector<std::int64_t>& shape) {
  const TensorView& t = store.get(name);
  if (t.dtype != dtype || t.shape != shape) {
    fail("{} in '{}': expected {} {}, found {} {}", name, t.file, dtype_name(dtype), fmt::join(shape, "x"),
         dtype_name(t.dtype), fmt::join(t.shape, "x"));
  }
  return t;
}

template <class T>
std::vector<T> copy_tensor(const TensorView& t) {
  std::vector<T> out(static_cast<std::size_t>(t.numel()));
  if (t.nbytes != out.size() * sizeof(T)) fail("{} in '{}': {} bytes for {} elements", t.name, t.file, t.nbytes, out.size());
  std::memcpy(out.data(), t.data, t.nbytes);  // data may be unaligned
  return out;
}

void write_text_file(const std::string& path, const std::string& text, bool overwrite) {
  if (!overwrite && std::filesystem::exists(path)) fail("'{}' already exists; refusing to overwrite it", path);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write '{}'", tmp);
    out << text;
    if (!out.flush()) fail("cannot write '{}'", tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

nlohmann::json AtomQuantConfig::to_json() const {
  return {
      {"quant_method", "atom"},
      {"atom_version", kAtomCheckpointVersion},
      {"method", method},
      {"weight_algorithm", weight_algorithm},
      {"format", format_name(format)},
      {"quantized_activations", quantized_activations},
      {"group_size", group_size},
      {"act_clip", json_float(act_clip)},
      {"weight_clip", json_float(weight_clip)},
      {"kv_cache", kv_cache},
      {"smoothquant", smoothquant},
      {"smoothquant_alpha", json_float(smoothquant_alpha)},
      {"calibration", {{"samples", calibration_samples}, {"seq_len", calibration_seq_len}, {"data", calibration_data}}},
  };
}

AtomQuantConfig AtomQuantConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: quantization_config is not an object", source);
  if (get_field<std::string>(j, "quant_method", source) != "atom") {
    fail("{}: quantization_config.quant_method is '{}', not 'atom'", source,
         json_snippet(j.at("quant_method")));
  }
  const int version = get_field<int>(j, "atom_version", source);
  if (version != kAtomCheckpointVersion) {
    fail("{}: Atom checkpoint version {} (this build reads version {})", source, version, kAtomCheckpointVersion);
  }
  AtomQuantConfig c;
  c.method = get_field<std::string>(j, "method", source);
  if (!one_of(c.method, kMethods)) fail("{}: unknown quantization method '{}'", source, c.method);
  c.weight_algorithm = get_field<std::string>(j, "weight_algorithm", source);
  if (c.weight_algorithm != "gptq" && c.weight_algorithm != "rtn") {
    fail("{}: unknown weight_algorithm '{}' (gptq or rtn)", source, c.weight_algorithm);
  }
  const std::string what = source + ": quantization_config.format";
  c.format = parse_format(get_field<std::string>(j, "format", source).c_str(), what.c_str());
  c.quantized_activations = get_field<bool>(j, "quantized_activations", source);
  c.group_size = get_field<std::int64_t>(j, "group_size", source);
  c.act_clip = get_field<float>(j, "act_clip", source);
  c.weight_clip = get_field<float>(j, "weight_clip", source);
  c.kv_cache = get_field<std::string>(j, "kv_cache", source);
  c.smoothquant_alpha = get_field<float>(j, "smoothquant_alpha", source);
  c.smoothquant = j.contains("smoothquant") ? get_field<bool>(j, "smoothquant", source)
                                            : c.method == "w8a8-smoothquant";
  if (j.contains("calibration")) {
    const auto& cal = j.at("calibration");
    c.calibration_samples = get_field<std::int64_t>(cal, "samples", source);
    c.calibration_seq_len = get_field<std::int64_t>(cal, "seq_len", source);
    c.calibration_data = get_field<std::string>(cal, "data", source);
  }
  if (c.group_size < 0 || (c.group_size > 0 && c.group_size % 2 != 0)) {
    fail("{}: group_size {} must be 0 (per channel) or a positive even number", source, c.group_size);
  }
  if (!(c.act_clip > 0.0f && c.act_clip <= 1.0f) || !(c.weight_clip > 0.0f && c.weight_clip <= 1.0f)) {
    fail("{}: clip ratios act_clip={} weight_clip={} must be in (0, 1]", source, c.act_clip, c.weight_clip);
  }
  if (!one_of(c.kv_cache, kKvCaches)) fail("{}: kv_cache '{}' (expected f16, u8 or u4)", source, c.kv_cache);
  if (!(c.smoothquant_alpha >= 0.0f && c.smoothquant_alpha <= 1.0f)) {
    fail("{}: smoothquant_alpha {} not in [0, 1]", source, c.smoothquant_alpha);
  }
  const bool weight_only = c.method == "w4a16";
  if (c.quantized_activations == weight_only) {
    fail("{}: method '{}' {} quantized activations", source, c.method, weight_only ? "has no" : "needs");
  }
  if ((c.method == "w8a8-smoothquant") != (c.format == NumberFormat::kInt8)) {
    fail("{}: method '{}' does not use format {}", source, c.method, format_name(c.format));
  }
  return c;
}

void write_atom_checkpoint(const std::string& dir, const ModelConfig& model, const HfConfigExtras& extras,
                           const AtomQuantConfig& quant, const std::map<std::string, QuantizedLinearWeights>& linears,
                           const std::vector<DenseTensor>& dense, bool overwrite,
                           const std::map<std::string, std::string>& extra_metadata) {
  AtomQuantConfig::from_json(quant.to_json(), "checkpoint to write");  // the same checks as a reader's
  std::vector<SafetensorsWriteTensor> tensors;
  for (const auto& [name, q] : linears) {
    validate(q, name.c_str());
    if (q.format != quant.format) {
      fail("{}: format {} differs from the checkpoint's {}", name, format_name(q.format), format_name(quant.format));
    }
    if (q.group != quant.group_for(q.k_normal)) {
      fail("{}: group size {} differs from the checkpoint's {}", name, q.group, quant.group_for(q.k_normal));
    }
    const DType code_dtype = format_is_packed(q.format) ? DType::U8 : DType::I8;
    tensors.push_back({name + ".qweight", code_dtype, {q.n, format_row_bytes(q.format, q.k_normal)}, byte_span(q.packed)});
    tensors.push_back({name + ".scales", DType::F16, {q.n, q.k_normal / q.group}, byte_span(q.scales)});
    if (q.n_outliers > 0) {
      tensors.push_back({name + ".qweight_outlier", DType::I8, {q.n, q.n_outliers}, byte_span(q.outliers)});
      tensors.push_back({name + ".scales_outlier", DType::F16, {q.n}, byte_span(q.outlier_scales)});
    }
    tensors.push_back({name + ".perm", DType::I32, {q.k()}, byte_span(q.perm)});
  }
  std::vector<std::vector<std::uint8_t>> storage;
  storage.reserve(dense.size());
  for (const DenseTensor& t : dense) {
    std::int64_t numel = 1;
    for (auto d : t.shape) numel *= d;
    if (numel != static_cast<std::int64_t>(t.data.size())) {
      fail("checkpoint: tensor '{}' has {} values for shape {}", t.name, t.data.size(), fmt::join(t.shape, "x"));
    }
    storage.push_back(to_bytes(t.data, t.dtype, t.name));
    tensors.push_back({t.name, t.dtype, t.shape, storage.back()});
  }
  std::filesystem::create_directories(dir);
  nlohmann::json config = hf_config_json(model, extras);
  config["quantization_config"] = quant.to_json();
  std::map<std::string, std::string> metadata = extra_metadata;
  metadata["format"] = "pt";
  metadata["atom_version"] = std::to_string(kAtomCheckpointVersion);
  write_safetensors(dir + "/model.safetensors", tensors, metadata, overwrite);
  write_text_file(dir + "/config.json", config.dump(2) + "\n", overwrite);
}

bool has_atom_quant_config(const nlohmann::json& config_json) {
  return config_json.is_object() && config_json.contains("quantization_config") &&
         config_json["quantization_config"].is_object() &&
         config_json["quantization_config"].value("quant_method", std::string()) == "atom";
}

AtomQuantConfig read_atom_quant_config(const nlohmann::json& config_json, const std::string& source) {
  if (!config_json.is_object() || !config_json.contains("quantization_config")) {
    fail("{}: no quantization_config (not an Atom checkpoint)", source);
  }
  return AtomQuantConfig::from_json(config_json.at("quantization_config"), source);
}

bool has_quantized_linear(const TensorStore& store, const std::string& name) {
  return store.contains(name + ".qweight");
}

QuantizedLinearWeights load_quantized_linear(const TensorStore& store, const std::string& name,
                                             const AtomQuantConfig& quant) {
  const TensorView& qw = store.get(name + ".qweight");
  const DType code_dtype = format_is_packed(quant.format) ? DType::U8 : DType::I8;
  if (qw.shape.size() != 2 || qw.dtype != code_dtype || qw.shape[0] <= 0 || qw.shape[1] <= 0) {
    fail("{}.qweight in '{}': expected a 2-D {} tensor for format {}, found {} {}", name, qw.file,
         dtype_name(code_dtype), format_name(quant.format), dtype_name(qw.dtype), fmt::join(qw.shape, "x"));
  }
  QuantizedLinearWeights q;
  q.format = quant.format;
  q.n = qw.shape[0];
  q.k_normal = format_is_packed(q.format) ? 2 * qw.shape[1] : qw.shape[1];
  q.group = quant.group_for(q.k_normal);
  if (q.k_normal % q.group != 0) {
    fail("{}.qweight in '{}': {} normal channels are not a multiple of the group size {}", name, qw.file, q.k_normal,
         q.group);
  }
  const TensorView& perm = store.get(name + ".perm");
  if (perm.shape.size() != 1 || perm.dtype != DType::I32 || perm.shape[0] < q.k_normal) {
    fail("{}.perm in '{}': expected I32 [K >= {}], found {} {}", name, perm.file, q.k_normal, dtype_name(perm.dtype),
         fmt::join(perm.shape, "x"));
  }
  q.n_outliers = perm.shape[0] - q.k_normal;
  q.packed = copy_tensor<std::uint8_t>(qw);
  q.scales = copy_tensor<std::uint16_t>(expect_tensor(store, name + ".scales", DType::F16, {q.n, q.k_normal / q.group}));
  if (q.n_outliers > 0) {
    q.outliers = copy_tensor<std::int8_t>(expect_tensor(store, name + ".qweight_outlier", DType::I8, {q.n, q.n_outliers}));
    q.outlier_scales = copy_tensor<std::uint16_t>(expect_tensor(store, name + ".scales_outlier", DType::F16, {q.n}));
  } else if (store.contains(name + ".qweight_outlier")) {
    fail("{}.qweight_outlier present but .perm has no channels beyond the {} normal ones", name, q.k_normal);
  }
  q.perm = copy_tensor<std::int32_t>(perm);
  validate(q, name.c_str());
  return q;
}

}  // namespace atom::quant
