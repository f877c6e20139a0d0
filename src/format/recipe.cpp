#include "format/recipe.h"

#include <fmt/format.h>

#include <set>

#include "common/error.h"
#include "io/json_file.h"

namespace atom::quant {

namespace {

OutlierPrecision parse_outlier_precision(const std::string& text, const std::string& what) {
  if (text == "int8") return OutlierPrecision::kInt8;
  if (text == "fp16") return OutlierPrecision::kFp16;
  fail("{}: outlier_precision '{}' is not int8 or fp16", what, text);
}

int nominal_bits(NumberFormat f) {
  switch (f) {
    case NumberFormat::kInt3:
      return 3;
    case NumberFormat::kInt4:
      return 4;
    case NumberFormat::kInt8:
      return 8;
    case NumberFormat::kFp4:
      return 4;
  }
  return 0;
}

std::string format_tag(NumberFormat f) {
  return f == NumberFormat::kFp4 ? "fp4" : fmt::format("{}", nominal_bits(f));
}

}  // namespace

const char* outlier_precision_name(OutlierPrecision p) {
  return p == OutlierPrecision::kInt8 ? "int8" : "fp16";
}

void QuantRecipe::validate() const {
  const auto clip_ok = [](float c) { return c > 0.0f && c <= 1.0f; };
  if (group < 0) fail("quantization recipe: group size {} must be 0 (one group per row) or positive", group);
  if (group > 0 && format_is_packed(weight_format) && group % 2 != 0) {
    fail("quantization recipe: group size {} must be even for the 4-bit weight format", group);
  }
  if (outliers < -1)
    fail("quantization recipe: outliers {} must be -1 (default rule), 0 or positive", outliers);
  if (outlier_rule_group <= 0)
    fail("quantization recipe: outlier_rule_group {} must be positive", outlier_rule_group);
  if (!clip_ok(a_clip)) fail("quantization recipe: a_clip {} not in (0, 1]", a_clip);
  if (!clip_ok(w_clip)) fail("quantization recipe: w_clip {} not in (0, 1]", w_clip);
  if (!(percdamp > 0.0 && percdamp < 1.0)) fail("quantization recipe: percdamp {} not in (0, 1)", percdamp);
  if (gptq_block <= 0) fail("quantization recipe: gptq_block {} must be positive", gptq_block);
  if (kv_bits != 4 && kv_bits != 8 && kv_bits != 16)
    fail("quantization recipe: kv_bits {} is not 4, 8 or 16", kv_bits);
  if (kv_group_size < 0 || kv_group_size % 16 != 0) {
    fail("quantization recipe: kv_group_size {} must be 0 (one group per head) or a positive multiple of 16",
         kv_group_size);
  }
  if (kv_group_size != 0 && kv_bits == 16) {
    fail("quantization recipe: kv_group_size {} needs a quantized KV cache (kv_bits 4 or 8), got kv_bits 16",
         kv_group_size);
  }
  if (has_kv_centering() && kv_bits == 16) {
    fail("quantization recipe: KV centering needs a quantized KV cache (kv_bits 4 or 8), got kv_bits 16");
  }
  if (smoothquant && !(smooth_alpha >= 0.0f && smooth_alpha <= 1.0f)) {
    fail("quantization recipe: smooth_alpha {} not in [0, 1]", smooth_alpha);
  }
  if (calib_windows <= 0 || calib_len < 2) {
    fail("quantization recipe: calibration needs windows > 0 and length >= 2, got {} x {}", calib_windows,
         calib_len);
  }
  if (outlier_precision == OutlierPrecision::kFp16) {
    if (outliers == 0) fail("quantization recipe: fp16 outliers requested with outliers = 0");
    if (gptq)
      fail(
          "quantization recipe: fp16 outliers exist for the RTN ablation only; they do not combine with "
          "GPTQ");
    if (!quantize_activations) fail("quantization recipe: fp16 outliers need quantized activations");
    if (search_clip)
      fail("quantization recipe: fp16 outliers exist for the RTN ablation only; no clip search");
  }
  if (rotate_residual && !fold_norms) {
    fail(
        "quantization recipe: rotate_residual (R1) needs fold_norms (a norm weight does not commute with "
        "R1)");
  }
  if (smoothquant && has_rotation()) fail("quantization recipe: rotations do not combine with SmoothQuant");
  if (tensor_parallel < 1) fail("quantization recipe: tensor_parallel {} must be at least 1", tensor_parallel);
  if (tensor_parallel > 1 && down_hadamard) {
    fail("quantization recipe: down_hadamard (R4) mixes all of down_proj's input channels, so it does not split "
         "over tensor_parallel {} ranks", tensor_parallel);
  }
  if (!quantize_activations && smoothquant) {
    fail("quantization recipe: SmoothQuant migrates activation outliers; it needs quantized activations");
  }
}

std::int64_t QuantRecipe::outlier_count(std::int64_t k) const {
  if (outliers == 0) return 0;
  if (outliers > 0) {
    if (group > 0) {
      check_outlier_count(k, group, outliers, "quantization recipe");
    } else if (outliers >= k) {
      fail("quantization recipe: {} outlier channels for an input of {} channels", outliers, k);
    }
    return outliers;
  }
  return default_outlier_count(k, group > 0 ? group : outlier_rule_group);
}

std::string QuantRecipe::describe() const {
  std::string text = fmt::format("W{}A{} ", format_tag(weight_format),
                                 quantize_activations ? format_tag(act_format) : std::string("16"));
  text += group == 0 ? "per-row" : fmt::format("g{}", group);
  if (outliers != 0) {
    text += outliers < 0
                ? fmt::format(", default-count {} outliers", outlier_precision_name(outlier_precision))
                : fmt::format(", {} {} outliers", outliers, outlier_precision_name(outlier_precision));
  }
  if (quantize_activations) text += fmt::format(", a_clip {}", a_clip);
  text += fmt::format(", w_clip {}{}", w_clip, search_clip ? " (searched)" : "");
  text += gptq ? ", GPTQ" : ", RTN";
  if (smoothquant) text += fmt::format(", SmoothQuant alpha {}", smooth_alpha);
  text += kv_bits == 16 ? ", KV fp" : fmt::format(", KV{}", kv_bits);
  if (kv_group_size != 0) text += fmt::format(" g{}", kv_group_size);
  if (has_kv_centering()) text += fmt::format(" ({} centered)", kv_centering_name());
  if (has_rotation()) {
    std::string parts;
    const auto add = [&](bool on, const char* what) {
      if (on) parts += (parts.empty() ? "" : "+") + std::string(what);
    };
    add(fold_norms, "norms folded");
    add(rotate_residual, "R1");
    add(rotate_values, "R2");
    add(qk_hadamard, "Q/K Hadamard");
    add(down_hadamard, "R4");
    text += fmt::format(", rotations {} (seed {})", parts, rotation_seed);
  }
  if (tensor_parallel > 1) text += fmt::format(", tensor-parallel {}", tensor_parallel);
  return text;
}

nlohmann::json QuantRecipe::to_json() const {
  nlohmann::json j = {{"preset", preset},
                      {"weight_format", format_name(weight_format)},
                      {"quantize_activations", quantize_activations},
                      {"act_format", format_name(act_format)},
                      {"group", group},
                      {"outliers", outliers},
                      {"outlier_rule_group", outlier_rule_group},
                      {"outlier_precision", outlier_precision_name(outlier_precision)},
                      {"a_clip", a_clip},
                      {"w_clip", w_clip},
                      {"search_clip", search_clip},
                      {"gptq", gptq},
                      {"percdamp", percdamp},
                      {"gptq_block", gptq_block},
                      {"kv_bits", kv_bits},
                      {"smoothquant", smoothquant},
                      {"smooth_alpha", smooth_alpha},
                      {"calib_windows", calib_windows},
                      {"calib_len", calib_len},
                      {"calib_seed", calib_seed}};
  // Only rotated recipes carry the field: an older reader refuses it (unknown field) instead of running the
  // model without its online transforms.
  if (has_rotation()) {
    j["rotation"] = {{"fold_norms", fold_norms},       {"rotate_residual", rotate_residual},
                     {"rotate_values", rotate_values}, {"seed", rotation_seed},
                     {"qk_hadamard", qk_hadamard},     {"down_hadamard", down_hadamard}};
  }
  // Only KV groups smaller than a head are written: a recipe without the field (every older checkpoint) means
  // one group per head, and an older reader refuses a grouped cache it could not run.
  if (kv_group_size != 0) j["kv_group_size"] = kv_group_size;
  // Likewise only recipes with KV centering carry this one: the checkpoint then holds the centering vectors.
  if (has_kv_centering()) j["kv_centering"] = {{"keys", kv_center_keys}, {"values", kv_center_values}};
  // And only tensor-parallel layouts carry theirs: TP 1 checkpoints stay as they were, and an older reader
  // refuses a sharded one.
  if (tensor_parallel > 1) j["tensor_parallel"] = tensor_parallel;
  return j;
}

QuantRecipe QuantRecipe::from_json(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) fail("{}: the quantization recipe must be a JSON object", what);
  const auto field = [&](const char* key) -> const nlohmann::json& {
    const auto it = j.find(key);
    if (it == j.end()) fail("{}: the quantization recipe has no field '{}'", what, key);
    return *it;
  };
  const auto get_string = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_string()) fail("{}: recipe field '{}' must be a string, found {}", what, key, json_snippet(v));
    return v.get<std::string>();
  };
  const auto get_bool = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_boolean())
      fail("{}: recipe field '{}' must be true or false, found {}", what, key, json_snippet(v));
    return v.get<bool>();
  };
  const auto get_int = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_number_integer())
      fail("{}: recipe field '{}' must be an integer, found {}", what, key, json_snippet(v));
    return v.get<std::int64_t>();
  };
  const auto get_number = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_number()) fail("{}: recipe field '{}' must be a number, found {}", what, key, json_snippet(v));
    return v.get<double>();
  };
  for (const auto& [key, value] : j.items()) {
    if (!QuantRecipe{}.to_json().contains(key) && key != "rotation" && key != "kv_centering" &&
        key != "kv_group_size" && key != "tensor_parallel")
      fail("{}: unknown quantization recipe field '{}'", what, key);
  }
  QuantRecipe r;
  r.preset = get_string("preset");
  r.weight_format = parse_format(get_string("weight_format").c_str(), (what + " weight_format").c_str());
  r.quantize_activations = get_bool("quantize_activations");
  r.act_format = parse_format(get_string("act_format").c_str(), (what + " act_format").c_str());
  r.group = get_int("group");
  r.outliers = get_int("outliers");
  r.outlier_rule_group = get_int("outlier_rule_group");
  r.outlier_precision = parse_outlier_precision(get_string("outlier_precision"), what);
  r.a_clip = static_cast<float>(get_number("a_clip"));
  r.w_clip = static_cast<float>(get_number("w_clip"));
  r.search_clip = get_bool("search_clip");
  r.gptq = get_bool("gptq");
  r.percdamp = get_number("percdamp");
  r.gptq_block = get_int("gptq_block");
  r.kv_bits = static_cast<int>(get_int("kv_bits"));
  if (j.contains("kv_group_size")) r.kv_group_size = get_int("kv_group_size");  // absent: one group per head
  r.smoothquant = get_bool("smoothquant");
  r.smooth_alpha = static_cast<float>(get_number("smooth_alpha"));
  r.calib_windows = get_int("calib_windows");
  r.calib_len = get_int("calib_len");
  const auto& seed = field("calib_seed");
  if (!seed.is_number_unsigned() && !(seed.is_number_integer() && seed.get<std::int64_t>() >= 0)) {
    fail("{}: recipe field 'calib_seed' must be a non-negative integer, found {}", what, json_snippet(seed));
  }
  r.calib_seed = seed.get<std::uint64_t>();
  if (const auto rot = j.find("rotation"); rot != j.end()) {  // absent: no rotation (older checkpoints)
    if (!rot->is_object()) fail("{}: recipe field 'rotation' must be an object, found {}", what, rot->dump());
    const std::set<std::string> keys = {"fold_norms", "rotate_residual", "rotate_values",
                                        "seed",       "qk_hadamard",     "down_hadamard"};
    for (const auto& [key, value] : rot->items()) {
      if (keys.count(key) == 0) fail("{}: unknown recipe rotation field '{}'", what, key);
    }
    const auto flag = [&](const char* key) {
      const auto it = rot->find(key);
      if (it == rot->end()) fail("{}: recipe rotation has no field '{}'", what, key);
      if (!it->is_boolean())
        fail("{}: recipe rotation field '{}' must be true or false, found {}", what, key, it->dump());
      return it->get<bool>();
    };
    r.fold_norms = flag("fold_norms");
    r.rotate_residual = flag("rotate_residual");
    r.rotate_values = flag("rotate_values");
    r.qk_hadamard = flag("qk_hadamard");
    r.down_hadamard = flag("down_hadamard");
    const auto it = rot->find("seed");
    if (it == rot->end() ||
        !(it->is_number_unsigned() || (it->is_number_integer() && it->get<std::int64_t>() >= 0)))
      fail("{}: recipe rotation field 'seed' must be a non-negative integer", what);
    r.rotation_seed = it->get<std::uint64_t>();
  }
  if (const auto kvc = j.find("kv_centering"); kvc != j.end()) {  // absent: no centering (older checkpoints)
    if (!kvc->is_object())
      fail("{}: recipe field 'kv_centering' must be an object, found {}", what, json_snippet(*kvc));
    for (const auto& [key, value] : kvc->items()) {
      if (key != "keys" && key != "values") fail("{}: unknown recipe kv_centering field '{}'", what, key);
    }
    const auto flag = [&](const char* key) {
      const auto it = kvc->find(key);
      if (it == kvc->end()) fail("{}: recipe kv_centering has no field '{}'", what, key);
      if (!it->is_boolean())
        fail("{}: recipe kv_centering field '{}' must be true or false, found {}", what, key, json_snippet(*it));
      return it->get<bool>();
    };
    r.kv_center_keys = flag("keys");
    r.kv_center_values = flag("values");
  }
  if (j.contains("tensor_parallel")) {  // absent: 1 (checkpoints of one device, older ones included)
    const std::int64_t tp = get_int("tensor_parallel");
    if (tp < 1 || tp > 1024) fail("{}: recipe field 'tensor_parallel' must be in [1, 1024], found {}", what, tp);
    r.tensor_parallel = static_cast<int>(tp);
  }
  try {
    r.validate();
  } catch (const Error& e) {
    fail("{}: {}", what, e.what());
  }
  return r;
}

