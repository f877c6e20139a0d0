#include "backend/cpu/atom_model_loader.h"

#include "backend/cpu/linear.h"
#include "backend/cpu/quantizer_ops.h"
#include "format/atom_checkpoint.h"
#include "model/weights.h"

namespace atom::cpu {

std::unique_ptr<LlamaModel> load_cpu_model(const Checkpoint& checkpoint) {
  if (quant::is_atom_checkpoint(checkpoint)) {
    auto model = quant::build_cpu_model(
        quant::load_atom_checkpoint(checkpoint, /*runs_online_transforms=*/true), quant::Execution::kInteger);
    use_fp16_lm_head(*model);
    return model;
  }
  return std::make_unique<LlamaModel>(load_llama_weights(checkpoint.config, *checkpoint.tensors));
}

void use_fp16_lm_head(LlamaModel& model) {
  const auto* dense = dynamic_cast<const DenseLinear*>(&model.lm_head());
  if (dense == nullptr || !dense->bias().empty()) return;
  model.set_lm_head(
      std::make_unique<HalfLinear>(*dense->shared_weight(), dense->out_features(), dense->in_features()));
}

}  // namespace atom::cpu
