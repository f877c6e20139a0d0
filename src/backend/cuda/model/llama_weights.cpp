#include "backend/cuda/model/llama_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <span>

#include <fmt/format.h>

#include "backend/cpu/kernels.h"
#include "backend/cpu/online_transforms.h"
#include "backend/cuda/elementwise/elementwise.h"
#include "common/error.h"
#include "common/half.h"
#include "format/atom_checkpoint.h"
#include "format/quantized_model.h"
#include "io/checkpoint.h"
#include "model/model_source.h"

namespace atom::cuda {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kF16:
      return "fp16";
    case Precision::kW8A8:
      return "w8a8";
    case Precision::kW4A16:
      return "w4a16";
    case Precision::kW4A4:
      return "atom-w4a4";
  }
  return "?";
}

Precision parse_precision(std::string_view name) {
  for (Precision p : {Precision::kF16, Precision::kW8A8, Precision::kW4A16, Precision::kW4A4}) {
    if (name == precision_name(p)) return p;
  }
  fail("unknown precision '{}' (expected fp16, w8a8, w4a16 or atom-w4a4)", name);
}

std::size_t CudaLlamaWeights::bytes() const {
  std::size_t total = embed_tokens.bytes() + lm_head.bytes() + final_norm.bytes() + rope_inv_freq.bytes() +
                      down_hadamard_base.bytes() + down_hadamard_signs.bytes();
  for (const DeviceLayer& l : layers) {
    total += l.input_norm.bytes() + l.post_attention_norm.bytes() + l.attn_perm.bytes() + l.mlp_perm.bytes() +
             l.qkv.bytes() + l.o_proj.bytes() + l.gate_up.bytes() + l.down.bytes() + l.k_center.bytes();
  }
  return total;
}

std::string CudaLlamaWeights::describe() const {
  return fmt::format("{} {} {} layers, {:.2f} GiB of weights{}", precision_name(precision),
                     config.architecture, layers.size(), static_cast<double>(bytes()) / (1 << 30),
                     random_weights ? " (random weights)" : "");
}

void require_cuda_device() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    fail("--device cuda: no usable CUDA device ({}: {})", cudaGetErrorName(status),
         cudaGetErrorString(status));
  }
  if (count == 0) fail("--device cuda: no CUDA device found");
}

void check_cuda_supported(const ModelConfig& c, const std::string& source) {
  c.validate(source);
  if (c.attention_bias)
    fail("{}: attention_bias (q/k/v biases) is not supported by the CUDA backend", source);
  if (c.head_dim != 64 && c.head_dim != 128) {
    fail("{}: head_dim {} is not supported by the CUDA backend (64 or 128)", source, c.head_dim);
  }
  if (c.num_heads / c.num_kv_heads > 8) {
    fail("{}: {} query heads per KV head; the CUDA attention kernels take at most 8", source,
         c.num_heads / c.num_kv_heads);
  }
  if (c.hidden_size % 8 != 0 || c.intermediate_size % 8 != 0) {
    fail("{}: hidden_size {} and intermediate_size {} must be multiples of 8 for the CUDA backend", source,
         c.hidden_size, c.intermediate_size);
  }
  if (c.sliding_window > 0 && c.sliding_window < c.max_position_embeddings) {
    fail("{}: sliding_window {} is not supported by the CUDA backend", source, c.sliding_window);
  }
}

