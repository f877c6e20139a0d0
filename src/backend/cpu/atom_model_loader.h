#pragma once
// One entry point for the CPU backend to load any checkpoint Atom reads (the CLI, eval and server use it):
//  - a plain checkpoint (GGUF file, Hugging Face directory): the fp32 decoder (dense linear layers);
//  - an Atom checkpoint (atom quantize's output): its integer linears (AtomLinear for W4A4/W3A3/FP4/W8A8,
//    WeightOnlyLinear for W4A16), channel permutations fused into the norms, and its KV cache format
//    (INT4/INT8 asymmetric per token per head) as the model's default cache store, and its lm_head (tied:
//    the embeddings) read as fp16 (HalfLinear: half the bytes a decode step reads for it).
#include <memory>

#include "backend/cpu/llama_model.h"
#include "io/checkpoint.h"

namespace atom::cpu {

// Throws atom::Error naming the file / tensor / field at fault (a bad Atom checkpoint is refused whole).
std::unique_ptr<LlamaModel> load_cpu_model(const Checkpoint& checkpoint);

// Replaces a dense fp32 lm_head (no bias) with a HalfLinear of the same weight; any other lm_head stays.
void use_fp16_lm_head(LlamaModel& model);

}  // namespace atom::cpu
