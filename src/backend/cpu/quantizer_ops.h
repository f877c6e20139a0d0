#pragma once
// Running a quantized model on the CPU, two ways:
//  - kInteger: the integer kernels of the stored format (cpu::AtomLinear, cpu::WeightOnlyLinear) and the
//    quantized KV store: what an Atom checkpoint runs as;
//  - kFakeQuant: quantize-dequantize in fp32 (the same codes and scales, from the format's scalar rules),
//    then an fp32 product. It also runs what has no integer form (FP16 outliers of the ablation), and is the
//    quantizer's own forward during calibration. The two differ only by fp32 rounding of the sums.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/atom_gemm.h"
#include "backend/cpu/kv_cache.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "dist/communicator.h"
#include "format/quantized_model.h"
#include "format/recipe.h"

namespace atom::quant {

enum class Execution : std::uint8_t { kInteger, kFakeQuant };

// How one linear's input is quantized at run time (per token), in the reordered channel order.
struct ActivationQuant {
  bool enabled = true;  // false: fp32 activations (weight-only)
  NumberFormat format = NumberFormat::kInt4;
  std::int64_t group = 128;  // group of the normal part (divides k_normal)
  std::int64_t n_outliers = 0;
  OutlierPrecision outlier_precision = OutlierPrecision::kInt8;
  float clip = 1.0f;
};
ActivationQuant activation_quant(const QuantRecipe& recipe, std::int64_t k_normal, std::int64_t n_outliers);

// x [m, k] in the reordered order -> dequantized values (codes and scales exactly as
// quant::quantize_activations computes them). x and out may be the same buffer.
void fake_quantize_reordered(const float* x, std::int64_t m, std::int64_t k, const ActivationQuant& spec,
                             float* out);

// Fake-quantized linear layer: weight [n, k] already dequantized in the reordered channel order; the input is
// gathered by perm (InputOrder::kOriginal) or taken as is (kReordered), fake-quantized, then multiplied with
// fp64 accumulation (dgemm) and rounded once to fp32. Why not an fp32 sgemm: its summation error (a few ulps
// of every output) is harmless in one layer but, on SmolLM2 W4A4, raises the perplexity by 2-5% over the exact
// product the integer kernels compute (docs/RESULTS.md); with fp64 sums both paths evaluate the same model.
class FakeQuantLinear final : public cpu::LinearOp {
 public:
  FakeQuantLinear(std::vector<float> weight, std::int64_t n, std::vector<std::int32_t> perm,
                  ActivationQuant act, cpu::InputOrder order, std::vector<float> bias, std::string name);
  std::int64_t in_features() const override { return static_cast<std::int64_t>(perm_.size()); }
  std::int64_t out_features() const override { return n_; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;

 private:
  std::int64_t n_;
  std::shared_ptr<const std::vector<float>> weight_;  // [n, k] dequantized (exact in fp32)
  std::vector<float> bias_;
  std::vector<std::int32_t> perm_;
  ActivationQuant act_;
  cpu::InputOrder order_;
  std::string name_;
};

// The LinearOp of a quantized linear. kInteger needs recipe.has_integer_form().
std::unique_ptr<cpu::LinearOp> make_linear_op(const QuantizedLinear& linear, const QuantRecipe& recipe,
                                              Execution execution, cpu::InputOrder order,
                                              const std::string& name);

// KV store of the recipe: UINT4 / UINT8 asymmetric per token, one (scale, minimum) per group of kv_group_size
// channels (0: per head), or fp32 (kv_bits 16).
cpu::KvRowStoreFactory kv_store_factory(int kv_bits, std::int64_t kv_group_size = 0);

// The whole model as a cpu::LlamaModel: permutations fused into the norms, o_proj reordering its input, KV
// cache store of the recipe set as the model's default, its KV centering vectors on the layers. Throws
// atom::Error when q/k/v (or gate/up) do not share one permutation, when the centering vectors do not match the
// recipe, or when kInteger is asked of a model without an integer form.
// A tensor-parallel layout (model.sharded()) runs on this one device with o_proj and down_proj as
// cpu::ShardedInputLinear: the shards' partial outputs summed in rank order, as the ranks' all-reduce does.
std::unique_ptr<cpu::LlamaModel> build_cpu_model(const QuantizedModel& model, Execution execution);

// Rank comm.rank() of a tensor-parallel run of `model` (cpu/tensor_parallel_llama.h's split): q/k/v and gate/up
// its rows of the stored codes (gate/up in its down_proj shard's input order), o_proj and down_proj its
// shards of a tensor-parallel checkpoint joined by the all-reduce, its KV heads' centering vectors and
// KV cache, the vocabulary-parallel fp32 embedding and lm_head. Throws atom::Error unless the model was
// quantized for comm.world_size() ranks (recipe.tensor_parallel; 1 runs only as one rank). `comm` must outlive
// the model.
std::unique_ptr<cpu::LlamaModel> build_cpu_model_rank(const QuantizedModel& model, Execution execution,
                                                      dist::Communicator& comm);

}  // namespace atom::quant
