#include "backend/cpu/atom_model_loader.h"

#include "backend/cpu/quantizer_ops.h"
#include "format/atom_checkpoint.h"
#include "model/weights.h"

namespace atom::cpu {

std::unique_ptr<LlamaModel> load_cpu_model(const Checkpoint& checkpoint) {
  if (quant::is_atom_checkpoint(checkpoint)) {
    return quant::build_cpu_model(quant::load_atom_checkpoint(checkpoint, /*runs_online_transforms=*/true),
                                  quant::Execution::kInteger);
  }
  return std::make_unique<LlamaModel>(load_llama_weights(checkpoint.config, *checkpoint.tensors));
}

}  // namespace atom::cpu
