#pragma once
// Kernels of the quantizer's calibration on the GPU (quant/cuda/): the pieces of a decoder layer's forward
// on the calibration windows (fp32, linear inputs fake-quantized by the format's rules, code for code as
// backend/cpu/quantizer_ops.cpp does), per-channel statistics, the Hessian's fp64 accumulation, and GPTQ's
// per-column quantization with its error feedback inside a block. Every launcher runs on `stream` and checks
// its launch; row-major arrays unless a comment says otherwise.
#include <cuda_runtime.h>

#include <cstdint>

#include "format/format.h"

namespace atom::cuda::calib {

// The largest k of the k x k kernels (Hessians, Cholesky factors): one grid row per column.
constexpr std::int64_t kMaxSquareSide = 65535;

// How a linear's input is quantized at run time (quant::ActivationQuant, for the device).
struct ActQuantParams {
  bool enabled = true;  // false: the values pass through (weight-only recipes)
  quant::NumberFormat format = quant::NumberFormat::kInt4;
  std::int64_t group = 128;  // divides the normal part
  std::int64_t n_outliers = 0;
  bool int8_outliers = true;  // false: outliers rounded to fp16 (the ablation's FP16 outliers)
  float clip = 1.0f;
};

// x [rows, k] in the original channel order; perm [k] (reordered column j is channel perm[j]). Each row is
// gathered into the reordered order and quantize-dequantized (quant::fake_quantize_reordered's rule):
//  - to_reordered_f64: out [rows, k] reordered, as fp64 (the input of the fp64 product);
//  - to_original_f32: out [rows, k] back in the original order (the input the Hessian sees).
void fake_quantize_to_reordered_f64(const float* x, std::int64_t rows, std::int64_t k, const std::int32_t* perm,
                                    const ActQuantParams& p, double* out, cudaStream_t stream);
void fake_quantize_to_original_f32(const float* x, std::int64_t rows, std::int64_t k, const std::int32_t* perm,
                                   const ActQuantParams& p, float* out, cudaStream_t stream);

// out = fp32(y) + bias (bias [n] or null), or out += that when accumulate (a residual add). y [rows, n].
void round_to_f32(const double* y, std::int64_t rows, std::int64_t n, const float* bias, bool accumulate,
                  float* out, cudaStream_t stream);

// cpu::rms_norm without a permutation: y = weight * (x * rsqrt(mean(x^2) + eps)), the mean summed in fp64.
void rms_norm_rows(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y,
                   cudaStream_t stream);
// cpu::apply_rope: heads of head_dim at x + r * stride + h * head_dim; cos / sin [rows, head_dim / 2].
void apply_rope_rows(float* x, std::int64_t rows, std::int64_t stride, int heads, int head_dim, const float* cos,
                     const float* sin, cudaStream_t stream);
// The KV cache's asymmetric UINT-bits rule per token per group (quant::quantize_asymmetric_group, then
// dequantize_asymmetric_value), in place on x [rows, width] with groups of `group` channels (the recipe's KV
// group: head_dim or a divisor of it). sums (optional, fp64[2]) += { sum x^2, sum (x - stored)^2 }.
void kv_fake_quantize_rows(float* x, std::int64_t rows, std::int64_t width, int group, int bits, double* sums,
                           cudaStream_t stream);
// Causal softmax in place on scores [heads, n, n] (row i: query i's raw dot products with keys 0..n-1):
// p_ij = softmax_j(scale * s_ij) over keys j <= i (and j > i - sliding_window when sliding_window > 0);
// 0 elsewhere.
void causal_softmax(float* scores, int heads, std::int64_t n, float scale, int sliding_window, cudaStream_t stream);
// out = gate / (1 + exp(-gate)) * up, n elements.
void silu_mul(const float* gate, const float* up, std::int64_t n, float* out, cudaStream_t stream);

// Per column of x [rows, k]: sum_sq[j] += sum_r x^2 (fp64), absmax[j] = max(absmax[j], max_r |x|) (absmax
// may be null). Deterministic: a fixed summation order for given sizes.
void channel_stats_accumulate(const float* x, std::int64_t rows, std::int64_t k, double* sum_sq, float* absmax,
                              cudaStream_t stream);
// acc += chunk on the upper triangle (column-major, i <= j) of a k x k product from cublasSsyrk.
void add_upper_triangle(const float* chunk, std::int64_t k, double* acc, cudaStream_t stream);
// a (k x k) <- factor * the symmetric matrix whose upper triangle (column-major) is a's.
void scale_and_symmetrize_upper(double* a, std::int64_t k, double factor, cudaStream_t stream);
// sum over i of (a[i] - b[i])^2, in fp64, into *out (overwritten).
void squared_difference_sum(const float* a, const float* b, std::int64_t count, double* out, cudaStream_t stream);

// Dequantized weights of a linear (quant::dequantize's values): packed [n, row bytes], scales [n, k_normal /
// group], outliers [n, n_outliers] and outlier_scales [n] (null when n_outliers is 0); fp16_outliers [n,
// n_outliers] replaces the INT8 outliers when not null. perm null: out [n, k] in the reordered order; else
// in the original order (out[r, perm[j]] = value of reordered column j).
struct QuantizedLinearView {
  const std::uint8_t* packed = nullptr;
  const std::uint16_t* scales = nullptr;
  const std::int8_t* outliers = nullptr;
  const std::uint16_t* outlier_scales = nullptr;
  const float* fp16_outliers = nullptr;
  std::int64_t n = 0, k_normal = 0, n_outliers = 0, group = 0;
  quant::NumberFormat format = quant::NumberFormat::kInt4;
};
void dequantize_linear_f64(const QuantizedLinearView& q, double* out, cudaStream_t stream);
void dequantize_linear_f32(const QuantizedLinearView& q, const std::int32_t* perm, float* out, cudaStream_t stream);

// ---- GPTQ (quant::gptq_quantize's steps)

// wt[j, r] = w[r, perm[j]]: w [n, k] -> the reordered columns, one after the other ([k, n]).
void gather_columns(const float* w, std::int64_t n, std::int64_t k, const std::int32_t* perm, float* wt,
                    cudaStream_t stream);
// out[i, j] = h[perm[i], perm[j]], k x k.
void gather_symmetric(const double* h, std::int64_t k, const std::int32_t* perm, double* out, cudaStream_t stream);
// a[i, i] += value for i < k (k x k).
void add_to_diagonal(double* a, std::int64_t k, double value, cudaStream_t stream);
// Column-major k x k: the upper triangle (i < j) <- the lower one.
void mirror_lower_to_upper(double* a, std::int64_t k, cudaStream_t stream);
// u (row-major k x k, fp32) <- the upper triangle of column-major a (u[i, j] = a(i, j) for j >= i, else 0).
void upper_to_row_major_f32(const double* a, std::int64_t k, float* u, cudaStream_t stream);

struct GptqBlockArgs {
  float* wt = nullptr;          // [k, n]: reordered column j of every row at wt + j * n
  std::int64_t n = 0, k = 0;    // rows, all columns
  const float* u = nullptr;     // [k, k] row-major upper Cholesky factor of H^-1
  std::int64_t begin = 0, end = 0;  // the block's columns [begin, end), all normal
  std::int64_t group = 0, groups = 0;
  bool static_groups = false;   // scales already set (gptq_group_scales) rather than at each group's start
  quant::NumberFormat format = quant::NumberFormat::kInt4;
  float clip = 1.0f;
  std::uint16_t* scales = nullptr;  // [n, groups] fp16
  std::int8_t* codes = nullptr;     // [k_normal, n]: code of column j of row r at codes + j * n + r
  float* err = nullptr;             // [end - begin, n]: (w - q) / d per column, for the lazy update
  double* loss = nullptr;           // [n]: += (w - q)^2 / d^2 / 2 per row
};
// Quantizes the block's columns in order, each row on its own thread: a group's scale when the group starts,
// the code, the error, and its feedback into the block's later columns.
void gptq_quantize_block(const GptqBlockArgs& a, cudaStream_t stream);
// All group scales from the columns as they are now (GptqOptions::static_groups).
void gptq_group_scales(const GptqBlockArgs& a, std::int64_t k_normal, cudaStream_t stream);
// codes [k_normal, n] -> rows of the checkpoint: packed nibbles [n, k_normal / 2] when `packed`, else int8
// bytes [n, k_normal].
void pack_code_rows(const std::int8_t* codes, std::int64_t n, std::int64_t k_normal, bool packed,
                    std::uint8_t* out, cudaStream_t stream);

}  // namespace atom::cuda::calib