namespace {

std::vector<std::uint16_t> to_f16(std::span<const float> x) {
  std::vector<std::uint16_t> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = fp32_to_fp16(x[i]);
  return out;
}

DeviceBuffer<std::uint16_t> upload_f16(std::span<const float> x) {
  DeviceBuffer<std::uint16_t> b;
  const std::vector<std::uint16_t> h = to_f16(x);
  b.upload(h);
  return b;
}

// Rows of several [*, k] matrices stacked into one fp16 linear.
DeviceLinear dense_linear(std::initializer_list<const std::vector<float>*> parts, int k,
                          const std::string& name) {
  std::vector<std::uint16_t> rows;
  for (const auto* p : parts) {
    if (p->size() % static_cast<std::size_t>(k) != 0)
      fail("{}: {} values are not rows of {}", name, p->size(), k);
    const std::vector<std::uint16_t> h = to_f16(*p);
    rows.insert(rows.end(), h.begin(), h.end());
  }
  DeviceLinear l;
  l.k = k;
  l.n = static_cast<int>(rows.size() / static_cast<std::size_t>(k));
  l.weight_f16.upload(rows);
  return l;
}

void upload_common(CudaLlamaWeights& w, std::span<const float> embed, std::span<const float> lm_head,
                   std::span<const float> final_norm) {
  w.embed_tokens = upload_f16(embed);
  if (!lm_head.empty()) w.lm_head = upload_f16(lm_head);
  w.final_norm = upload_f16(final_norm);
  const std::vector<float> inv_freq = cpu::rope_inv_freq(w.config);
  w.rope_inv_freq.upload(inv_freq);
}

void check_biases(const LayerWeights& lw, const std::string& name, int layer) {
  if (!lw.q_bias.empty() || !lw.k_bias.empty() || !lw.v_bias.empty() || !lw.o_bias.empty()) {
    fail("{}: layer {} has linear biases, which the CUDA backend does not support", name, layer);
  }
}

DeviceLayer dense_layer(const LayerWeights& lw, const ModelConfig& c, const std::string& name, int layer) {
  check_biases(lw, name, layer);
  DeviceLayer d;
  d.input_norm = upload_f16(lw.input_norm);
  d.post_attention_norm = upload_f16(lw.post_attention_norm);
  const std::string where = fmt::format("{} layer {}", name, layer);
  d.qkv = dense_linear({&lw.q_proj, &lw.k_proj, &lw.v_proj}, c.hidden_size, where + " qkv");
  d.o_proj = dense_linear({&lw.o_proj}, c.num_heads * c.head_dim, where + " o_proj");
  d.gate_up = dense_linear({&lw.gate_proj, &lw.up_proj}, c.hidden_size, where + " gate_up");
  d.down = dense_linear({&lw.down_proj}, c.intermediate_size, where + " down_proj");
  return d;
}

// ---- Quantized linears: QuantizedLinearWeights (FORMAT.md canonical) -> the prepacked GPU layout.

struct CanonicalHost {
  std::vector<std::uint8_t> packed;
  std::vector<std::uint16_t> scales;
  std::vector<std::int8_t> outliers;
  std::vector<std::uint16_t> outlier_scales;
  int n = 0, k_normal = 0, n_outliers = 0;
  quant::NumberFormat format = quant::NumberFormat::kInt4;
  std::vector<std::int32_t> perm;
};

CanonicalHost canonical_of(const quant::QuantizedLinearWeights& w, Precision precision,
                           const std::string& name) {
  CanonicalHost c;
  c.n = static_cast<int>(w.n);
  c.perm = w.perm;
  c.format = w.format;
  if (precision == Precision::kW8A8) {
    // Per-channel INT8 (one group per row, no outliers) is the Atom product with every channel an outlier.
    if (w.format != quant::NumberFormat::kInt8 || w.n_outliers != 0 || w.group != w.k_normal) {
      fail(
          "{}: a w8a8 linear must be INT8 with one group per row and no outliers (found {} g{} with {} "
          "outliers)",
          name, quant::format_name(w.format), w.group, w.n_outliers);
    }
    c.k_normal = 0;
    c.n_outliers = static_cast<int>(w.k_normal);
    c.outliers.resize(w.packed.size());
    std::memcpy(c.outliers.data(), w.packed.data(), w.packed.size());
    c.outlier_scales = w.scales;  // [n, 1]
  } else {
    if (w.format != quant::NumberFormat::kInt4 && w.format != quant::NumberFormat::kInt3) {
      fail("{}: {} weights are not supported by the CUDA kernels (INT4 or INT3)", name,
           quant::format_name(w.format));
    }
    if (w.group != kW4A4Group) {
      fail("{}: group size {} (the CUDA kernels take groups of {})", name, w.group, kW4A4Group);
    }
    if (w.n_outliers % 16 != 0)
      fail("{}: {} outlier channels (the CUDA kernels need a multiple of 16)", name, w.n_outliers);
    if (precision == Precision::kW4A16 && w.n_outliers != 0) {
      fail("{}: a w4a16 linear with {} outlier channels (gemm_w4a16 takes none)", name, w.n_outliers);
    }
    c.k_normal = static_cast<int>(w.k_normal);
    c.n_outliers = static_cast<int>(w.n_outliers);
    c.packed = w.packed;
    c.scales = w.scales;
    c.outliers = w.outliers;
    c.outlier_scales = w.outlier_scales;
  }
  return c;
}

// Rows of b appended to a (same input layout).
void stack_rows(CanonicalHost& a, const CanonicalHost& b, const std::string& name) {
  if (a.k_normal != b.k_normal || a.n_outliers != b.n_outliers || a.format != b.format || a.perm != b.perm) {
    fail("{}: stacked linears must share their input layout and permutation", name);
  }
  a.packed.insert(a.packed.end(), b.packed.begin(), b.packed.end());
  a.scales.insert(a.scales.end(), b.scales.begin(), b.scales.end());
  a.outliers.insert(a.outliers.end(), b.outliers.begin(), b.outliers.end());
  a.outlier_scales.insert(a.outlier_scales.end(), b.outlier_scales.begin(), b.outlier_scales.end());
  a.n += b.n;
}

DeviceLinear upload_canonical(const CanonicalHost& c, Precision precision, float act_clip,
                              const std::string& name) {
  validate_w4a4_shape(c.n, c.k_normal, c.n_outliers, name.c_str());
  DeviceLinear l;
  l.n = c.n;
  l.k = c.k_normal + c.n_outliers;
  l.k_normal = c.k_normal;
  l.n_outliers = c.n_outliers;
  l.act.k = l.k;
  l.act.n_outliers = c.n_outliers;
  l.act.group_size = kW4A4Group;
  l.act.format = c.format == quant::NumberFormat::kInt3 ? ActFormat::kInt3 : ActFormat::kInt4;
  l.act.clip_ratio = precision == Precision::kW8A8 ? 1.0f : act_clip;
  if (!std::is_sorted(c.perm.begin(), c.perm.end()))
    l.perm.upload(c.perm);              // a permutation: sorted = identity
  if (precision == Precision::kW8A8) {  // cuBLASLt reads the canonical codes
    if (l.k % 4 != 0) fail("{}: K = {} (the INT8 product needs a multiple of 4)", name, l.k);
    l.weight_i8.upload(c.outliers);
    std::vector<float> s(c.outlier_scales.size());
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = fp16_to_fp32(c.outlier_scales[i]);
    l.channel_scales.upload(s);
    return l;
  }
  const W4A4CanonicalWeights canonical{
      c.packed.data(), c.scales.data(), c.outliers.data(), c.outlier_scales.data(), c.n,
      c.k_normal,      c.n_outliers};
  const W4A4PackedSizes sizes = w4a4_packed_sizes(c.n, c.k_normal, c.n_outliers);
  std::vector<std::uint8_t> packed(sizes.packed_bytes);
  std::vector<std::int8_t> outliers(sizes.outlier_bytes);
  std::vector<float> scales(sizes.scale_bytes / sizeof(float));
  prepack_w4a4_weights_host(canonical, packed.data(), outliers.data(), scales.data());
  l.packed.upload(packed);
  l.outliers.upload(outliers);
  l.scales.upload(scales);
  return l;
}

Precision precision_of(const quant::QuantRecipe& r, const std::string& name) {
  if (!r.quantize_activations) return Precision::kW4A16;
  if (r.act_format == quant::NumberFormat::kInt8) return Precision::kW8A8;
  if (r.act_format == quant::NumberFormat::kFp4) {
    fail("{}: FP4 activations (atom-fp4) are not supported by the CUDA kernels", name);
  }
  if (r.group == 0)
    fail("{}: per-row W4A4 (rtn-w4a4) is not supported by the CUDA kernels (groups of 128)", name);
  return Precision::kW4A4;
}

}  // namespace

