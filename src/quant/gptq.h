#pragma once
// Weight quantization of one linear layer into the Atom format (docs/FORMAT.md): round to nearest (RTN) or
// GPTQ (Frantar et al. 2022, as run by the Atom reference): columns in the reordered channel order,
// Cholesky of the damped inverse Hessian, lazy block updates, group scales computed when a group starts,
// and the outlier columns (last n_outliers) rounded to INT8 at the end, after they received the error
// feedback of every normal column.
#include <cstdint>
#include <span>
#include <vector>

#include "format/format.h"

namespace atom::quant {

struct WeightQuantSpec {
  NumberFormat format = NumberFormat::kInt4;
  std::int64_t group = 128;
  std::int64_t n_outliers = 0;
  float clip = 1.0f;  // weight clip ratio (Atom: 0.85)
};

struct GptqOptions {
  double percdamp = 0.01;     // damping = percdamp * mean(diag(H))
  std::int64_t block = 128;   // columns per lazy-update block
  bool static_groups = false; // true: all group scales from the weights before any update
  int damp_retries = 2;       // on a failed Cholesky, retry with damping x10 each time
};

struct GptqReport {
  double loss = 0.0;           // sum over normal columns of (w - q)^2 / Hinv_cc^2 / 2 (GPTQ's proxy loss)
  double damp = 0.0;           // damping added to the diagonal in the end
  int retries = 0;             // Cholesky retries needed
  std::int64_t dead_columns = 0;  // channels never active in the calibration (weights zeroed)
};

// Running H = 2/n * sum over rows x of x^T x (the GPTQ Hessian of ||X W^T - X Q^T||^2), fp64 accumulation.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(std::int64_t k);
  void add(const float* x, std::int64_t m);  // x [m, k]
  std::int64_t k() const { return k_; }
  std::int64_t samples() const { return samples_; }
  std::vector<double> hessian() const;  // [k, k] symmetric; all zeros before any sample
  std::vector<double> diagonal_sum_of_squares() const;  // [k]: sum over rows of x^2 per channel

 private:
  std::int64_t k_;
  std::int64_t samples_ = 0;
  std::vector<double> sum_;  // upper triangle of sum x^T x, row-major [k, k]
};

// w [n, K] and hessian [K, K] in the ORIGINAL channel order; perm as in FORMAT.md (reordered column j is
// original channel perm[j]; the last spec.n_outliers are the outliers). Throws atom::Error naming `what`
// on bad sizes, or when the Hessian stays non-positive-definite after the damping retries.
QuantizedLinearWeights gptq_quantize(std::span<const float> w, std::int64_t n, std::span<const double> hessian,
                                     std::span<const std::int32_t> perm, const WeightQuantSpec& spec,
                                     const GptqOptions& options, const char* what, GptqReport* report = nullptr);

// The pieces of gptq_quantize that its GPU implementation (quant/cuda/cuda_gptq.h) shares:
// its argument checks (throw atom::Error naming `what`), the error when damping cannot rescue the Hessian,
// and the INT8 rounding of the outlier columns after every normal column's error feedback (columns
// [q.n_outliers, q.n], column o at columns + o * q.n; q.n and q.n_outliers set).
void check_gptq_arguments(std::span<const float> w, std::int64_t n, std::int64_t hessian_size,
                          std::span<const std::int32_t> perm, const WeightQuantSpec& spec, const GptqOptions& options,
                          const char* what);
[[noreturn]] void fail_not_positive_definite(const char* what, double damp, const GptqOptions& options, int retries);
void set_outlier_codes(const float* columns, QuantizedLinearWeights& q);

// Round to nearest with the same spec (no calibration data).
QuantizedLinearWeights rtn_quantize(std::span<const float> w, std::int64_t n, std::span<const std::int32_t> perm,
                                    const WeightQuantSpec& spec);

// Activation fake quantization: x [m, K] (original order) -> the dequantized values, original order. Used to
// feed quantized inputs to the Hessians (GPTQ sees the activations the kernels will see).
struct ActQuantSpec {
  NumberFormat format = NumberFormat::kInt4;
  std::int64_t group = 128;
  std::int64_t n_outliers = 0;
  float clip = 1.0f;  // Atom: 0.9
};
std::vector<float> fake_quantize_activations(std::span<const float> x, std::int64_t m,
                                             std::span<const std::int32_t> perm, const ActQuantSpec& spec);

// Mean squared error of the layer output on calibration rows x [m, K] (original order):
// mean((x W^T - xq Q^T)^2), with xq = x, or fake-quantized by `act` when given.
double linear_output_mse(std::span<const float> x, std::int64_t m, std::span<const float> w,
                         const QuantizedLinearWeights& q, const ActQuantSpec* act);

}  // namespace atom::quant
