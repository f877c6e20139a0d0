#pragma once
// The fp32 weights of a Llama-family model, handed out a decoder layer at a time, so that a consumer (the
// quantizer, the CUDA backend's fp16 upload) holds about one layer in memory besides the embeddings.
#include <functional>
#include <memory>
#include <vector>

#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/model_config.h"
#include "model/weights.h"

namespace atom {

struct ModelSource {
  ModelConfig config;
  std::shared_ptr<const std::vector<float>> embed_tokens;
  DType embed_dtype = DType::F32;
  std::vector<float> final_norm;
  std::shared_ptr<const std::vector<float>> lm_head;  // null when tied
  DType lm_head_dtype = DType::F32;
  std::function<LayerWeights(int layer)>
      layer;  // loads (or hands over) layer i's weights; called once per layer
};
// Reads layers from the checkpoint on demand (the checkpoint must outlive the source). Throws atom::Error for
// missing or mis-shaped tensors and for decoder-layer tensors the architecture does not use.
ModelSource model_source(const Checkpoint& checkpoint);
// From weights already in memory (each layer is handed over once).
ModelSource model_source(LlamaWeights weights);

}  // namespace atom