std::unique_ptr<CudaLlamaWeights> upload_fp16(ModelSource source, const std::string& name,
                                              const UploadProgress& progress) {
  check_cuda_supported(source.config, name);
  auto w = std::make_unique<CudaLlamaWeights>();
  w->config = source.config;
  w->precision = Precision::kF16;
  w->default_kv = KvDtype::kF16;
  w->source = name;
  const int layers = source.config.num_layers;
  for (int i = 0; i < layers; ++i) {
    if (progress) progress(fmt::format("layer {}/{}", i + 1, layers), static_cast<double>(i) / (layers + 1));
    const LayerWeights lw = source.layer(i);
    w->layers.push_back(dense_layer(lw, w->config, name, i));
  }
  if (progress) progress("embeddings", static_cast<double>(layers) / (layers + 1));
  std::span<const float> lm_head;
  if (source.lm_head) lm_head = *source.lm_head;
  upload_common(*w, *source.embed_tokens, lm_head, source.final_norm);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  return w;
}

std::unique_ptr<CudaLlamaWeights> upload_fp16(const LlamaWeights& weights, const std::string& name) {
  check_cuda_supported(weights.config, name);
  auto w = std::make_unique<CudaLlamaWeights>();
  w->config = weights.config;
  w->source = name;
  for (int i = 0; i < weights.config.num_layers; ++i) {
    w->layers.push_back(dense_layer(weights.layers.at(static_cast<std::size_t>(i)), w->config, name, i));
  }
  upload_common(
      *w, weights.embed_tokens,
      weights.config.tie_word_embeddings ? std::span<const float>{} : std::span<const float>(weights.lm_head),
      weights.final_norm);
  return w;
}

