#include "backend/cpu/quantizer_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/quant_kv_cache.h"
#include "backend/cpu/quant_linear.h"
#include "backend/cpu/tensor_parallel_llama.h"
#include "common/error.h"
#include "common/half.h"
#include "backend/cpu/online_transforms.h"

namespace atom::quant {

ActivationQuant activation_quant(const QuantRecipe& recipe, std::int64_t k_normal, std::int64_t n_outliers) {
  ActivationQuant a;
  a.enabled = recipe.quantize_activations;
  a.format = recipe.act_format;
  a.group = recipe.group_for(k_normal);
  a.n_outliers = n_outliers;
  a.outlier_precision = recipe.outlier_precision;
  a.clip = recipe.a_clip;
  return a;
}

namespace {

// Quantize-dequantize `n` values in one symmetric group, exactly as quantize_symmetric_groups does
// (symmetric_scale, quantize_symmetric_value), with the libm fmaxf/fminf calls written as compares that treat
// NaN the same way (a NaN |x| never becomes the maximum; a NaN quotient clamps to the lower bound).
void fake_quantize_group(const float* x, std::int64_t n, NumberFormat format, float clip, float* out) {
  const float qmax = format_qmax(format);
  float max_abs = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    max_abs = a > max_abs ? a : max_abs;
  }
  const float scale = fp16_to_fp32(fp32_to_fp16(clip * max_abs / qmax));
  if (scale == 0.0f) {
    std::fill(out, out + n, 0.0f);
    return;
  }
  if (format == NumberFormat::kFp4) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = fp4_decode(quantize_fp4_value(x[i], scale)) * scale;
    return;
  }
  const float lo = -qmax - 1.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    float r = std::nearbyint(x[i] / scale);
    r = r > lo ? r : lo;
    r = r < qmax ? r : qmax;
    out[i] = (r + 0.0f) * scale;  // +0, not -0, like the integer code 0
  }
}

}  // namespace

void fake_quantize_reordered(const float* x, std::int64_t m, std::int64_t k, const ActivationQuant& spec,
                             float* out) {
  if (!spec.enabled) {
    if (out != x) std::copy(x, x + m * k, out);
    return;
  }
  const std::int64_t k_normal = k - spec.n_outliers, G = spec.group;
  ATOM_CHECK(spec.n_outliers >= 0 && k_normal > 0 && G > 0 && k_normal % G == 0);
#pragma omp parallel for schedule(static) if (m > 1)
  for (std::int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    float* yr = out + r * k;
    for (std::int64_t g = 0; g < k_normal; g += G)
      fake_quantize_group(xr + g, G, spec.format, spec.clip, yr + g);
    if (spec.n_outliers == 0) continue;
    if (spec.outlier_precision == OutlierPrecision::kInt8) {
      fake_quantize_group(xr + k_normal, spec.n_outliers, NumberFormat::kInt8, 1.0f, yr + k_normal);
    } else {
      for (std::int64_t o = k_normal; o < k; ++o) yr[o] = fp16_to_fp32(fp32_to_fp16(xr[o]));
    }
  }
}

// ---- FakeQuantLinear

namespace {

constexpr std::int64_t kFakeQuantBlockRows = 512;  // weight rows widened to fp64 per dgemm

std::shared_ptr<const std::vector<float>> checked_weight(std::vector<float> weight, std::int64_t n,
                                                         std::int64_t k, const std::vector<float>& bias,
                                                         const std::string& name) {
  if (n <= 0 || k <= 0 || static_cast<std::int64_t>(weight.size()) != n * k) {
    fail("{}: {} weights for [{} x {}]", name, weight.size(), n, k);
  }
  if (!bias.empty() && static_cast<std::int64_t>(bias.size()) != n) {
    fail("{}: bias has {} entries for {} outputs", name, bias.size(), n);
  }
  return std::make_shared<const std::vector<float>>(std::move(weight));
}

}  // namespace

