#pragma once
// Quantized LinearOps of the CPU backend (docs/FORMAT.md):
//  - AtomLinear: W4A4 (INT4 / INT3 / FP4 groups + INT8 outliers) with dynamic per-token activation
//    quantization, computed with the integer arithmetic of the stored format (atom_gemm.h). With
//    format INT8, group = K, no outliers it is the W8A8 (SmoothQuant) baseline; with INT4, group = K the
//    plain RTN W4A4 baseline (per-channel weights, per-token activations).
//  - WeightOnlyLinear: W4A16 (weights INT4/INT3/FP4 in groups, fp32 activations).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/atom_gemm.h"
#include "backend/cpu/linear.h"
#include "format/format.h"

namespace atom::cpu {

class AtomLinear final : public LinearOp {
 public:
  // act_clip: clip ratio of the activation groups (Atom: 0.9). `name` is used in messages.
  AtomLinear(quant::QuantizedLinearWeights weights, float act_clip, std::string name,
             InputOrder order = InputOrder::kOriginal, std::vector<float> bias = {});
  std::int64_t in_features() const override { return w_.q.k(); }
  std::int64_t out_features() const override { return w_.q.n; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;
  bool splits_through_parallel_for() const override { return true; }

  // The layer's tensors, but packed 4-bit codes are kept only in the kernels' tile-interleaved order (empty
  // q.packed then: AtomPreparedWeights).
  const quant::QuantizedLinearWeights& weights() const { return w_.q; }
  float act_clip() const { return act_clip_; }
  // Whether `other` quantizes its input exactly as this op does (then one quantization serves both).
  bool shares_activations_with(const AtomLinear& other) const;

 private:
  friend void forward_shared_input(std::span<const LinearOp* const>, const float*, std::int64_t,
                                   std::span<float* const>);
  AtomPreparedWeights w_;
  float act_clip_;
  std::string name_;
  std::vector<float> bias_;
  mutable AtomActivations scratch_;  // forward is called from one thread at a time
};

// ys[i][m, ops[i]->out_features()] = x ops[i]^T for ops of one input (q/k/v; gate/up). When every op is an
// AtomLinear quantizing its input alike (at most kMaxSharedProducts), x is quantized once and all products
// run in one OpenMP loop; otherwise each op runs its own forward. The results are the same either way.
void forward_shared_input(std::span<const LinearOp* const> ops, const float* x, std::int64_t m,
                          std::span<float* const> ys);

class WeightOnlyLinear final : public LinearOp {
 public:
  WeightOnlyLinear(quant::QuantizedLinearWeights weights, std::string name, InputOrder order = InputOrder::kOriginal,
                   std::vector<float> bias = {});
  std::int64_t in_features() const override { return q_.k(); }
  std::int64_t out_features() const override { return q_.n; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;

  const quant::QuantizedLinearWeights& weights() const { return q_; }

 private:
  void forward_fused(const float* xr, std::int64_t m, float* y) const;
  void forward_blocked(const float* xr, std::int64_t m, float* y) const;

  quant::QuantizedLinearWeights q_;
  std::string name_;
  std::vector<float> bias_;
  std::int64_t chunk_ = 0;              // split layout of the gathered activations (64 or 32)
  std::int64_t n_out_pad_ = 0;          // outliers padded to a multiple of 8
  std::vector<std::int32_t> gather_;    // [k_normal + n_out_pad]; -1: zero padding
  std::vector<float> scales_;           // [n, groups] fp32 (FP4: halved, the codes are doubled)
  std::vector<float> outlier_scales_;   // [n]
  std::vector<std::int8_t> outliers_;   // [n, n_out_pad]
};

}  // namespace atom::cpu
