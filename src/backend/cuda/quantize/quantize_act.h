#pragma once
// Fused activation quantizers that feed Atom's W4A4 GEMM (docs/FORMAT.md, "An Atom linear layer"):
//   rmsnorm_quantize   residual add + RMSNorm + reorder + quantize (q/k/v and gate/up inputs)
//   reorder_quantize   reorder + quantize (o_proj input: the attention output)
//   silu_mul_quantize  SiLU(gate) * up + quantize (down_proj input; its order is baked into gate/up rows)
// Per token: the first K_n = K - n_outliers reordered channels go to INT4 (or INT3 / FP4) groups of G with
// the clip ratio, the last n_outliers to INT8 with one scale (clip 1), bit-exact with
// quant::quantize_activations applied to the fp16 value each kernel quantizes (documented per kernel).
// All tensors are device pointers; fp16 values travel as their bits (std::uint16_t).
#include <cstdint>

#include <cuda_runtime.h>

namespace atom::cuda {

enum class ActFormat : std::uint8_t { kInt4, kInt3, kFp4 };  // format of the normal part

struct ActQuantLayout {
  int k = 0;           // channels per token, K_n + n_outliers (multiple of 8; at most 16384 for the row
                       // kernels rmsnorm/reorder, 65536 for silu_mul)
  int n_outliers = 0;  // INT8 channels at the end of the reordered row (0 allowed)
  int group_size = 128;  // 8, 16, 32, 64, 128 or 256; divides K_n
  ActFormat format = ActFormat::kInt4;
  float clip_ratio = 1.0f;  // applied to the normal groups only
};

// Where the quantized token rows go. The canonical layout (FORMAT.md) is token-major everywhere:
// packed [M, K_n/2], scales [M, K_n/G] (scale_token_stride = K_n/G, scale_group_stride = 1), outliers
// [M, n_outliers], outlier scales [M]. A GEMM that wants group-major scales passes
// scale_token_stride = 1, scale_group_stride = M.
struct QuantizedActOut {
  std::uint8_t* packed = nullptr;  // token m's K_n/2 bytes at m * packed_stride (4-byte aligned rows)
  std::int64_t packed_stride = 0;
  std::uint16_t* scales = nullptr;  // fp16, (m, g) at m * scale_token_stride + g * scale_group_stride
  std::int64_t scale_token_stride = 0, scale_group_stride = 1;
  std::int8_t* outliers = nullptr;  // token m's n_outliers codes at m * outlier_stride
  std::int64_t outlier_stride = 0;
  std::uint16_t* outlier_scales = nullptr;  // fp16, token m at m * outlier_scale_stride
  std::int64_t outlier_scale_stride = 1;
  // Int8 rows for the serving-size GEMM (gemm_w4a4.h, W4A4ActivationsS8) instead of packed + outliers:
  // token m's K_n INT4 codes and then its outliers (zero-padded to a multiple of 128) at m * codes_s8_stride,
  // each 128-wide block in the tensor-core order. Needs INT4 groups of 128; `packed` / `outliers` unused.
  std::int8_t* codes_s8 = nullptr;
  std::int64_t codes_s8_stride = 0;
};

// Row slices (each kernel's `slices`): while the tokens fit on the GPU as one block each (decode batches),
// a token's normal groups may be dealt to several blocks, the last of which also takes the outliers; each
// block reads the whole row (the RMS needs it) but stages and quantizes only its slice; the slices of a token
// form a thread-block cluster (residual_out may alias residual: no slice writes it before all have read it).
// Same arithmetic, more blocks: a lone 4096-channel row was ~11-19 us of latency in one block. 0: chosen from M, the
// groups and the GPU; > 0: forced (tests, tuning; clamped to the group count).

// h = fp16(float(input) + float(residual)) when residual is set, else h = input; residual_out (optional,
// may alias residual) receives h. Quantized values: reordered channel j is
//   fp16( (float(h[perm[j]]) * inv_rms) * float(weight[perm[j]]) ),  inv_rms = rsqrt(mean(h^2) + eps)
// and normed_out (optional, [M, K] reordered fp16) receives exactly those values.
struct RmsNormQuantParams {
  int num_tokens = 0;
  ActQuantLayout layout;
  const std::uint16_t* input = nullptr;  // [M, K] original channel order; rows 16-byte aligned
  std::int64_t input_stride = 0;
  const std::uint16_t* residual = nullptr;
  std::int64_t residual_stride = 0;
  std::uint16_t* residual_out = nullptr;
  std::int64_t residual_out_stride = 0;
  const std::uint16_t* weight = nullptr;  // RMSNorm gamma [K], original order
  float eps = 1e-5f;
  const std::int32_t* perm = nullptr;  // [K], 16-byte aligned: reordered channel j is original channel perm[j]
  QuantizedActOut out;
  std::uint16_t* normed_out = nullptr;
  std::int64_t normed_stride = 0;
  int slices = 0;  // row slices (above)
};
void rmsnorm_quantize(const RmsNormQuantParams& p, cudaStream_t stream);

// Quantized values: reordered channel j is input[perm[j]] (already fp16).
struct ReorderQuantParams {
  int num_tokens = 0;
  ActQuantLayout layout;
  const std::uint16_t* input = nullptr;  // [M, K] original order; rows 16-byte aligned
  std::int64_t input_stride = 0;
  const std::int32_t* perm = nullptr;  // [K], 16-byte aligned
  QuantizedActOut out;
  int slices = 0;  // row slices (above)
};
void reorder_quantize(const ReorderQuantParams& p, cudaStream_t stream);

// Quantized values: channel j is fp16( silu(g) * u ) with g = float(gate[j]), u = float(up[j]) and
// silu(g) = g / (1 + exp(-g)) in fp32; act_out (optional, [M, K]) receives them. No reorder at run time:
// gate/up weight rows are stored in down_proj's input order.
struct SiluMulQuantParams {
  int num_tokens = 0;
  ActQuantLayout layout;
  const std::uint16_t* gate = nullptr;  // [M, K]; rows 16-byte aligned (gate and up may be halves of one row)
  std::int64_t gate_stride = 0;
  const std::uint16_t* up = nullptr;
  std::int64_t up_stride = 0;
  QuantizedActOut out;
  std::uint16_t* act_out = nullptr;
  std::int64_t act_stride = 0;
  int slices = 0;  // row slices (above)
};
void silu_mul_quantize(const SiluMulQuantParams& p, cudaStream_t stream);

// Host-side checks (quantize_act_check.cpp): throw atom::Error naming the field and value at fault.
void check_params(const RmsNormQuantParams& p);
void check_params(const ReorderQuantParams& p);
void check_params(const SiluMulQuantParams& p);

}  // namespace atom::cuda