FakeQuantLinear::FakeQuantLinear(std::vector<float> weight, std::int64_t n, std::vector<std::int32_t> perm,
                                 ActivationQuant act, cpu::InputOrder order, std::vector<float> bias,
                                 std::string name)
    : n_(n),
      weight_(checked_weight(std::move(weight), n, static_cast<std::int64_t>(perm.size()), bias, name)),
      bias_(std::move(bias)),
      perm_(std::move(perm)),
      act_(act),
      order_(order),
      name_(std::move(name)) {
  const auto k = static_cast<std::int64_t>(perm_.size());
  validate_perm(perm_, k, name_.c_str());
  if (act_.enabled) {
    const std::int64_t k_normal = k - act_.n_outliers;
    if (act_.n_outliers < 0 || k_normal <= 0 || act_.group <= 0 || k_normal % act_.group != 0) {
      fail("{}: activation groups of {} do not tile {} normal channels ({} outliers)", name_, act_.group,
           k_normal, act_.n_outliers);
    }
    if (!(act_.clip > 0.0f && act_.clip <= 1.0f))
      fail("{}: activation clip ratio {} not in (0, 1]", name_, act_.clip);
  }
}

void FakeQuantLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  const auto k = static_cast<std::int64_t>(perm_.size());
  std::vector<float> xr(static_cast<std::size_t>(m * k));
  if (order_ == cpu::InputOrder::kOriginal) {
#pragma omp parallel for schedule(static) if (m > 1)
    for (std::int64_t r = 0; r < m; ++r) {
      for (std::int64_t j = 0; j < k; ++j) xr[r * k + j] = x[r * k + perm_[j]];
    }
  } else {
    std::copy(x, x + m * k, xr.begin());
  }
  fake_quantize_reordered(xr.data(), m, k, act_, xr.data());
  // Exact products of dequantized values (fp16 scale x small integer), summed in fp64: the rounding to fp32 at
  // the end is the only one that matters. Weights are widened a block of rows at a time.
  const std::vector<double> xd(xr.begin(), xr.end());
  const std::int64_t block = std::min<std::int64_t>(n_, kFakeQuantBlockRows);
  std::vector<double> wd(static_cast<std::size_t>(block * k)), yd(static_cast<std::size_t>(m * block));
  for (std::int64_t n0 = 0; n0 < n_; n0 += block) {
    const std::int64_t rows = std::min(block, n_ - n0);
    std::copy(weight_->begin() + n0 * k, weight_->begin() + (n0 + rows) * k, wd.begin());
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(rows),
                static_cast<blasint>(k), 1.0, xd.data(), static_cast<blasint>(k), wd.data(),
                static_cast<blasint>(k), 0.0, yd.data(), static_cast<blasint>(rows));
    for (std::int64_t r = 0; r < m; ++r) {
      for (std::int64_t j = 0; j < rows; ++j) {
        float v = static_cast<float>(yd[r * rows + j]);
        if (!bias_.empty()) v += bias_[static_cast<std::size_t>(n0 + j)];
        y[r * n_ + n0 + j] = v;
      }
    }
  }
}

std::string FakeQuantLinear::describe() const {
  std::string act = "a fp32";
  if (act_.enabled) {
    act = fmt::format("a {} g{} clip {}", format_name(act_.format), act_.group, act_.clip);
    if (act_.n_outliers > 0)
      act +=
          fmt::format(" + {} {} outliers", act_.n_outliers, outlier_precision_name(act_.outlier_precision));
  }
  return fmt::format("fake-quant ({}) [{} x {}]{}", act, n_, perm_.size(),
                     bias_.empty() ? "" : " + bias");
}

// ---- ops of a quantized model

