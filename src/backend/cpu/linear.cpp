#include "backend/cpu/linear.h"

#include <cblas.h>

#include "common/error.h"

namespace atom::cpu {

DenseLinear::DenseLinear(std::shared_ptr<const std::vector<float>> weight, std::int64_t out_features,
                         std::int64_t in_features, std::vector<float> bias)
    : weight_(std::move(weight)), out_(out_features), in_(in_features), bias_(std::move(bias)) {
  ATOM_CHECK(weight_ != nullptr && out_ > 0 && in_ > 0);
  ATOM_CHECK(static_cast<std::int64_t>(weight_->size()) == out_ * in_);
  ATOM_CHECK(bias_.empty() || static_cast<std::int64_t>(bias_.size()) == out_);
}

void DenseLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  const auto M = static_cast<blasint>(m), N = static_cast<blasint>(out_), K = static_cast<blasint>(in_);
  if (m == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, weight_->data(), K, x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, weight_->data(), K, 0.0f, y, N);
  }
  if (!bias_.empty()) {
    for (std::int64_t i = 0; i < m; ++i) {
      float* row = y + i * out_;
      for (std::int64_t j = 0; j < out_; ++j) row[j] += bias_[static_cast<std::size_t>(j)];
    }
  }
}

std::string DenseLinear::describe() const {
  return fmt::format("dense f32 [{} x {}]{}", out_, in_, bias_.empty() ? "" : " + bias");
}

}  // namespace atom::cpu
