#pragma once
// Rotations of a Llama-family model before quantization (QuaRot / SpinQuant placement), each switched on by a
// recipe field (format/recipe.h) and composing with any recipe. M_n below is the normalized Hadamard transform
// of backend/cpu/hadamard.h (y = M x); "randomized" means with the random sign diagonal from a seed.
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

#include "model/weights.h"
#include "backend/cpu/online_transforms.h"
#include "quant/quantizer.h"
#include "format/recipe.h"

namespace atom::quant {

// The offline rotations of `recipe` applied to the weights as they are loaded (embeddings and lm_head at
// once, each layer when the source hands it over). The result's config is untied when norms are folded.
// Throws atom::Error naming the size when a rotated width has no Hadamard construction.
ModelSource rotate_model_source(ModelSource source, const QuantRecipe& recipe);

// Every layer of a source, as fp32 weights (tests; the error attribution's fp model).
LlamaWeights materialize(ModelSource source);

}  // namespace atom::quant