std::unique_ptr<cpu::LinearOp> make_linear_op(const QuantizedLinear& linear, const QuantRecipe& recipe,
                                              Execution execution, cpu::InputOrder order,
                                              const std::string& name) {
  const QuantizedLinearWeights& q = linear.weights;
  if (execution == Execution::kInteger) {
    if (!recipe.has_integer_form()) {
      fail("{}: {} outliers have no integer kernel (fake-quant execution only)", name,
           outlier_precision_name(recipe.outlier_precision));
    }
    if (recipe.quantize_activations)
      return std::make_unique<cpu::AtomLinear>(q, recipe.a_clip, name, order, linear.bias);
    return std::make_unique<cpu::WeightOnlyLinear>(q, name, order, linear.bias);
  }
  validate(q, name.c_str());
  std::vector<float> w = dequantize(q);  // reordered order: normal columns, then outliers
  if (!linear.fp16_outlier_columns.empty()) {
    if (static_cast<std::int64_t>(linear.fp16_outlier_columns.size()) != q.n * q.n_outliers) {
      fail("{}: {} fp16 outlier weights for [{} x {}]", name, linear.fp16_outlier_columns.size(), q.n,
           q.n_outliers);
    }
    const std::int64_t k = q.k();
    for (std::int64_t r = 0; r < q.n; ++r) {
      std::copy_n(linear.fp16_outlier_columns.data() + r * q.n_outliers, q.n_outliers,
                  w.data() + r * k + q.k_normal);
    }
  }
  return std::make_unique<FakeQuantLinear>(std::move(w), q.n, q.perm,
                                           activation_quant(recipe, q.k_normal, q.n_outliers), order,
                                           linear.bias, name);
}

cpu::KvRowStoreFactory kv_store_factory(int kv_bits, std::int64_t kv_group_size) {
  switch (kv_bits) {
    case 4:
      return cpu::kv_row_store_factory(cpu::KvDType::U4, kv_group_size);
    case 8:
      return cpu::kv_row_store_factory(cpu::KvDType::U8, kv_group_size);
    case 16:
      return cpu::kv_row_store_factory(cpu::KvDType::F32, kv_group_size);
  }
  fail("KV cache: {} bits is not 4, 8 or 16", kv_bits);
}

namespace {

bool is_identity(std::span<const std::int32_t> perm) {
  for (std::size_t i = 0; i < perm.size(); ++i) {
    if (perm[i] != static_cast<std::int32_t>(i)) return false;
  }
  return true;
}

std::vector<std::int32_t> shared_perm(std::initializer_list<const QuantizedLinear*> linears, int layer,
                                      const char* what) {
  const std::vector<std::int32_t>& perm = (*linears.begin())->weights.perm;
  for (const QuantizedLinear* l : linears) {
    if (l->weights.perm != perm)
      fail("layer {}: the {} projections do not share one input permutation", layer, what);
  }
  return is_identity(perm) ? std::vector<std::int32_t>{} : perm;
}

// A layer's shards must be what its recipe says: tensor_parallel shards of o_proj and down_proj, or none.
void check_shards(const QuantizedLayer& ql, const QuantRecipe& recipe, int layer) {
  const std::size_t want = recipe.tensor_parallel > 1 ? static_cast<std::size_t>(recipe.tensor_parallel) : 0;
  if (ql.o_proj_shards.size() != want || ql.down_proj_shards.size() != want) {
    fail("layer {}: the recipe says tensor_parallel {}, the model holds {} o_proj and {} down_proj shards", layer,
         recipe.tensor_parallel, ql.o_proj_shards.size(), ql.down_proj_shards.size());
  }
}

std::vector<std::unique_ptr<cpu::LinearOp>> shard_ops(const std::vector<QuantizedLinear>& shards,
                                                      const QuantRecipe& recipe, Execution execution,
                                                      cpu::InputOrder order, const std::string& name) {
  std::vector<std::unique_ptr<cpu::LinearOp>> ops;
  for (std::size_t r = 0; r < shards.size(); ++r)
    ops.push_back(make_linear_op(shards[r], recipe, execution, order, fmt::format("{}.tp_shards.{}", name, r)));
  return ops;
}

// Entries [range.begin, range.end) of v (empty stays empty).
std::vector<float> slice_of(const std::vector<float>& v, dist::ChannelRange range) {
  if (v.empty()) return v;
  return {v.begin() + range.begin, v.begin() + range.end};
}

// Output rows [range.begin, range.end) of a quantized linear, bias included.
QuantizedLinear rows_of(const QuantizedLinear& q, dist::ChannelRange range) {
  QuantizedLinear out;
  out.weights = output_rows(q.weights, range.begin, range.size());
  out.bias = slice_of(q.bias, range);
  return out;
}

}  // namespace