// The online transforms of a rotated recipe (docs/FORMAT.md): the Q/K flag and the down Hadamard's constants.
static void set_online_transforms(CudaLlamaWeights& w, const quant::QuantRecipe& recipe, const std::string& name) {
  w.qk_hadamard = recipe.qk_hadamard;
  if (const auto down = quant::down_transform(w.config, recipe)) {
    const HadamardHost h = hadamard_host(*down);
    if (h.n > kMaxHadamardWidth)
      fail("{}: intermediate_size {} exceeds the widest online Hadamard the CUDA backend runs ({})", name, h.n,
           kMaxHadamardWidth);
    w.down_hadamard_base.upload(std::span<const std::uint16_t>(h.base));
    w.down_hadamard_signs.upload(std::span<const std::uint32_t>(h.sign_bits));
    w.down_hadamard = HadamardView{h.n, h.k, h.p, h.scale, h.base.empty() ? nullptr : w.down_hadamard_base.get(),
                                   h.sign_bits.empty() ? nullptr : w.down_hadamard_signs.get()};
  }
}

std::unique_ptr<CudaLlamaWeights> upload_quantized(const quant::QuantizedModel& model,
                                                   const std::string& name, const UploadProgress& progress) {
  check_cuda_supported(model.config, name);
  const Precision precision = precision_of(model.recipe, name);
  auto w = std::make_unique<CudaLlamaWeights>();
  w->config = model.config;
  w->precision = precision;
  w->source = name;
  switch (model.recipe.kv_bits) {
    case 4:
      w->default_kv = KvDtype::kU4;
      break;
    case 8:
      w->default_kv = KvDtype::kU8;
      break;
    default:
      w->default_kv = KvDtype::kF16;
      break;
  }
  if (model.recipe.tensor_parallel > 1) {
    fail("{}: a checkpoint laid out for tensor_parallel {} (o_proj and down_proj quantized per input shard) does "
         "not run on the CUDA backend yet (run it with --device cpu)", name, model.recipe.tensor_parallel);
  }
  // The recipe's KV groups; the CUDA kernels take whole multiples of 32 (a decode lane's dims in one group).
  const std::int64_t kv_group = model.recipe.kv_group_for(model.config.head_dim);
  if (model.recipe.kv_group_size != 0 && kv_group != model.config.head_dim) {
    if (kv_group % 32 != 0) {
      fail("{}: kv_group_size {} is not supported by the CUDA backend (0 = head_dim, or a multiple of 32)", name,
           model.recipe.kv_group_size);
    }
    w->kv_group_size = static_cast<int>(kv_group);
  }
  const float clip = model.recipe.a_clip;
  const int layers = static_cast<int>(model.layers.size());
  for (int i = 0; i < layers; ++i) {
    if (progress) progress(fmt::format("layer {}/{}", i + 1, layers), static_cast<double>(i) / (layers + 1));
    const quant::QuantizedLayer& ql = model.layers[static_cast<std::size_t>(i)];
    const auto lname = [&](const char* linear) { return quant::linear_name(i, linear); };
    for (const quant::QuantizedLinear* l :
         {&ql.q_proj, &ql.k_proj, &ql.v_proj, &ql.o_proj, &ql.gate_proj, &ql.up_proj, &ql.down_proj}) {
      if (!l->bias.empty())
        fail("{}: layer {} has linear biases, which the CUDA backend does not support", name, i);
    }
    DeviceLayer d;
    d.input_norm = upload_f16(ql.input_norm);
    d.post_attention_norm = upload_f16(ql.post_attention_norm);

    CanonicalHost qkv = canonical_of(ql.q_proj.weights, precision, lname("q_proj"));
    stack_rows(qkv, canonical_of(ql.k_proj.weights, precision, lname("k_proj")), lname("k_proj"));
    stack_rows(qkv, canonical_of(ql.v_proj.weights, precision, lname("v_proj")), lname("v_proj"));
    d.qkv = upload_canonical(qkv, precision, clip, lname("qkv"));

    d.o_proj = upload_canonical(canonical_of(ql.o_proj.weights, precision, lname("o_proj")), precision, clip,
                                lname("o_proj"));
    if (precision == Precision::kW4A16 && !d.o_proj.perm.empty()) {
      fail("{}: a w4a16 o_proj with a channel permutation (the CUDA w4a16 path reads its input in order)",
           lname("o_proj"));
    }

    // SiLU(gate) * up must come out in down_proj's input order: gate/up rows follow down_proj's permutation,
    // unless the down Hadamard mixes the channels first (then down_proj gathers its input at run time).
    quant::QuantizedLinear gate = ql.gate_proj, up = ql.up_proj;
    const std::vector<std::int32_t>& down_perm = ql.down_proj.weights.perm;
    if (!model.recipe.down_hadamard) {
      quant::permute_output_rows(gate, down_perm);
      quant::permute_output_rows(up, down_perm);
    }
    CanonicalHost gate_up = canonical_of(gate.weights, precision, lname("gate_proj"));
    stack_rows(gate_up, canonical_of(up.weights, precision, lname("up_proj")), lname("up_proj"));
    d.gate_up = upload_canonical(gate_up, precision, clip, lname("gate_up"));
    d.down = upload_canonical(canonical_of(ql.down_proj.weights, precision, lname("down_proj")), precision,
                              clip, lname("down_proj"));
    if (!model.recipe.down_hadamard) {
      d.down.perm.reset();  // applied through the gate/up rows
    } else if (precision == Precision::kW4A16 && !d.down.perm.empty()) {
      fail("{}: a w4a16 down_proj with a channel permutation (the CUDA w4a16 path reads its input in order)",
           lname("down_proj"));
    }

    // KV centering (docs/FORMAT.md): kv_cache_append subtracts the key vector before the cache stores a row.
    // Value centering would also need the attention output adjusted; it measured worse than none (docs/RESULTS.md),
    // so the runner does not implement it.
    if (!ql.value_center.empty()) {
      fail("{}: layer {}: value centering (the recipe's kv_centering values) is not supported by the CUDA backend",
           name, i);
    }
    if (!ql.key_center.empty()) {
      const std::size_t kv_dim = static_cast<std::size_t>(model.config.num_kv_heads) * model.config.head_dim;
      if (ql.key_center.size() != kv_dim) {
        fail("{}: layer {}: the key centering vector has {} values, num_kv_heads x head_dim is {}", name, i,
             ql.key_center.size(), kv_dim);
      }
      d.k_center.upload(std::span<const float>(ql.key_center));
    }

    // q/k/v's and gate/up's permutations are applied by the RMSNorm kernels.
    d.attn_perm = std::move(d.qkv.perm);
    d.mlp_perm = std::move(d.gate_up.perm);
    w->layers.push_back(std::move(d));
  }
  set_online_transforms(*w, model.recipe, name);
  if (progress) progress("embeddings", static_cast<double>(layers) / (layers + 1));
  std::span<const float> lm_head;
  if (model.lm_head) lm_head = *model.lm_head;
  upload_common(*w, *model.embed_tokens, lm_head, model.final_norm);
  return w;
}

