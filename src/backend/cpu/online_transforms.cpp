#include "backend/cpu/online_transforms.h"

#include <fmt/format.h>

#include "common/error.h"

namespace atom::quant {

std::shared_ptr<const HadamardTransform> make_hadamard_transform(std::int64_t n, bool randomized, std::uint64_t seed,
                                                        const char* what) {
  if (!has_hadamard(n)) {
    fail(
        "rotation {}: no Hadamard construction for size {} (backend/cpu/hadamard.h: n = K * 2^m, K from Paley I or "
        "II)",
        what, n);
  }
  return std::make_shared<const HadamardTransform>(n, randomized, seed);
}

std::shared_ptr<const HadamardTransform> qk_transform(const ModelConfig& config, const QuantRecipe& recipe) {
  if (!recipe.qk_hadamard) return nullptr;
  return make_hadamard_transform(config.head_dim, false, 0, "Q/K (head_dim)");
}

std::shared_ptr<const HadamardTransform> down_transform(const ModelConfig& config,
                                                        const QuantRecipe& recipe) {
  if (!recipe.down_hadamard) return nullptr;
  return make_hadamard_transform(config.intermediate_size, false, 0, "R4 (intermediate size)");
}

cpu::HeadTransform head_transform(std::shared_ptr<const HadamardTransform> t) {
  if (!t) return {};
  return [t](float* x, std::int64_t count) { t->apply(x, count); };
}

HadamardInputLinear::HadamardInputLinear(std::shared_ptr<const HadamardTransform> transform,
                                         std::unique_ptr<cpu::LinearOp> inner)
    : transform_(std::move(transform)), inner_(std::move(inner)) {
  ATOM_CHECK(transform_ && inner_);
  if (inner_->in_features() != transform_->size()) {
    fail("{}: input Hadamard of size {} for {} input features", inner_->describe(), transform_->size(),
         inner_->in_features());
  }
}

void HadamardInputLinear::forward(const float* x, std::int64_t m, float* y) const {
  const std::int64_t k = transform_->size();
  std::vector<float> xt(x, x + m * k);
  transform_->apply(xt.data(), m);
  inner_->forward(xt.data(), m, y);
}

std::string HadamardInputLinear::describe() const {
  return fmt::format("Hadamard({}) then {}", transform_->size(), inner_->describe());
}

void apply_online_transforms(cpu::LlamaModel& model, const QuantRecipe& recipe) {
  const ModelConfig& c = model.config();
  if (recipe.qk_hadamard) model.set_qk_transform(head_transform(qk_transform(c, recipe)));
  if (recipe.down_hadamard) {
    const auto t = down_transform(c, recipe);
    for (int i = 0; i < model.num_layers(); ++i) {
      cpu::DecoderLayer& l = model.layer(i);
      l.down_proj = std::make_unique<HadamardInputLinear>(t, std::move(l.down_proj));
    }
  }
}

}  // namespace atom::quant