std::unique_ptr<cpu::LlamaModel> build_cpu_model_rank(const QuantizedModel& model, Execution execution,
                                                      dist::Communicator& comm) {
  const QuantRecipe& recipe = model.recipe;
  const ModelConfig& c = model.config;
  const int world = comm.world_size(), rank = comm.rank();
  if (recipe.tensor_parallel != world) {
    fail("a model quantized for tensor_parallel {} cannot run on {} ranks: each rank needs whole groups and its own "
         "outliers of o_proj and down_proj (re-quantize with --tensor-parallel {})",
         recipe.tensor_parallel, world, world);
  }
  const dist::TensorParallelShard shard = dist::tensor_parallel_shard(c, world, rank);
  const dist::ChannelRange q = shard.q_channels(c.head_dim), kv = shard.kv_channels(c.head_dim);
  const auto reordered = cpu::InputOrder::kReordered, original = cpu::InputOrder::kOriginal;
  std::vector<cpu::DecoderLayer> layers;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const QuantizedLayer& ql = model.layers[i];
    const int li = static_cast<int>(i);
    check_shards(ql, recipe, li);
    cpu::DecoderLayer l;
    l.input_norm = ql.input_norm;
    l.post_attention_norm = ql.post_attention_norm;
    l.attn_perm = shared_perm({&ql.q_proj, &ql.k_proj, &ql.v_proj}, li, "q/k/v");
    l.mlp_perm = shared_perm({&ql.gate_proj, &ql.up_proj}, li, "gate/up");
    l.q_proj = make_linear_op(rows_of(ql.q_proj, q), recipe, execution, reordered, linear_name(li, "self_attn.q_proj"));
    l.k_proj = make_linear_op(rows_of(ql.k_proj, kv), recipe, execution, reordered, linear_name(li, "self_attn.k_proj"));
    l.v_proj = make_linear_op(rows_of(ql.v_proj, kv), recipe, execution, reordered, linear_name(li, "self_attn.v_proj"));
    const QuantizedLinear& o_shard = world > 1 ? ql.o_proj_shards[static_cast<std::size_t>(rank)] : ql.o_proj;
    const QuantizedLinear& down_shard = world > 1 ? ql.down_proj_shards[static_cast<std::size_t>(rank)] : ql.down_proj;
    l.o_proj = std::make_unique<cpu::RowParallelLinear>(
        make_linear_op(o_shard, recipe, execution, original, linear_name(li, "self_attn.o_proj")), comm,
        ql.o_proj.bias);
    // This rank's intermediate channels, in its down_proj shard's input order (down_hadamard is refused at
    // tensor_parallel > 1; at 1 it keeps the original order as build_cpu_model does).
    QuantizedLinear gate = rows_of(ql.gate_proj, shard.intermediate), up = rows_of(ql.up_proj, shard.intermediate);
    if (!recipe.down_hadamard) {
      permute_output_rows(gate, down_shard.weights.perm);
      permute_output_rows(up, down_shard.weights.perm);
    }
    l.gate_proj = make_linear_op(gate, recipe, execution, reordered, linear_name(li, "mlp.gate_proj"));
    l.up_proj = make_linear_op(up, recipe, execution, reordered, linear_name(li, "mlp.up_proj"));
    l.down_proj = std::make_unique<cpu::RowParallelLinear>(
        make_linear_op(down_shard, recipe, execution, recipe.down_hadamard ? original : reordered,
                       linear_name(li, "mlp.down_proj")),
        comm);
    if (recipe.kv_center_keys == ql.key_center.empty() || recipe.kv_center_values == ql.value_center.empty()) {
      fail("layer {}: the recipe centers the KV cache's {}, the model holds {} key and {} value centering values",
           li, recipe.kv_centering_name(), ql.key_center.size(), ql.value_center.size());
    }
    l.key_center = slice_of(ql.key_center, kv);
    l.value_center = slice_of(ql.value_center, kv);
    layers.push_back(std::move(l));
  }
  cpu::VocabParallelEnds ends =
      cpu::vocab_parallel_ends(*model.embed_tokens, model.lm_head.get(), shard, c, comm);
  auto m = std::make_unique<cpu::LlamaModel>(shard.local_config(c), nullptr, std::move(layers), model.final_norm,
                                             std::move(ends.lm_head), std::move(ends.embedding));
  m->set_kv_store_factory(kv_store_factory(recipe.kv_bits, recipe.kv_group_size), recipe.kv_group_size);
  apply_online_transforms(*m, recipe);
  return m;
}