std::unique_ptr<CudaLlamaWeights> load_cuda_weights(const std::string& path, const UploadProgress& progress) {
  const Checkpoint checkpoint = open_checkpoint(path);
  if (quant::is_atom_checkpoint(checkpoint)) {
    if (progress) progress("reading the Atom checkpoint", 0.0);
    const quant::QuantizedModel model = quant::load_atom_checkpoint(checkpoint, /*runs_online_transforms=*/true);
    return upload_quantized(model, path, progress);
  }
  return upload_fp16(model_source(checkpoint), path, progress);
}

// ---- Synthetic benchmark models.

const std::vector<std::string>& synthetic_shape_names() {
  static const std::vector<std::string> names = {"llama-2-7b", "llama-2-13b", "llama-3-8b"};
  return names;
}

ModelConfig synthetic_config(std::string_view shape) {
  ModelConfig c;
  c.architecture = "llama";
  c.rms_norm_eps = 1e-5f;
  if (shape == "llama-2-7b" || shape == "llama-2-13b") {
    const bool big = shape == "llama-2-13b";
    c.vocab_size = 32000;
    c.hidden_size = big ? 5120 : 4096;
    c.intermediate_size = big ? 13824 : 11008;
    c.num_layers = big ? 40 : 32;
    c.num_heads = c.num_kv_heads = big ? 40 : 32;
    c.head_dim = 128;
    c.max_position_embeddings = 4096;
    c.rope_theta = 10000.0f;
  } else if (shape == "llama-3-8b") {
    c.vocab_size = 128256;
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.max_position_embeddings = 8192;
    c.rope_theta = 500000.0f;
  } else {
    fail("unknown synthetic model shape '{}' (expected one of: {})", shape,
         fmt::join(synthetic_shape_names(), ", "));
  }
  c.validate(std::string(shape));
  return c;
}