std::int64_t QuantRecipe::kv_group_for(std::int64_t head_dim) const {
  if (kv_group_size == 0) return head_dim;
  if (head_dim % kv_group_size != 0) {
    fail("quantization recipe: kv_group_size {} does not divide head_dim {}", kv_group_size, head_dim);
  }
  return kv_group_size;
}

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"atom-w4a4", "atom-w3a3",   "atom-fp4",      "w8a8-smoothquant",
                                                 "w4a16",     "rtn-w4a4",    "quarot-w4a4",   "atom-rot-w4a4",
                                                 "quarot-w8a8"};
  return names;
}

QuantRecipe preset_recipe(std::string_view name) {
  QuantRecipe r;  // the defaults are Atom W4A4 (paper settings)
  r.preset = std::string(name);
  if (name == "atom-w4a4") return r;
  if (name == "atom-w3a3") {
    r.weight_format = r.act_format = NumberFormat::kInt3;
    return r;
  }
  if (name == "atom-fp4") {
    r.weight_format = r.act_format = NumberFormat::kFp4;
    return r;
  }
  if (name == "w8a8-smoothquant") {  // per-channel INT8 weights x per-token INT8 activations, RTN
    r.weight_format = r.act_format = NumberFormat::kInt8;
    r.group = 0;
    r.outliers = 0;
    r.a_clip = r.w_clip = 1.0f;
    r.gptq = false;
    r.kv_bits = 16;
    r.smoothquant = true;
    r.smooth_alpha = 0.5f;
    return r;
  }
  if (name == "w4a16") {  // GPTQ INT4 g128 weights, fp activations
    r.quantize_activations = false;
    r.outliers = 0;
    r.w_clip = 1.0f;
    r.kv_bits = 16;
    return r;
  }
  if (name == "rtn-w4a4") {  // the standard recipe Atom's ablation starts from
    r.group = 0;
    r.outliers = 0;
    r.a_clip = r.w_clip = 1.0f;
    r.gptq = false;
    r.kv_bits = 16;
    return r;
  }
  const auto rotate = [](QuantRecipe& q) {
    q.fold_norms = q.rotate_residual = q.rotate_values = q.qk_hadamard = q.down_hadamard = true;
  };
  if (name == "quarot-w4a4") {  // QuaRot: per-channel GPTQ weights, per-token activations (clip 0.9)
    r.group = 0;
    r.outliers = 0;
    r.w_clip = 1.0f;
    rotate(r);
    return r;
  }
  if (name == "atom-rot-w4a4") {  // Atom's g128 + INT8 outlier channels on the rotated model
    rotate(r);
    return r;
  }
  if (name == "quarot-w8a8") {  // W8A8 on the rotated model: per-channel GPTQ INT8 weights, per-token INT8
    r.weight_format = r.act_format = NumberFormat::kInt8;  // activations, no clipping, fp16 KV (so no Q/K
    r.group = 0;                                           // Hadamard; --kv-bits 4 --qk-hadamard adds both)
    r.outliers = 0;
    r.a_clip = r.w_clip = 1.0f;
    r.kv_bits = 16;
    rotate(r);
    r.qk_hadamard = false;
    return r;
  }
  std::string list;
  for (const auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
  fail("unknown quantization preset '{}' (presets: {})", name, list);
}

double effective_bits_per_weight(std::int64_t k_normal, std::int64_t n_outliers, std::int64_t group,
                                 NumberFormat format) {
  ATOM_CHECK(k_normal > 0 && group > 0 && k_normal % group == 0 && n_outliers >= 0);
  const double code_bits = format_is_packed(format) ? 4.0 : 8.0;  // INT3 is stored in nibbles
  const double bits = static_cast<double>(k_normal) * code_bits + 8.0 * static_cast<double>(n_outliers) +
                      16.0 * static_cast<double>(k_normal / group) + (n_outliers > 0 ? 16.0 : 0.0);
  return bits / static_cast<double>(k_normal + n_outliers);
}

void check_outlier_count(std::int64_t k, std::int64_t group, std::int64_t n_outliers, const char* what) {
  if (group <= 0) fail("{}: group size {} must be positive", what, group);
  if (n_outliers < 0 || n_outliers >= k || (k - n_outliers) % group != 0) {
    fail("{}: {} outlier channels leave {} of {} channels, not a positive multiple of the group size {}",
         what, n_outliers, k - n_outliers, k, group);
  }
}

std::int64_t default_outlier_count(std::int64_t k, std::int64_t group) {
  if (group <= 0 || k <= group)
    fail("outlier count: input width {} is not larger than the group size {}", k, group);
  const std::int64_t n = k >= 4096 ? 128 : (k % group != 0 ? k % group : group);
  check_outlier_count(k, group, n, "outlier count");
  return n;
}

}  // namespace atom::quant
