#pragma once
// One entry point for the CPU backend to load any checkpoint Atom reads (the CLI, eval and server use it):
//  - a plain checkpoint (GGUF file, Hugging Face directory): the fp32 decoder (dense linear layers);
//  - an Atom checkpoint (atom quantize's output): its integer linears (AtomLinear for W4A4/W3A3/FP4/W8A8,
//    WeightOnlyLinear for W4A16), channel permutations fused into the norms, and its KV cache format
//    (INT4/INT8 asymmetric per token per head) as the model's default cache store, and its lm_head (tied:
//    the embeddings) read as int8 with per-row scales (Int8Linear: a quarter of the fp32 bytes a decode step
//    reads for it), or as fp16 / fp32 when ATOM_CPU_LM_HEAD says so.
#include <memory>

#include "backend/cpu/llama_model.h"
#include "io/checkpoint.h"

namespace atom::cpu {

// Throws atom::Error naming the file / tensor / field at fault (a bad Atom checkpoint is refused whole).
std::unique_ptr<LlamaModel> load_cpu_model(const Checkpoint& checkpoint);

// How the integer path reads a dense fp32 lm_head: kInt8 (Int8Linear), kF16 (HalfLinear) or kF32 (as stored).
enum class LmHeadPrecision : std::uint8_t { kF32, kF16, kInt8 };

// The precision load_cpu_model uses: ATOM_CPU_LM_HEAD=f32|f16|int8 when set (anything else is an error),
// int8 otherwise.
LmHeadPrecision lm_head_precision_from_env();
LmHeadPrecision parse_lm_head_precision(const std::string& name);  // "f32", "f16", "int8"

// Replaces a dense fp32 lm_head (no bias) with one of the same weight in `precision`; any other lm_head
// stays.
void use_lm_head_precision(LlamaModel& model, LmHeadPrecision precision);

}  // namespace atom::cpu
