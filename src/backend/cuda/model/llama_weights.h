#pragma once
// A Llama-family decoder's weights on the GPU, in one of four precisions that the same forward pass
// (cuda_model_runner.h) runs, so that they can be compared fairly:
//   fp16       dense fp16 weights, cuBLAS
//   w8a8       per-channel INT8 weights x per-token INT8 activations (SmoothQuant checkpoints): activations
//   from
//              the fused quantizers with every channel an INT8 "outlier" (k_normal = 0), the product on
//              cuBLASLt (exact int32) and a scaling epilogue
//   w4a16      INT4 weights in groups of 128, fp16 activations (gemm_w4a16)
//   atom-w4a4  Atom: INT4 (or INT3) groups of 128 + INT8 outlier channels, activations quantized per token by
//   the
//              fused kernels of quantize_act.h
// Linears that read one input are stacked: q/k/v -> qkv, gate/up -> gate_up (gate rows first). For the
// quantized precisions the channel permutations live where FORMAT.md puts them: q/k/v's and gate/up's are
// applied by the RMSNorm kernel, o_proj's at run time, down_proj's is baked into the gate/up output rows
// (gathered at run time instead when a rotated checkpoint's Hadamard mixes down_proj's input channels).
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/kv_cache/kv_cache_layout.h"
#include "backend/cuda/model/device_buffer.h"
#include "backend/cuda/quantize/quantize_act.h"
#include "backend/cuda/transform/hadamard.h"
#include "io/model_config.h"
#include "model/weights.h"

namespace atom {
struct ModelSource;
namespace quant {
struct QuantizedModel;
}  // namespace quant
}  // namespace atom

namespace atom::cuda {

enum class Precision : std::uint8_t { kF16, kW8A8, kW4A16, kW4A4 };
const char* precision_name(Precision p);  // "fp16" | "w8a8" | "w4a16" | "atom-w4a4"
// Parses those names; throws atom::Error listing them.
Precision parse_precision(std::string_view name);

struct DeviceLinear {
  int n = 0, k = 0;  // output rows, input channels
  // kF16: [n, k] row-major fp16.
  DeviceBuffer<std::uint16_t> weight_f16;
  // kW8A8: [n, k] int8 codes (row-major, cuBLASLt's operand) and fp32 per-channel scales [n].
  DeviceBuffer<std::int8_t> weight_i8;
  DeviceBuffer<float> channel_scales;
  // kW4A4 / kW4A16: the prepacked GPU layout of gemm_w4a4.h (k_normal + n_outliers = k).
  DeviceBuffer<std::uint8_t> packed;
  DeviceBuffer<std::int8_t> outliers;
  DeviceBuffer<float> scales;
  int k_normal = 0, n_outliers = 0;
  ActQuantLayout act;  // how the input is quantized (kW4A4, kW8A8)
  // Channel order of the input (reordered j = original perm[j]); empty: identity. Read at run time only where
  // no norm can apply it (o_proj).
  DeviceBuffer<std::int32_t> perm;

  W4A4PackedWeights packed_view() const {
    return {packed.get(), outliers.get(), scales.get(), n, k_normal, n_outliers};
  }
  std::size_t bytes() const {
    return weight_f16.bytes() + weight_i8.bytes() + channel_scales.bytes() + packed.bytes() +
           outliers.bytes() + scales.bytes() + perm.bytes();
  }
};

struct DeviceLayer {
  DeviceBuffer<std::uint16_t> input_norm, post_attention_norm;  // fp16 [hidden], original channel order
  DeviceBuffer<std::int32_t> attn_perm, mlp_perm;               // empty: identity
  DeviceLinear qkv, o_proj, gate_up, down;
  // KV centering of the keys (docs/FORMAT.md): fp32 [num_kv_heads * head_dim], subtracted by kv_cache_append.
  // Empty: none.
  DeviceBuffer<float> k_center;
};

struct CudaLlamaWeights {
  ModelConfig config;
  Precision precision = Precision::kF16;
  KvDtype default_kv = KvDtype::kF16;  // the checkpoint's KV format (Atom: u4)
  int kv_group_size = 0;                // channels per params word of a quantized cache (0: head_dim)
  bool random_weights = false;         // synthetic benchmark model
  std::string source;                  // path or synthetic shape name

