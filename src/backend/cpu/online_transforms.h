#pragma once
// The online (run-time) transforms a rotated recipe asks for (format/recipe.h, "rotation"): the Hadamard on
// Q and K after RoPE and on down_proj's input, applied by the CPU backend; the offline rotations that produce
// such a model are in quant/rotation.h.
#include <cstdint>
#include <memory>
#include <string>

#include "backend/cpu/hadamard.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "format/recipe.h"
#include "io/model_config.h"

namespace atom::quant {

// An orthogonal Hadamard transform of size n (randomized signs from `seed` when asked); throws atom::Error
// naming `what` and the size when n has no construction.
std::shared_ptr<const HadamardTransform> make_hadamard_transform(std::int64_t n, bool randomized, std::uint64_t seed,
                                                                 const char* what);

// The online transforms of a recipe (null when off).
std::shared_ptr<const HadamardTransform> qk_transform(const ModelConfig& config, const QuantRecipe& recipe);
std::shared_ptr<const HadamardTransform> down_transform(const ModelConfig& config, const QuantRecipe& recipe);
// As a LlamaModel / CalibrationWindows hook.
cpu::HeadTransform head_transform(std::shared_ptr<const HadamardTransform> t);

// A linear layer whose input is first transformed by an orthogonal Hadamard (down_proj under R4): the inner
// op must take the input in the original channel order.
class HadamardInputLinear final : public cpu::LinearOp {
 public:
  HadamardInputLinear(std::shared_ptr<const HadamardTransform> transform,
                      std::unique_ptr<cpu::LinearOp> inner);
  std::int64_t in_features() const override { return inner_->in_features(); }
  std::int64_t out_features() const override { return inner_->out_features(); }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;
  const cpu::LinearOp& inner() const { return *inner_; }

 private:
  std::shared_ptr<const HadamardTransform> transform_;
  std::unique_ptr<cpu::LinearOp> inner_;
};

// Sets the online transforms of `recipe` on a model: the Q/K hook, and down_proj of every layer wrapped in a
// HadamardInputLinear (its op must read the original channel order). No-op without online transforms.
void apply_online_transforms(cpu::LlamaModel& model, const QuantRecipe& recipe);

}  // namespace atom::quant
