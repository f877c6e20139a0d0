#include "backend/cpu/linear.h"

#include <cblas.h>
#include <omp.h>

#include <mutex>

#include <algorithm>

#include "common/error.h"

namespace atom::cpu {

DenseLinear::DenseLinear(std::shared_ptr<const std::vector<float>> weight, std::int64_t out_features,
                         std::int64_t in_features, std::vector<float> bias)
    : weight_(std::move(weight)), out_(out_features), in_(in_features), bias_(std::move(bias)) {
  ATOM_CHECK(weight_ != nullptr && out_ > 0 && in_ > 0);
  ATOM_CHECK(static_cast<std::int64_t>(weight_->size()) == out_ * in_);
  ATOM_CHECK(bias_.empty() || static_cast<std::int64_t>(bias_.size()) == out_);
}

void use_single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void DenseLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  use_single_threaded_blas();
  const std::int64_t work = m * out_ * in_;
  // Each OpenMP thread multiplies by its own block of weight rows (output features).
#pragma omp parallel if (work >= (1 << 16))
  {
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    constexpr std::int64_t kAlign = 16;
    const std::int64_t blocks = (out_ + kAlign - 1) / kAlign;
    const std::int64_t n0 = std::min(out_, blocks * t / threads * kAlign);
    const std::int64_t n1 = std::min(out_, blocks * (t + 1) / threads * kAlign);
    if (n1 > n0) {
      const auto M = static_cast<blasint>(m), N = static_cast<blasint>(n1 - n0), K = static_cast<blasint>(in_);
      const float* w = weight_->data() + n0 * in_;
      if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, x, 1, 0.0f, y + n0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y + n0,
                    static_cast<blasint>(out_));
      }
    }
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
