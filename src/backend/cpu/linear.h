#pragma once
// A linear layer y = x W^T (+ b) as the decoder sees it. The dense fp32 one is the reference; the quantizer
// adds INT4/INT8 implementations (backend/cpu/quant_*) and swaps them into LlamaModel's layers.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace atom::cpu {

class LinearOp {
 public:
  virtual ~LinearOp() = default;
  virtual std::int64_t in_features() const = 0;
  virtual std::int64_t out_features() const = 0;
  // y[m, out_features] = x[m, in_features] W^T (+ bias); rows contiguous. Called from one thread; may use
  // OpenMP / BLAS threads inside. Must not be called with x and y overlapping.
  virtual void forward(const float* x, std::int64_t m, float* y) const = 0;
  virtual std::string describe() const = 0;  // e.g. "dense f32 [576 x 1536]"
  // True when every parallel loop of forward goes through parallel_for (parallel.h), so that it can run
  // inside a forward team; an op with OpenMP regions of its own would run them on one thread there.
  virtual bool splits_through_parallel_for() const { return false; }
};

// Makes OpenBLAS single-threaded (process-wide, once): the CPU backend parallelizes with OpenMP only, since
// OpenBLAS's own pthreads spin between calls and starve OpenMP's threads on a small machine.
void use_single_threaded_blas();

// fp32 weight [out, in] (HF layout), product through OpenBLAS sgemm (or, in batch-invariant mode, a
// fixed-order AVX2 kernel), the output features split over the OpenMP threads. The weight may be shared (tied
// embeddings: lm_head and embed_tokens are one buffer).
class DenseLinear final : public LinearOp {
 public:
  DenseLinear(std::shared_ptr<const std::vector<float>> weight, std::int64_t out_features,
              std::int64_t in_features, std::vector<float> bias = {});
  std::int64_t in_features() const override { return in_; }
  std::int64_t out_features() const override { return out_; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;

  const float* weight() const { return weight_->data(); }  // [out, in]
  const std::shared_ptr<const std::vector<float>>& shared_weight() const { return weight_; }
  const std::vector<float>& bias() const { return bias_; }  // empty: none

 private:
  void add_bias_rows(float* y, std::int64_t m) const;

  std::shared_ptr<const std::vector<float>> weight_;
  std::int64_t out_, in_;
  std::vector<float> bias_;
};

// fp16 weight [out, in] converted once from fp32 (round to nearest even), fp32 activations and accumulation:
// the lm_head of the integer path (SmolLM2's tied 49152 x 576 one is 113 MB in fp32, read whole every decode
// step; fp16 halves that). AVX2/F16C; one fixed order of operations per output whatever m (batch-invariant):
// 8-lane FMA partial sums over k, a fixed horizontal sum, then the k % 8 tail in order. Output features split
// over the OpenMP threads.
class HalfLinear final : public LinearOp {
 public:
  HalfLinear(const std::vector<float>& weight, std::int64_t out_features, std::int64_t in_features);
  std::int64_t in_features() const override { return in_; }
  std::int64_t out_features() const override { return out_; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;

  const std::vector<std::uint16_t>& weight() const { return weight_; }  // [out, in], IEEE binary16 bits

 private:
  std::vector<std::uint16_t> weight_;
  std::int64_t out_, in_;
};

}  // namespace atom::cpu
