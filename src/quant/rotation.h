#pragma once
// Rotations of a Llama-family model before quantization (QuaRot / SpinQuant placement), each switched on by a
// recipe field (quant/recipe.h) and composing with any recipe. M_n below is the normalized Hadamard transform
// of quant/hadamard.h (y = M x); "randomized" means with the random sign diagonal from a seed.
//
// Offline (the weights change, the fp model computes the same function):
//  - fold_norms: every RMSNorm weight g multiplied into the columns of the linears reading it (q/k/v by
//    input_layernorm, gate/up by post_attention_layernorm, lm_head by the final norm); the norms become 1.
//    A tied lm_head is untied first (the embeddings are not scaled).
//  - rotate_residual (R1): residual vectors h become M1 h, M1 = randomized M_hidden (seed rotation_seed):
//    embedding rows e -> M1 e; rows w of q/k/v/gate/up/lm_head -> M1 w; columns of o_proj and down_proj
//    (and an o_proj bias) -> M1 c. RMSNorm (weight 1) commutes with M1.
//  - rotate_values (R2): each head's value vector v becomes M2 v, M2 = randomized M_head_dim (seed
//    rotation_seed + 1): per kv head, the columns of v_proj's rows of that head (and its bias) -> M2 c; each
//    head's segment of every o_proj row -> M2 w.
//  - down_hadamard (R4, weight side): rows w of down_proj -> M4 w, M4 = M_intermediate (not randomized).
// Online (at run time, every runtime of the checkpoint):
//  - qk_hadamard: after RoPE, each head vector of Q and K -> M3 x, M3 = M_head_dim (not randomized), before
//    K is stored in the KV cache; q.k is unchanged.
//  - down_hadamard (R4): down_proj's input x (SiLU(gate) * up, original channel order) -> M4 x, before
//    down_proj's channel reorder and activation quantization.
#include <cstdint>
#include <memory>
#include <string>

#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "model/weights.h"
#include "quant/hadamard.h"
#include "quant/quantizer.h"
#include "quant/recipe.h"

namespace atom::quant {

// The offline rotations of `recipe` applied to the weights as they are loaded (embeddings and lm_head at
// once, each layer when the source hands it over). The result's config is untied when norms are folded.
// Throws atom::Error naming the size when a rotated width has no Hadamard construction.
ModelSource rotate_model_source(ModelSource source, const QuantRecipe& recipe);

// Every layer of a source, as fp32 weights (tests; the error attribution's fp model).
LlamaWeights materialize(ModelSource source);

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
