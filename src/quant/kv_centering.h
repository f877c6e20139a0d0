#pragma once
// KV centering (docs/FORMAT.md, "KV centering"): per layer, the mean key and value rows over the calibration
// tokens, which the runtime subtracts before the KV cache quantizes a row. A key row's mean over tokens is far
// from zero on some channels (a constant the whole row carries), which widens every token's range and with it the
// UINT4 step; subtracting it costs nothing in exactness (softmax ignores a shift that is the same for all keys of
// a query; the value mean is added back to the attention output).
#include <cstdint>
#include <span>
#include <vector>

#include "backend/cpu/llama_model.h"
#include "format/recipe.h"

namespace atom::quant {

// Sums rows of width `width` (fp64) and hands out their mean.
class RowMeanAccumulator {
 public:
  explicit RowMeanAccumulator(std::int64_t width) : sum_(static_cast<std::size_t>(width), 0.0) {}
  void add(const float* rows, std::int64_t n);
  std::int64_t rows() const { return rows_; }
  // The mean of every row added so far, rounded to fp32; throws atom::Error when none was.
  std::vector<float> mean() const;

 private:
  std::vector<double> sum_;
  std::int64_t rows_ = 0;
};

struct KvCenters {
  std::vector<std::vector<float>> keys, values;  // [layers][num_kv_heads * head_dim]; empty: not centered
};

// The centering vectors of `model` as the recipe asks for them (kv_center_keys / kv_center_values): per layer the
// mean of the rows the model hands its KV cache (keys after RoPE and the model's Q/K transform) over the recipe's
// calibration windows of `calib_tokens` (calib_windows x calib_len from calib_seed, each a sequence from
// position 0: the windows the quantizer calibrates on). The model must not center its KV cache already.
// Throws atom::Error for a text shorter than one window.
KvCenters measure_kv_centers(const cpu::LlamaModel& model, std::span<const std::int32_t> calib_tokens,
                             const QuantRecipe& recipe);

// Sets the centering vectors on every layer of `model`.
void set_kv_centers(cpu::LlamaModel& model, const KvCenters& centers);

}  // namespace atom::quant
