#include "backend/cuda/sampling/sample_rows.h"

#include <cmath>
#include <cstdint>

#include "backend/cuda/common/cuda_check.h"
#include "model/philox.h"

// The host-side checks (check_params) live in sample_rows_check.cpp (atom::Error needs fmt, which nvcc
// cannot compile).

namespace atom::cuda {
namespace {

using u64 = unsigned long long;

constexpr int kThreads = 512;  // 1024 spills registers (64 a thread at most)
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kFixedOne = 1099511627776.0f;  // 2^40: the fixed-point weight of the most likely token

// Orders floats as unsigned integers (NaN must be gone: it counts as -inf). -0 and +0 get one key: they
// compare equal on the host.
__device__ __forceinline__ std::uint32_t order_key(float v) {
  const std::uint32_t bits = v == 0.0f ? 0u : __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// (key, index) in one integer whose maximum is the largest value, then the lowest index.
__device__ __forceinline__ u64 pack_max(float v, int i) {
  return (static_cast<u64>(order_key(v)) << 32) | (0xffffffffu - static_cast<std::uint32_t>(i));
}
__device__ __forceinline__ int packed_index(u64 packed) {
  return static_cast<int>(0xffffffffu - static_cast<std::uint32_t>(packed & 0xffffffffu));
}

__device__ __forceinline__ float finite_or_minus_inf(float v) { return v != v ? -INFINITY : v; }

struct Shared {
  u64 hist[256];
  u64 scratch[kWarps];
  float fscratch[kWarps];
  u64 radix_above, radix_target;
  std::uint32_t radix_bin;
  int found;
};

// Block-wide reductions; every thread gets the result (warps combined in a fixed order: deterministic).
__device__ u64 block_max_u64(u64 v, Shared& sm) {
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(kFull, v, off));
  if (threadIdx.x % 32 == 0) sm.scratch[threadIdx.x / 32] = v;
  __syncthreads();
  u64 r = sm.scratch[0];
  for (int w = 1; w < kWarps; ++w) r = max(r, sm.scratch[w]);
  __syncthreads();
  return r;
}

__device__ u64 block_sum_u64(u64 v, Shared& sm) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  if (threadIdx.x % 32 == 0) sm.scratch[threadIdx.x / 32] = v;
  __syncthreads();
  u64 r = 0;
  for (int w = 0; w < kWarps; ++w) r += sm.scratch[w];
  __syncthreads();
  return r;
}

__device__ float block_max_f(float v, Shared& sm) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  if (threadIdx.x % 32 == 0) sm.fscratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = sm.fscratch[0];
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, sm.fscratch[w]);
  __syncthreads();
  return r;
}

__device__ float block_sum_f(float v, Shared& sm) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  if (threadIdx.x % 32 == 0) sm.fscratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = 0.0f;
  for (int w = 0; w < kWarps; ++w) r += sm.fscratch[w];
  __syncthreads();
  return r;
}

// Exclusive prefix sum over the block's threads in thread order; `total` gets the block's sum.
__device__ u64 block_exclusive_scan(u64 v, u64& total, Shared& sm) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  u64 inclusive = v;
  for (int off = 1; off < 32; off <<= 1) {
    const u64 other = __shfl_up_sync(kFull, inclusive, off);
    if (lane >= off) inclusive += other;
  }
  if (lane == 31) sm.scratch[warp] = inclusive;
  __syncthreads();
  u64 before = 0;
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += sm.scratch[w];
    total += sm.scratch[w];
  }
  __syncthreads();
  return before + inclusive - v;
}

// One row's scores: the penalized logit (and, for sampling, divided by the temperature).
struct RowScores {
  const float* x = nullptr;
  int vocab = 0;
  const std::int32_t* counts = nullptr;  // null: no penalties
  const std::uint8_t* in_prompt = nullptr;
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f, temperature = 1.0f;

  __device__ float raw(int i) const { return finite_or_minus_inf(x[i]); }
  // The host's apply_penalties(), operation for operation.
  __device__ float penalized(int i) const {
    float v = raw(i);
    if (counts) {
      const int c = counts[i];
      if (c > 0 || in_prompt[i]) v = v > 0.0f ? __fdiv_rn(v, repetition) : __fmul_rn(v, repetition);
      v = __fmaf_rn(-frequency, static_cast<float>(c), v);
      if (c > 0) v = __fsub_rn(v, presence);
    }
    return v;
  }
  __device__ float score(int i) const { return __fdiv_rn(penalized(i), temperature); }
};

// exp(score - max) in fixed point: 2^40 for the most likely token, 0 below 2^-40 of it.
__device__ __forceinline__ u64 fixed_weight(float score, float score_max) {
  float e = expf(score - score_max);
  if (!(e >= 0.0f)) e = score == score_max ? 1.0f : 0.0f;  // inf - inf
  return static_cast<u64>(fminf(e, 1.0f) * kFixedOne);
}

