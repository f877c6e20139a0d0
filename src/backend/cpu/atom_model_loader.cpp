#include "backend/cpu/atom_model_loader.h"

#include <cstdlib>

#include "backend/cpu/int8_linear.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "format/atom_checkpoint.h"
#include "model/weights.h"

namespace atom::cpu {

std::unique_ptr<LlamaModel> load_cpu_model(const Checkpoint& checkpoint) {
  if (quant::is_atom_checkpoint(checkpoint)) {
    auto model = quant::build_cpu_model(
        quant::load_atom_checkpoint(checkpoint, /*runs_online_transforms=*/true), quant::Execution::kInteger);
    use_lm_head_precision(*model, lm_head_precision_from_env());
    return model;
  }
  return std::make_unique<LlamaModel>(load_llama_weights(checkpoint.config, *checkpoint.tensors));
}

LmHeadPrecision parse_lm_head_precision(const std::string& name) {
  if (name == "f32") return LmHeadPrecision::kF32;
  if (name == "f16") return LmHeadPrecision::kF16;
  if (name == "int8") return LmHeadPrecision::kInt8;
  fail("lm_head precision '{}' is not f32, f16 or int8", name);
}

LmHeadPrecision lm_head_precision_from_env() {
  const char* name = std::getenv("ATOM_CPU_LM_HEAD");
  return name == nullptr || *name == '\0' ? LmHeadPrecision::kInt8 : parse_lm_head_precision(name);
}

void use_lm_head_precision(LlamaModel& model, LmHeadPrecision precision) {
  const auto* dense = dynamic_cast<const DenseLinear*>(&model.lm_head());
  if (dense == nullptr || !dense->bias().empty()) return;
  const std::vector<float>& w = *dense->shared_weight();
  switch (precision) {
    case LmHeadPrecision::kF32:
      return;
    case LmHeadPrecision::kF16:
      model.set_lm_head(std::make_unique<HalfLinear>(w, dense->out_features(), dense->in_features()));
      return;
    case LmHeadPrecision::kInt8:
      model.set_lm_head(std::make_unique<Int8Linear>(w, dense->out_features(), dense->in_features()));
      return;
  }
}

}  // namespace atom::cpu
