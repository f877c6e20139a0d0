#pragma once
// The engine's ModelRunner on the GPU: a Llama forward pass composed of Atom's kernels over a paged KV cache.
//
// One execute() runs a mixed batch (prefill chunks and decode tokens). Token rows are ordered decode
// sequences first, then prefill chunks, so that each attention kernel sees one contiguous span. Per layer:
//   [fused residual add + RMSNorm (+ reorder + quantize)]  ->  qkv GEMM  ->  RoPE + KV append (quantizing)
//   ->  decode / prefill attention  ->  [reorder + quantize]  ->  o_proj GEMM
//   ->  [fused residual add + RMSNorm (+ reorder + quantize)]  ->  gate_up GEMM  ->  SiLU * up [+ quantize]
//   ->  down GEMM
// and at the end the last layer's residual add + the final RMSNorm on the rows that want logits, and the fp16
// lm_head (cuBLAS, fp32 logits), sampled on the device (argmax, or sampling/sample_rows.h). The residual
// stream is fp16. Decode-only steps are captured in CUDA graphs, one per padded batch size, and replayed
// (launch overhead is most of a small decode step).
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "backend/cuda/kv_cache/kv_cache_layout.h"
#include "backend/cuda/model/llama_weights.h"
#include "model/model_runner.h"

namespace atom::cuda {

struct CudaRunnerOptions {
  KvDtype kv_dtype = KvDtype::kF16;
  int max_batch_tokens = 2048;  // token rows of one execute (the engine's max_batched_tokens)
  int max_sequences = 256;      // sequences of one execute (the engine's max_batch)
  int max_context = 0;          // positions per sequence; 0: the model's max_position_embeddings
  bool cuda_graphs = true;      // capture decode-only steps
  // W4A16 products of more token rows than this dequantize the layer to fp16 and run cuBLAS (prefill sizes),
  // fewer use gemm_w4a16 (decode sizes).
  int w4a16_dense_rows = 64;
  // W4A4 / W8A8 products on the serving-size kernel (gemm_w4a4_o8_s8 / gemm_w8a8_s8 on int8 activation rows
  // written by the quantizers): kOff; kMeasured (default), where the H100 measurements say it is faster than
  // the packed-layout kernels (w4a4_prefers_s8_activations: products of 17-64 rows); kAlways, every product of
  // 17-512 rows (tests: the path on small models). Split-K (two CTAs per output tile where the grid is small)
  // reassociates the fp32 sum once; W8A8 stays bit-exact (int32 partials).
  enum class ServingGemm : std::uint8_t { kOff, kMeasured, kAlways };
  ServingGemm serving_gemm = ServingGemm::kMeasured;
  // Batch-invariant mode: a sequence's logits, to the last bit, do not depend on the other sequences of a step
  // nor on how its prompt is cut into chunks (nor on a recompute after preemption), so a greedy request gets
  // the same tokens alone and under any load. W4A4 products run only the kernels that equal the format's
  // reference bit for bit (the in-order wgmma kernel, the serving-size kernel without split-K); attention of
  // every row, decode rows too, runs the prefill kernel (one fixed KV-tile order from position 0; the decode
  // kernel's split plan follows the batch); the lm_head runs at one fixed row count (cuBLAS picks its algorithm
  // by shape). For the quantized-activation precisions (W4A4, W8A8) on sm_90a; fp16 and W4A16 linears run
  // cuBLAS at the step's row count and are refused. Costs throughput (docs/RESULTS.md).
  bool batch_invariant = false;
};

class CudaModelRunner final : public ModelRunner {
 public:
  CudaModelRunner(std::shared_ptr<const CudaLlamaWeights> weights, CudaRunnerOptions options);
  ~CudaModelRunner() override;

  int vocab_size() const override;
  int max_context() const override;
  std::size_t kv_block_bytes(int block_size) const override;
  void allocate_kv_cache(const KvCacheSpec& spec) override;
  void execute(std::span<const SequenceChunk> batch, std::span<float> logits) override;
  // Argmax on the GPU: only token ids cross to the host.
  bool samples_greedy_on_device() const override { return true; }
  void execute_greedy(std::span<const SequenceChunk> batch, std::span<std::int32_t> tokens) override;
  // Every request setting on the GPU (sampling/sample_rows.h): only token ids and the requested logprobs
  // cross to the host; penalties read a device-side token-count buffer that the sampler keeps current.
  bool samples_on_device() const override { return true; }
  void execute_sample(std::span<const SequenceChunk> batch, std::span<const SamplingRow> rows,
                      std::span<SampledToken> out) override;
  void release(std::int64_t sequence_id) override;
  std::string describe() const override;

  // Device memory the runner holds besides the weights and the KV cache (activations, workspaces).
  std::size_t workspace_bytes() const;
  // Device memory of the KV cache once allocated.
  std::size_t kv_cache_bytes() const;
  const CudaLlamaWeights& weights() const;
  // Sum of the GPU time of executes since the last call (CUDA events around the forward), and their count.
  struct GpuTime {
    double decode_ms = 0, mixed_ms = 0;
    std::int64_t decode_steps = 0, mixed_steps = 0;
  };
  GpuTime take_gpu_time();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The per-token KV bytes (all layers, K and V) of a model with this cache format (group_size: channels per params
// word of a quantized row, 0 = head_dim).
std::size_t kv_bytes_per_token(const ModelConfig& config, KvDtype dtype, int group_size = 0);

}  // namespace atom::cuda