// Radix selection, most likely first: among the tokens whose key is >= floor_key (and, for masses, of
// positive weight), walking them in decreasing key order, the key of the first at which the running weight
// reaches the target. Counts (kMass false): weight 1, target `count` (the count-th largest key). Masses:
// weight fixed_weight(), target ceil(top_p x the total weight). When the weights never reach the target
// (rounding), the smallest key taking part (everything kept).
template <bool kMass>
__device__ std::uint32_t radix_select(const RowScores& r, float score_max, std::uint32_t floor_key, u64 count,
                                      float top_p, Shared& sm) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  std::uint32_t prefix = 0, prefix_mask = 0;
  u64 above = 0, target = count;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sm.hist[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < r.vocab; i += kThreads) {
      const float s = r.score(i);
      const std::uint32_t key = order_key(s);
      if (key < floor_key || (key & prefix_mask) != prefix) continue;
      const u64 weight = kMass ? fixed_weight(s, score_max) : 1;
      if (weight > 0) atomicAdd(&sm.hist[(key >> shift) & 0xffu], weight);
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds bins 255 - 8l down to 248 - 8l: lanes in decreasing key order.
      u64 local[8], sum = 0;
      for (int j = 0; j < 8; ++j) {
        local[j] = sm.hist[255 - 8 * lane - j];
        sum += local[j];
      }
      u64 inclusive = sum;
      for (int off = 1; off < 32; off <<= 1) {
        const u64 other = __shfl_up_sync(kFull, inclusive, off);
        if (lane >= off) inclusive += other;
      }
      if (kMass && shift == 24) {
        const u64 total = __shfl_sync(kFull, inclusive, 31);
        const double want = ceil(static_cast<double>(top_p) * static_cast<double>(total));
        target = want < 1.0 ? 1 : (want > static_cast<double>(total) ? total : static_cast<u64>(want));
      }
      const u64 exclusive = inclusive - sum;
      const unsigned reached = __ballot_sync(kFull, above + inclusive >= target);
      const unsigned nonempty = __ballot_sync(kFull, sum > 0);
      if (reached != 0) {
        if (lane == __ffs(reached) - 1) {
          u64 running = above + exclusive;
          int j = 0;
          while (j < 7 && running + local[j] < target) running += local[j++];
          sm.radix_bin = 255u - 8u * lane - j;
          sm.radix_above = running;
          sm.radix_target = target;
        }
      } else if (nonempty != 0) {
        if (lane == 31 - __clz(nonempty)) {  // the lowest non-empty bin, all above it counted
          u64 running = above + exclusive;
          int last = 0;
          for (int j = 0; j < 8; ++j)
            if (local[j] > 0) last = j;
          for (int j = 0; j < last; ++j) running += local[j];
          sm.radix_bin = 255u - 8u * lane - last;
          sm.radix_above = running;
          sm.radix_target = target;
        }
      } else if (lane == 0) {  // nothing takes part (cannot happen: the most likely token always does)
        sm.radix_bin = 0;
        sm.radix_above = above;
        sm.radix_target = target;
      }
    }
    __syncthreads();
    prefix |= sm.radix_bin << shift;
    prefix_mask |= 0xffu << shift;
    above = sm.radix_above;
    target = sm.radix_target;
  }
  __syncthreads();
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_rows_kernel(SampleRowsParams p) {
  __shared__ Shared sm;
  const SampleRow row = p.rows[blockIdx.x];
  RowScores r;
  r.x = p.logits + static_cast<std::int64_t>(row.logit_row) * p.logits_stride;
  r.vocab = p.vocab;
  if (row.counts_slot >= 0 && row.counts_slot < p.num_slots) {
    r.counts = p.output_counts + static_cast<std::int64_t>(row.counts_slot) * p.vocab;
    r.in_prompt = p.prompt_mask + static_cast<std::int64_t>(row.counts_slot) * p.vocab;
    r.repetition = row.repetition_penalty;
    r.presence = row.presence_penalty;
    r.frequency = row.frequency_penalty;
  }
  r.temperature = row.temperature;
  const bool wants_logprobs = row.logprobs >= 0;

  // The most likely token after the penalties (greedy's answer; the scores' maximum), and the raw maximum.
  u64 best = 0;
  float raw_max = -INFINITY;
  for (int i = threadIdx.x; i < p.vocab; i += kThreads) {
    best = max(best, pack_max(r.penalized(i), i));
    if (wants_logprobs) raw_max = fmaxf(raw_max, r.raw(i));
  }
  best = block_max_u64(best, sm);
  if (wants_logprobs) raw_max = block_max_f(raw_max, sm);
  int token = packed_index(best);
  const float best_penalized = r.penalized(token);

  if (row.temperature > 0.0f && best_penalized != -INFINITY) {
    const float score_max = __fdiv_rn(best_penalized, row.temperature);
    std::uint32_t floor_key = 0;
    if (row.top_k > 0 && row.top_k < p.vocab) {
      floor_key = radix_select<false>(r, score_max, 0, static_cast<u64>(row.top_k), 1.0f, sm);
    }
    if (row.top_p < 1.0f) floor_key = radix_select<true>(r, score_max, floor_key, 0, row.top_p, sm);
    const bool min_p_on = row.min_p > 0.0f;
    auto kept_weight = [&](int i) -> u64 {
      const float s = r.score(i);
      if (order_key(s) < floor_key) return 0;
      if (min_p_on && !(expf(s - score_max) >= row.min_p)) return 0;
      return fixed_weight(s, score_max);
    };
    u64 total = 0;
    for (int i = threadIdx.x; i < p.vocab; i += kThreads) total += kept_weight(i);
    total = block_sum_u64(total, sm);
    // The draw: the first token (in id order) whose cumulative weight passes u x total.
    const double u = philox_uniform(row.seed, row.step);
    u64 target = static_cast<u64>(u * static_cast<double>(total));
    if (target >= total) target = total - 1;  // total >= 2^40 > 0: the most likely token is always kept
    if (threadIdx.x == 0) sm.found = token;   // unreachable fallback: the argmax
    __syncthreads();
    u64 base = 0;
    for (int start = 0; start < p.vocab; start += kThreads) {
      const int i = start + static_cast<int>(threadIdx.x);
      const u64 w = i < p.vocab ? kept_weight(i) : 0;
      u64 tile_total = 0;
      const u64 before = block_exclusive_scan(w, tile_total, sm);
      if (base + tile_total > target) {
        if (w > 0 && base + before <= target && target < base + before + w) sm.found = i;
        break;  // uniform: base and tile_total are the same in every thread
      }
      base += tile_total;
    }
    __syncthreads();
    token = sm.found;
  }

  float token_logprob = 0.0f;
  if (wants_logprobs) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < p.vocab; i += kThreads) sum += expf(r.raw(i) - raw_max);
    sum = block_sum_f(sum, sm);
    const float log_z = raw_max + logf(sum);
    token_logprob = r.raw(token) - log_z;
    // The n most likely: each round the largest (value, lowest index) below the previous round's.
    u64 previous = ~0ull;
    const int n = min(min(row.logprobs, kMaxTopLogprobs), p.vocab);
    for (int j = 0; j < n; ++j) {
      u64 candidate = 0;
      for (int i = threadIdx.x; i < p.vocab; i += kThreads) {
        const u64 packed = pack_max(r.raw(i), i);
        if (packed < previous) candidate = max(candidate, packed);
      }
      candidate = block_max_u64(candidate, sm);
      previous = candidate;
      if (threadIdx.x == 0) {
        const int index = packed_index(candidate);
        p.top_tokens[blockIdx.x * kMaxTopLogprobs + j] = index;
        p.top_logprobs[blockIdx.x * kMaxTopLogprobs + j] = r.raw(index) - log_z;
      }
    }
  }
  if (threadIdx.x == 0) {
    p.tokens[blockIdx.x] = token;
    p.logprobs[blockIdx.x] = token_logprob;
    if (p.count_sampled && r.counts)
      p.output_counts[static_cast<std::int64_t>(row.counts_slot) * p.vocab + token] += 1;
  }
}