namespace {

DeviceBuffer<std::uint16_t> random_f16(std::size_t n, std::uint64_t seed, float lo, float hi) {
  DeviceBuffer<std::uint16_t> b(n);
  fill_uniform_f16(b.get(), n, seed, lo, hi, nullptr);
  return b;
}

std::vector<std::int32_t> random_permutation(int k, std::uint64_t seed) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(k));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937_64 rng(seed);
  for (int i = k - 1; i > 0; --i)
    std::swap(p[static_cast<std::size_t>(i)], p[rng() % static_cast<std::uint64_t>(i + 1)]);
  return p;
}

DeviceLinear random_linear(int n, int k, Precision precision, std::uint64_t seed) {
  DeviceLinear l;
  l.n = n;
  l.k = k;
  // Weights ~ U(-a, a) with a = sqrt(3 / k): unit-variance outputs for unit-variance inputs.
  const float a = std::sqrt(3.0f / static_cast<float>(k));
  if (precision == Precision::kF16) {
    l.weight_f16 = random_f16(static_cast<std::size_t>(n) * k, seed, -a, a);
    return l;
  }
  l.n_outliers = precision == Precision::kW8A8 ? k : precision == Precision::kW4A4 ? 128 : 0;
  l.k_normal = k - l.n_outliers;
  validate_w4a4_shape(n, l.k_normal, l.n_outliers, "synthetic linear");
  l.act.k = k;
  l.act.n_outliers = l.n_outliers;
  l.act.group_size = kW4A4Group;
  l.act.format = ActFormat::kInt4;
  l.act.clip_ratio = precision == Precision::kW4A4 ? 0.9f : 1.0f;
  if (precision == Precision::kW8A8) {
    l.weight_i8.allocate(static_cast<std::size_t>(n) * k);
    fill_random_bytes(l.weight_i8.get(), l.weight_i8.bytes(), seed, nullptr);
    l.channel_scales.allocate(static_cast<std::size_t>(n));
    fill_uniform_f32(l.channel_scales.get(), l.channel_scales.size(), seed + 2, 0.5f * a / 74.0f,
                     1.5f * a / 74.0f, nullptr);
    return l;
  }
  const W4A4PackedSizes s = w4a4_packed_sizes(n, l.k_normal, l.n_outliers);
  l.packed.allocate(s.packed_bytes);
  l.outliers.allocate(s.outlier_bytes);
  l.scales.allocate(s.scale_bytes / sizeof(float));
  fill_random_bytes(l.packed.get(), l.packed.bytes(), seed, nullptr);
  fill_random_bytes(l.outliers.get(), l.outliers.bytes(), seed + 1, nullptr);
  // Codes ~ U{-8..7} (INT4) / U{-128..127} (INT8) have RMS ~4.6 / ~74: scales bring the weights to ~a.
  const float code_rms = 4.6f, outlier_rms = 74.0f;
  const float s4 = a / code_rms, s8 = a / outlier_rms;
  // One scale array holds the groups and the outlier scale of each row: fill with the INT4 scale, then the
  // outlier entries (entry `groups` of every tile) with the INT8 one.
  fill_uniform_f32(l.scales.get(), l.scales.size(), seed + 2, 0.5f * s4, 1.5f * s4, nullptr);
  if (l.n_outliers > 0) {
    const int groups = l.k_normal / kW4A4Group;
    const int tiles = (n + kW4A4TileRows - 1) / kW4A4TileRows;
    for (int t = 0; t < tiles; ++t) {
      float* entry = l.scales.get() + (static_cast<std::size_t>(t) * (groups + 1) + groups) * kW4A4TileRows;
      fill_uniform_f32(entry, kW4A4TileRows, seed + 3 + t, 0.5f * s8, 1.5f * s8, nullptr);
    }
  }
  return l;
}

}  // namespace

