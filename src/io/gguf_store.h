#pragma once
// A GGUF file (llama.cpp naming) as a TensorStore under Hugging Face names and shapes, and its
// ModelConfig. Supported GGUF architectures: "llama" (also written for Mistral) and "qwen2".
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "io/gguf.h"
#include "io/model_config.h"
#include "io/tensor_store.h"

namespace atom {

// Tensors under HF names ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; names it
// does not know keep their GGUF name), with shapes in HF order (GGUF's ne reversed). Data stays in the
// mapped file. For arch "llama", load_f32 of q_proj/k_proj (weight and bias) undoes the row permutation
// of llama.cpp's converter, so it returns HF order. Throws atom::Error for other architectures.
std::unique_ptr<TensorStore> make_gguf_tensor_store(std::shared_ptr<const GgufFile> file);

// The HF name of a GGUF tensor name (itself when there is no mapping).
std::string hf_tensor_name(std::string_view gguf_name);

// Undoes convert_hf_to_gguf.py's permute(w, n_head, n_head_kv) on a [rows, cols] row-major matrix (or a
// bias: cols = 1): within each of the n_head heads of rows / n_head rows, GGUF row 2i + s holds HF row
// s * (rows / n_head / 2) + i. n_head is the head count of that projection (the KV head count for k_proj).
// Throws atom::Error naming `tensor` unless rows is a multiple of 2 * n_head.
void unpermute_llama_qk_rows(std::string_view tensor, float* data, std::int64_t rows, std::int64_t cols,
                             int n_head);

// ModelConfig from {arch}.* metadata and tensor shapes, validated (ModelConfig::validate). Throws
// atom::Error naming the file and key for a missing or ill-typed key and for an unsupported
// general.architecture or rope scaling.
ModelConfig model_config_from_gguf(const GgufFile& file);

}  // namespace atom
