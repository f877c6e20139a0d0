#pragma once
// Attention over the paged KV cache (kv_cache_layout.h) in fp16, fp32 softmax/accumulation:
//   attention_decode   one query token per sequence; the sequence may be split into chunks processed by
//                      separate blocks and merged by a second kernel (long contexts, small batches)
//   attention_prefill  ragged batch of query spans (the last q_len of each sequence's kv_len tokens),
//                      causal, tensor cores (mma.sync m16n8k16)
// GQA: query head h reads KV head h / (num_qo_heads / num_kv_heads). Queries are already rotated
// (kv_cache_append applies RoPE); the cache's K rows are post-RoPE. Output [*, Hq, D] fp16.
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "backend/cuda/kv_cache/kv_cache_layout.h"

namespace atom::cuda {

struct DecodeParams {
  PagedKvCache cache;
  int batch = 0;
  int num_qo_heads = 0;  // multiple of num_kv_heads, at most 8 query heads per KV head
  const std::uint16_t* q = nullptr;  // [batch, Hq, D] fp16 (strides in elements)
  std::int64_t q_token_stride = 0, q_head_stride = 0;
  std::uint16_t* out = nullptr;  // [batch, Hq, D] fp16
  std::int64_t out_token_stride = 0, out_head_stride = 0;
  const std::int32_t* kv_lens = nullptr;       // [batch], each <= max_kv_len (0: output zeros)
  const std::int32_t* block_tables = nullptr;  // [batch, block_table_stride] page ids
  int block_table_stride = 0;
  int max_kv_len = 0;    // host-known bound of kv_lens: sizes the split
  float sm_scale = 0.0f;  // usually 1/sqrt(D)
  int num_splits = 0;     // 0: chosen from the batch and the GPU; > 0: forced (tests, tuning)
  void* workspace = nullptr;  // decode_workspace_bytes(...) bytes when the plan splits, else unused
  std::size_t workspace_bytes = 0;
};

// The split count attention_decode will use, and the workspace it then needs (0 without a split).
int decode_num_splits(const DecodeParams& p);

// Tokens [begin, end) of a sequence of kv_len tokens that split `split` of `num_splits` attends to. Each
// sequence splits its own length, not max_kv_len (a captured graph passes the whole context as
// max_kv_len, so splitting that would leave every shorter sequence in its first split): whole 16-token tiles,
// at least min_chunk tokens (a multiple of 16) per split, so short sequences use fewer splits and the
// rest are empty (begin == end == kv_len).
struct DecodeSplitRange {
  int begin, end;
};
constexpr DecodeSplitRange decode_split_range(int kv_len, int num_splits, int min_chunk, int split) {
  int chunk = ((kv_len + num_splits - 1) / num_splits + 15) / 16 * 16;
  if (chunk < min_chunk) chunk = min_chunk;
  const long long first = static_cast<long long>(split) * chunk;
  const int begin = first < kv_len ? static_cast<int>(first) : kv_len;
  const int end = kv_len - begin < chunk ? kv_len : begin + chunk;
  return {begin, end};
}
std::size_t decode_workspace_bytes(const DecodeParams& p);
void attention_decode(const DecodeParams& p, cudaStream_t stream);

struct PrefillParams {
  PagedKvCache cache;
  int batch = 0;
  int num_qo_heads = 0;
  int max_q_len = 0;  // host-known bound of the query spans: sizes the grid
  const std::uint16_t* q = nullptr;  // [total_q, Hq, D] fp16, 4-byte aligned rows
  std::int64_t q_token_stride = 0, q_head_stride = 0;
  std::uint16_t* out = nullptr;  // [total_q, Hq, D]
  std::int64_t out_token_stride = 0, out_head_stride = 0;
  const std::int32_t* qo_indptr = nullptr;  // [batch + 1]: sequence b's queries are rows [indptr[b], indptr[b+1])
  const std::int32_t* kv_lens = nullptr;    // [batch], >= that sequence's q_len
  const std::int32_t* block_tables = nullptr;
  int block_table_stride = 0;
  float sm_scale = 0.0f;
  bool causal = true;  // query i of a sequence (position kv_len - q_len + i) sees keys 0..position
};
void attention_prefill(const PrefillParams& p, cudaStream_t stream);

// Host-side checks (attention_check.cpp).
void check_params(const DecodeParams& p);
void check_params(const PrefillParams& p);
[[noreturn]] void throw_decode_workspace_error(std::size_t needed, std::size_t given);

}  // namespace atom::cuda
