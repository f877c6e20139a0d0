#include "format/quantized_model.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/error.h"

namespace atom::quant {

std::string linear_name(int layer, const char* linear) {
  return fmt::format("model.layers.{}.{}", layer, linear);
}

StorageSummary storage_summary(const QuantizedModel& model) {
  StorageSummary s;
  const ModelConfig& c = model.config;
  const auto size = [](const auto& v) { return static_cast<std::int64_t>(v.size()); };
  s.parameters =
      std::int64_t{c.vocab_size} * c.hidden_size * (model.lm_head ? 2 : 1) + size(model.final_norm);
  for (const QuantizedLayer& l : model.layers) {
    s.parameters += size(l.input_norm) + size(l.post_attention_norm);
    std::vector<const QuantizedLinear*> linears = {&l.q_proj,    &l.k_proj,  &l.v_proj,   &l.o_proj,
                                                   &l.gate_proj, &l.up_proj, &l.down_proj};
    for (const auto* shards : {&l.o_proj_shards, &l.down_proj_shards})
      for (const QuantizedLinear& shard : *shards) linears.push_back(&shard);
    for (const QuantizedLinear* q : linears) {
      const QuantizedLinearWeights& w = q->weights;
      s.linear_weights += w.n * w.k();
      s.parameters += w.n * w.k() + size(q->bias);
      s.code_bytes += size(w.packed);
      s.scale_bytes += 2 * size(w.scales);
      s.outlier_bytes += size(w.outliers) + 2 * size(w.outlier_scales);
      s.perm_bytes += 4 * size(w.perm);
      s.bias_bytes += 4 * size(q->bias);
    }
  }
  return s;
}

nlohmann::json to_json(const StorageSummary& s) {
  return {{"linear_weights", s.linear_weights}, {"code_bytes", s.code_bytes},
          {"scale_bytes", s.scale_bytes},       {"outlier_bytes", s.outlier_bytes},
          {"perm_bytes", s.perm_bytes},         {"bias_bytes", s.bias_bytes},
          {"linear_bytes", s.linear_bytes()},   {"bits_per_weight", s.bits_per_weight()},
          {"parameters", s.parameters},         {"fp16_model_bytes", s.fp16_model_bytes()}};
}

QuantizedLinearWeights output_rows(const QuantizedLinearWeights& q, std::int64_t first, std::int64_t n) {
  ATOM_CHECK(first >= 0 && n >= 0 && first + n <= q.n);
  QuantizedLinearWeights out = q;
  out.n = n;
  const auto slice = [&](auto& dst, const auto& src, std::int64_t width) {
    dst.assign(src.begin() + first * width, src.begin() + (first + n) * width);
  };
  slice(out.packed, q.packed, format_row_bytes(q.format, q.k_normal));
  slice(out.scales, q.scales, q.k_normal / q.group);
  slice(out.outliers, q.outliers, q.n_outliers);
  slice(out.outlier_scales, q.outlier_scales, q.n_outliers > 0 ? 1 : 0);
  return out;
}

std::vector<std::int32_t> sharded_input_order(std::span<const QuantizedLinear> shards) {
  std::vector<std::int32_t> order;
  std::int32_t first = 0;
  for (const QuantizedLinear& shard : shards) {
    for (const std::int32_t j : shard.weights.perm) order.push_back(first + j);
    first += static_cast<std::int32_t>(shard.weights.perm.size());
  }
  return order;
}

void permute_output_rows(QuantizedLinear& linear, std::span<const std::int32_t> order) {
  QuantizedLinearWeights& q = linear.weights;
  validate_perm(order, q.n, "output row order");
  const auto gather = [&](auto& data, std::int64_t row_width) {
    if (row_width == 0) return;
    auto copy = data;
    for (std::int64_t r = 0; r < q.n; ++r) {
      std::copy_n(copy.begin() + order[r] * row_width, row_width, data.begin() + r * row_width);
    }
  };
  gather(q.packed, format_row_bytes(q.format, q.k_normal));
  gather(q.scales, q.k_normal / q.group);
  gather(q.outliers, q.n_outliers);
  gather(q.outlier_scales, q.n_outliers > 0 ? 1 : 0);
  if (!linear.fp16_outlier_columns.empty()) gather(linear.fp16_outlier_columns, q.n_outliers);
  if (!linear.bias.empty()) gather(linear.bias, 1);
}

}  // namespace atom::quant