  DeviceBuffer<std::uint16_t> embed_tokens;  // [vocab, hidden] fp16
  DeviceBuffer<std::uint16_t> lm_head;       // [vocab, hidden] fp16; empty: tied to embed_tokens
  DeviceBuffer<std::uint16_t> final_norm;    // [hidden]
  DeviceBuffer<float> rope_inv_freq;         // [head_dim / 2]
  std::vector<DeviceLayer> layers;

  // Online transforms of a rotated checkpoint (docs/FORMAT.md): the Q/K head Hadamard (in kv_cache_append)
  // and the Hadamard on down_proj's input (silu_mul_hadamard_f16; its constants below, n == 0: off).
  bool qk_hadamard = false;
  HadamardView down_hadamard;
  DeviceBuffer<std::uint16_t> down_hadamard_base;
  DeviceBuffer<std::uint32_t> down_hadamard_signs;

  const std::uint16_t* output_weight() const { return lm_head.empty() ? embed_tokens.get() : lm_head.get(); }
  std::size_t bytes() const;
  std::string describe() const;  // e.g. "atom-w4a4 llama 30 layers, 0.07 GiB"
};

// Throws atom::Error saying why when no CUDA device can be used (none present, driver too old, ...).
void require_cuda_device();

// Fraction of the upload done, with the stage ("layer 3/30").
using UploadProgress = std::function<void(const std::string& stage, double fraction)>;

// Checks that the GPU kernels can run this architecture: no attention / MLP biases, head_dim 64 or 128, at
// most 8 query heads per KV head, hidden and intermediate sizes multiples of 8, no sliding window.
// atom::Error naming `source` and the field otherwise.
void check_cuda_supported(const ModelConfig& config, const std::string& source);

// fp16 copy of an fp32 model (layers are read one at a time from `source`).
std::unique_ptr<CudaLlamaWeights> upload_fp16(ModelSource source, const std::string& name,
                                              const UploadProgress& progress = {});
std::unique_ptr<CudaLlamaWeights> upload_fp16(const LlamaWeights& weights, const std::string& name);

// A quantized model (an Atom checkpoint's content): atom -> kW4A4, w8a8-smoothquant -> kW8A8, w4a16 ->
// kW4A16, with its online transforms (rotated recipes). Throws atom::Error for what the GPU kernels do not run
// (groups other than 128, FP4, per-row RTN W4A4, outlier counts not a multiple of 16), naming the linear and
// the value.
std::unique_ptr<CudaLlamaWeights> upload_quantized(const quant::QuantizedModel& model,
                                                   const std::string& name,
                                                   const UploadProgress& progress = {});

// Opens a GGUF file, Hugging Face directory or Atom checkpoint and uploads it.
std::unique_ptr<CudaLlamaWeights> load_cuda_weights(const std::string& path,
                                                    const UploadProgress& progress = {});

// Benchmark shapes with random weights: "llama-2-7b", "llama-3-8b" (published hyper-parameters),
// "llama-2-13b". Throws atom::Error listing the names.
ModelConfig synthetic_config(std::string_view shape);
const std::vector<std::string>& synthetic_shape_names();
// Random weights of `precision` generated on the GPU (deterministic for a seed): values of realistic
// magnitude, random channel permutations and 128 outliers per input for atom-w4a4. For speed measurements
// only.
// online_transforms: with a rotated checkpoint's Q/K and down Hadamards (their cost, not their accuracy).
std::unique_ptr<CudaLlamaWeights> make_synthetic_weights(const ModelConfig& config, Precision precision,
                                                         const std::string& name, std::uint64_t seed = 0,
                                                         bool online_transforms = false);

}  // namespace atom::cuda
