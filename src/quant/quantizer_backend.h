#pragma once
// Where the quantizer's heavy work runs. quantize_model (quantizer.h) holds the one control flow of a run:
// which input comes next, smoothing, the channel order, the recipe's choices, the report. It asks a
// QuantizerBackend for the numbers: the calibration forward over the windows, per-channel statistics, the
// Hessian, GPTQ and the clip search's error. The CPU backend (cpu_quantizer_backend.h) runs them with the
// CPU backend's kernels; the CUDA backend (quant/cuda/cuda_quantizer_backend.h) on a GPU, holding the
// windows' hidden states in GPU memory. Both follow the same rules (the format's codes, fake-quantized
// inputs, fp64 products), so they agree up to floating-point summation order.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "format/quantized_model.h"
#include "format/recipe.h"
#include "io/model_config.h"
#include "quant/calibration.h"
#include "quant/gptq.h"

namespace atom::quant {

// Per-channel statistics of one linear input over the calibration tokens (original channel order).
struct ChannelStats {
  std::vector<double> sum_sq;  // sum over tokens of x^2
  std::vector<float> absmax;   // max over tokens of |x|
};

// What GPTQ and the clip search need of one linear input, computed once after its channel order is chosen:
// the Hessian of the input as the activation quantizer leaves it, and rows sampled for the clip search. Held
// where the backend computes (host or GPU memory); only the backend that made it reads it.
class InputMoments {
 public:
  virtual ~InputMoments() = default;
};

// Calibration rows the clip search evaluates the output error on (spread evenly over the windows).
constexpr std::int64_t kClipSampleRows = 2048;

// The calibration input of one linear (or of the linears sharing it) for every window.
class CalibrationInput {
 public:
  virtual ~CalibrationInput() = default;
  virtual std::int64_t width() const = 0;
  virtual ChannelStats channel_stats() = 0;
  // perm: the chosen channel order; act: how the input is quantized at run time. hessian: accumulate the
  // GPTQ Hessian of the fake-quantized input; sample: keep kClipSampleRows rows for the clip search.
  virtual std::unique_ptr<InputMoments> moments(std::span<const std::int32_t> perm, const ActivationQuant& act,
                                                bool hessian, bool sample) = 0;
  // The windows' hidden states += linear(input): the residual branch through the quantized output projection.
  virtual void add_projection(const QuantizedLinear& linear, const std::string& name) = 0;

  // Tensor-parallel layouts (recipe.tensor_parallel > 1) quantize o_proj and down_proj per shard of their input
  // channels. columns: channels [begin, end) of this input as an input of their own (statistics, Hessian and
  // clip samples of the shard alone); add_sharded_projection: the residual branch through the shards, shard r
  // reading the next shards[r] input channels, partial outputs summed in shard order, then `bias` (empty: none).
  // Backends that do not implement them refuse tensor-parallel layouts.
  virtual std::unique_ptr<CalibrationInput> columns(std::int64_t begin, std::int64_t end) {
    (void)begin, (void)end;
    fail("this quantizer backend does not quantize tensor-parallel layouts (quantize with --device cpu)");
  }
  virtual void add_sharded_projection(std::span<const QuantizedLinear> shards, std::span<const float> bias,
                                      const std::string& name) {
    (void)shards, (void)bias;
    fail("{}: this quantizer backend does not quantize tensor-parallel layouts (quantize with --device cpu)", name);
  }
};

// The mean K and V rows of the calibration windows (K after RoPE and the Q/K transform), [kv_heads * head_dim]:
// the layer's KV centering vectors (format/recipe.h).
struct LayerKvCenters {
  std::vector<float> keys, values;
};

// A quantized linear with the name its errors carry.
struct NamedLinear {
  const QuantizedLinear* linear = nullptr;
  std::string name;
};

class QuantizerBackend {
 public:
  virtual ~QuantizerBackend() = default;

  // q/k/v's or gate/up's input: the RMSNorm of the hidden states with `norm_weight` (recomputed per visit).
  virtual std::unique_ptr<CalibrationInput> normed_input(std::span<const float> norm_weight) = 0;
  // The KV centering vectors of a layer: mean K and V rows through the quantized k/v on the RMSNorm of the
  // hidden states with `norm_weight`.
  virtual LayerKvCenters kv_centers(std::span<const float> norm_weight, NamedLinear k, NamedLinear v) = 0;
  // o_proj's input: attention through the quantized q/k/v and the recipe's KV store. keep: hold every
  // window's input between visits, else recompute it per visit. kv (optional) accumulates the store's error.
  // key_center / value_center (empty: none): the store holds k - c_k and v - c_v, the output gets c_v back.
  virtual std::unique_ptr<CalibrationInput> attention_input(std::span<const float> norm_weight, NamedLinear q,
                                                            NamedLinear k, NamedLinear v, bool keep,
                                                            KvErrorStats* kv, std::span<const float> key_center,
                                                            std::span<const float> value_center) = 0;
  // down_proj's input: SiLU(gate) * up through the quantized gate/up (then the recipe's Hadamard, if any).
  virtual std::unique_ptr<CalibrationInput> down_proj_input(std::span<const float> norm_weight, NamedLinear gate,
                                                            NamedLinear up, bool keep) = 0;

  // GPTQ of w [n, K] (original order) with the Hessian of `moments` (gptq_quantize's contract).
  virtual QuantizedLinearWeights gptq(std::span<const float> w, std::int64_t n, const InputMoments& moments,
                                      std::span<const std::int32_t> perm, const WeightQuantSpec& spec,
                                      const GptqOptions& options, const char* what, GptqReport* report) = 0;
  // linear_output_mse on the sampled rows of `moments`.
  virtual double output_mse(const InputMoments& moments, std::span<const float> w,
                            const QuantizedLinearWeights& q, const ActQuantSpec* act) = 0;

  // A short status for the progress line (e.g. GPU memory); empty when there is nothing to say.
  virtual std::string status() const { return {}; }
};

// What a backend starts from: the model's shape, the recipe, and the calibration windows (none when the
// recipe needs no calibration).
struct CalibrationSetup {
  ModelConfig config;
  QuantRecipe recipe;
  std::span<const float> embed_tokens;      // [vocab, hidden]
  std::span<const std::int32_t> tokens;     // the tokenized calibration text
  std::vector<std::int64_t> window_starts;  // empty: no calibration
  std::int64_t window_length = 0;
};

using QuantizerBackendFactory = std::function<std::unique_ptr<QuantizerBackend>(const CalibrationSetup&)>;

}  // namespace atom::quant