std::unique_ptr<cpu::LlamaModel> build_cpu_model(const QuantizedModel& model, Execution execution) {
  const QuantRecipe& recipe = model.recipe;
  std::vector<cpu::DecoderLayer> layers;
  layers.reserve(model.layers.size());
  const auto reordered = cpu::InputOrder::kReordered, original = cpu::InputOrder::kOriginal;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const QuantizedLayer& ql = model.layers[i];
    const int li = static_cast<int>(i);
    cpu::DecoderLayer l;
    l.input_norm = ql.input_norm;
    l.post_attention_norm = ql.post_attention_norm;
    l.attn_perm = shared_perm({&ql.q_proj, &ql.k_proj, &ql.v_proj}, li, "q/k/v");
    l.mlp_perm = shared_perm({&ql.gate_proj, &ql.up_proj}, li, "gate/up");
    l.q_proj = make_linear_op(ql.q_proj, recipe, execution, reordered, linear_name(li, "self_attn.q_proj"));
    l.k_proj = make_linear_op(ql.k_proj, recipe, execution, reordered, linear_name(li, "self_attn.k_proj"));
    l.v_proj = make_linear_op(ql.v_proj, recipe, execution, reordered, linear_name(li, "self_attn.v_proj"));
    check_shards(ql, recipe, li);
    if (ql.sharded()) {
      l.o_proj = std::make_unique<cpu::ShardedInputLinear>(
          shard_ops(ql.o_proj_shards, recipe, execution, original, linear_name(li, "self_attn.o_proj")),
          ql.o_proj.bias);
    } else {
      l.o_proj = make_linear_op(ql.o_proj, recipe, execution, original, linear_name(li, "self_attn.o_proj"));
    }
    // gate/up output rows in down_proj's input order: SiLU(gate) * up arrives at down_proj reordered (sharded:
    // each shard's range in that shard's order). Not under R4: the Hadamard needs the original order, so
    // down_proj then reorders its input at run time.
    QuantizedLinear gate = ql.gate_proj, up = ql.up_proj;
    if (!recipe.down_hadamard) {
      const std::vector<std::int32_t> down_order =
          ql.sharded() ? sharded_input_order(ql.down_proj_shards) : ql.down_proj.weights.perm;
      permute_output_rows(gate, down_order);
      permute_output_rows(up, down_order);
    }
    l.gate_proj = make_linear_op(gate, recipe, execution, reordered, linear_name(li, "mlp.gate_proj"));
    l.up_proj = make_linear_op(up, recipe, execution, reordered, linear_name(li, "mlp.up_proj"));
    if (ql.sharded()) {
      l.down_proj = std::make_unique<cpu::ShardedInputLinear>(
          shard_ops(ql.down_proj_shards, recipe, execution, reordered, linear_name(li, "mlp.down_proj")));
    } else {
      l.down_proj = make_linear_op(ql.down_proj, recipe, execution, recipe.down_hadamard ? original : reordered,
                                   linear_name(li, "mlp.down_proj"));
    }
    if (recipe.kv_center_keys == ql.key_center.empty() || recipe.kv_center_values == ql.value_center.empty()) {
      fail("layer {}: the recipe centers the KV cache's {}, the model holds {} key and {} value centering values",
           li, recipe.kv_centering_name(), ql.key_center.size(), ql.value_center.size());
    }
    l.key_center = ql.key_center;
    l.value_center = ql.value_center;
    layers.push_back(std::move(l));
  }
  std::unique_ptr<cpu::LinearOp> lm_head;
  if (model.lm_head) {
    lm_head =
        std::make_unique<cpu::DenseLinear>(model.lm_head, model.config.vocab_size, model.config.hidden_size);
  }
  auto m = std::make_unique<cpu::LlamaModel>(model.config, model.embed_tokens, std::move(layers),
                                             model.final_norm, std::move(lm_head));
  recipe.kv_group_for(model.config.head_dim);  // a group that does not divide head_dim fails here, naming it
  m->set_kv_store_factory(kv_store_factory(recipe.kv_bits, recipe.kv_group_size), recipe.kv_group_size);
  apply_online_transforms(*m, recipe);
  return m;
}

}  // namespace atom::quant
