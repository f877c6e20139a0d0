#pragma once
// fp32 building blocks of the Llama decoder on the CPU (OpenMP + AVX2). Each has a scalar reference in
// tests/backend/cpu/test_kernels.cpp. Conventions follow Hugging Face transformers (modeling_llama.py).
#include <immintrin.h>

#include <cstdint>
#include <span>
#include <vector>

#include "backend/cpu/kv_cache.h"
#include "io/model_config.h"

namespace atom::cpu {

// RMSNorm of `rows` rows of `dim`: y = x * rsqrt(mean(x^2) + eps) * weight, with the output channels
// gathered in `perm` order when perm is non-empty: y[r, j] = norm(x)[r, perm[j]] * weight[perm[j]]
// (the input reorder of the next linear layers, fused into the norm). x and y must not overlap.
void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
              std::span<const std::int32_t> perm, float* y);

// RoPE inverse frequencies [head_dim / 2], computed in fp32 exactly as transformers does: default
// (1 / theta^(2i/d)) or llama3 rope_scaling (_compute_llama3_parameters). Throws for other scalings.
std::vector<float> rope_inv_freq(const ModelConfig& config);

// cos/sin of position * inv_freq for each of n positions: [n, half] each (half = inv_freq.size()).
void rope_cos_sin(std::span<const float> inv_freq, const std::int64_t* positions, std::int64_t n, float* cos,
                  float* sin);

// Rotates, in place, `heads` heads of head_dim (= 2 * half) in each of `rows` rows (row stride `stride`
// floats) by HF's rotate_half convention: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, with x1 the first and
// x2 the second half of a head; cos/sin rows as from rope_cos_sin.
void apply_rope(float* x, std::int64_t rows, std::int64_t stride, int heads, int head_dim, const float* cos,
                const float* sin);

// exp of 8 floats (AVX2), within 2 ulp of exp for -87.336 <= x <= 88.376; 0 below, exp(88.376) above.
__m256 exp256(__m256 x);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
void silu_mul(const float* gate, const float* up, std::int64_t n, float* out);

struct AttentionShape {
  int num_heads = 0;
  int num_kv_heads = 0;  // divides num_heads; query head h reads kv head h / (num_heads / num_kv_heads)
  int head_dim = 0;
  float scale = 0.0f;      // head_dim^-0.5
  int sliding_window = 0;  // > 0: query at position p sees keys p - window + 1 .. p
};

// Causal attention of one sequence's n new queries, at positions start .. start + n - 1, over its keys and
// values at positions 0 .. start + n - 1: fp32 rows (k, v), or, when k and v are null, quantized rows read in
// place (quant_k, quant_v: UINT4 / UINT8 codes, both of one width; only where attention_reads_codes(n)).
struct AttentionJob {
  const float* q = nullptr;  // [n, num_heads * head_dim]
  const float* k = nullptr;  // [start + n, num_kv_heads * head_dim]
  const float* v = nullptr;  // [start + n, num_kv_heads * head_dim]
  float* out = nullptr;      // [n, num_heads * head_dim]
  std::int64_t n = 0;
  std::int64_t start = 0;
  const QuantKvRows* quant_k = nullptr;  // rows [0, start + n) at least
  const QuantKvRows* quant_v = nullptr;
};

// Runs all jobs (one per sequence of a batch), parallel over sequences, heads and query blocks.
// On quantized rows each query row is scored on the codes (q . k = scale * (q . codes) + minimum * sum(q), and
// the values weighted likewise), one KV head's codes read once for all its query heads.
void causal_attention(std::span<const AttentionJob> jobs, const AttentionShape& shape);

// Whether a job of n new rows may read quantized rows in place (row by row); otherwise it needs them as fp32
// (a long prompt's blocks run as sgemm). Always true in batch-invariant mode.
bool attention_reads_codes(std::int64_t n);

// Batch-invariant mode (process-wide; the serving runner turns it on): every kernel computes a row's result
// with one fixed sequence of floating-point operations, whatever the other rows of its batch and however a
// prompt is cut into chunks. Off, faster paths are picked by the number of rows (BLAS sgemm for blocks of
// attention queries, dense products and many-row weight-only products), whose last bits depend on the batch.
void set_batch_invariant(bool on);
bool batch_invariant();

}  // namespace atom::cpu