__global__ void load_token_counts_kernel(LoadTokenCountsParams p) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= p.num_entries) return;
  const TokenCountEntry entry = p.entries[e];
  if (entry.slot < 0 || entry.slot >= p.num_slots || entry.token < 0 || entry.token >= p.vocab) return;
  const std::int64_t at = static_cast<std::int64_t>(entry.slot) * p.vocab + entry.token;
  p.output_counts[at] = entry.generated;
  p.prompt_mask[at] = entry.in_prompt ? 1 : 0;
}

}  // namespace

void sample_rows(const SampleRowsParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_rows == 0) return;
  sample_rows_kernel<<<p.num_rows, kThreads, 0, stream>>>(p);
  ATOM_CUDA_CHECK_LAUNCH();
}

void load_token_counts(const LoadTokenCountsParams& p, cudaStream_t stream) {
  check_params(p);
  const std::size_t row = static_cast<std::size_t>(p.vocab);
  for (std::int32_t slot : p.clear_slots) {
    ATOM_CUDA_CHECK(cudaMemsetAsync(p.output_counts + slot * row, 0, row * sizeof(std::int32_t), stream));
    ATOM_CUDA_CHECK(cudaMemsetAsync(p.prompt_mask + slot * row, 0, row, stream));
  }
  if (p.num_entries == 0) return;
  constexpr int kBlock = 256;
  LoadTokenCountsParams device_params = p;
  device_params.clear_slots = {};  // host memory: not for the kernel
  load_token_counts_kernel<<<(p.num_entries + kBlock - 1) / kBlock, kBlock, 0, stream>>>(device_params);
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace atom::cuda