std::unique_ptr<CudaLlamaWeights> make_synthetic_weights(const ModelConfig& config, Precision precision,
                                                         const std::string& name, std::uint64_t seed,
                                                         bool online_transforms) {
  check_cuda_supported(config, name);
  auto w = std::make_unique<CudaLlamaWeights>();
  w->config = config;
  w->precision = precision;
  w->default_kv = precision == Precision::kW4A4   ? KvDtype::kU4
                  : precision == Precision::kW8A8 ? KvDtype::kU8
                                                  : KvDtype::kF16;
  w->random_weights = true;
  w->source = name;
  const ModelConfig& c = config;
  const int qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  for (int i = 0; i < c.num_layers; ++i) {
    const std::uint64_t s = seed * 1000003ULL + static_cast<std::uint64_t>(i) * 64;
    DeviceLayer d;
    d.input_norm = random_f16(static_cast<std::size_t>(c.hidden_size), s, 0.8f, 1.2f);
    d.post_attention_norm = random_f16(static_cast<std::size_t>(c.hidden_size), s + 1, 0.8f, 1.2f);
    d.qkv = random_linear(qkv_rows, c.hidden_size, precision, s + 8);
    d.o_proj = random_linear(c.hidden_size, c.num_heads * c.head_dim, precision, s + 16);
    d.gate_up = random_linear(2 * c.intermediate_size, c.hidden_size, precision, s + 24);
    d.down = random_linear(c.hidden_size, c.intermediate_size, precision, s + 32);
    if (precision == Precision::kW4A4) {  // the reorders cost what they cost with a real permutation
      d.attn_perm.upload(random_permutation(c.hidden_size, s + 40));
      d.mlp_perm.upload(random_permutation(c.hidden_size, s + 41));
      d.o_proj.perm.upload(random_permutation(c.num_heads * c.head_dim, s + 42));
      if (online_transforms) d.down.perm.upload(random_permutation(c.intermediate_size, s + 43));
    }
    if (online_transforms && precision == Precision::kW4A16)
      fail("{}: --online-transforms with w4a16 (its down_proj would need a permutation it cannot read)", name);
    w->layers.push_back(std::move(d));
  }
  w->embed_tokens = random_f16(static_cast<std::size_t>(c.vocab_size) * c.hidden_size, seed + 7, -1.0f, 1.0f);
  w->lm_head = random_f16(static_cast<std::size_t>(c.vocab_size) * c.hidden_size, seed + 9,
                          -std::sqrt(3.0f / c.hidden_size), std::sqrt(3.0f / c.hidden_size));
  w->final_norm = random_f16(static_cast<std::size_t>(c.hidden_size), seed + 11, 0.8f, 1.2f);
  const std::vector<float> inv_freq = cpu::rope_inv_freq(c);
  w->rope_inv_freq.upload(inv_freq);
  if (online_transforms) {
    quant::QuantRecipe rotated;
    rotated.qk_hadamard = rotated.down_hadamard = true;
    set_online_transforms(*w, rotated, name);
  }
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  return w;
}

}  // namespace atom::cuda
