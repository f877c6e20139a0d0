// Argument checks of the attention kernels.
#include <cstdint>

#include "backend/cuda/attention/attention_kernels.h"
#include "common/error.h"

namespace atom::cuda {
namespace {

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

void check_heads(const PagedKvCache& c, int num_qo_heads, const char* what) {
  if (num_qo_heads <= 0 || num_qo_heads % c.num_kv_heads != 0) {
    fail("{}: num_qo_heads {} must be a positive multiple of cache.num_kv_heads {}", what, num_qo_heads,
         c.num_kv_heads);
  }
  if (num_qo_heads / c.num_kv_heads > 8) {
    fail("{}: {} query heads per KV head (at most 8 supported)", what, num_qo_heads / c.num_kv_heads);
  }
}

}  // namespace

void check_params(const DecodeParams& p) {
  const char* what = "attention_decode";
  check_cache(p.cache, what);
  if (p.batch < 0 || p.batch > 65535) fail("{}: batch {} outside [0, 65535]", what, p.batch);
  check_heads(p.cache, p.num_qo_heads, what);
  if (p.q == nullptr || p.out == nullptr) fail("{}: q / out is null", what);
  if (p.kv_lens == nullptr || p.block_tables == nullptr) fail("{}: kv_lens / block_tables is null", what);
  if (p.block_table_stride <= 0) fail("{}: block_table_stride {} must be positive", what, p.block_table_stride);
  if (p.max_kv_len < 0) fail("{}: max_kv_len {} is negative", what, p.max_kv_len);
  if (p.num_splits < 0) fail("{}: num_splits {} is negative", what, p.num_splits);
  if (!(p.sm_scale > 0.0f)) fail("{}: sm_scale {} must be positive", what, p.sm_scale);
}

void check_params(const PrefillParams& p) {
  const char* what = "attention_prefill";
  check_cache(p.cache, what);
  if (p.batch < 0 || p.batch > 65535) fail("{}: batch {} outside [0, 65535]", what, p.batch);
  check_heads(p.cache, p.num_qo_heads, what);
  if (p.max_q_len < 0) fail("{}: max_q_len {} is negative", what, p.max_q_len);
  if (p.q == nullptr || p.out == nullptr) fail("{}: q / out is null", what);
  if (!aligned(p.q, 4) || !aligned(p.out, 4) || p.q_token_stride % 2 != 0 || p.q_head_stride % 2 != 0 ||
      p.out_token_stride % 2 != 0 || p.out_head_stride % 2 != 0) {
    fail("{}: q / out rows must be 4-byte aligned (even strides)", what);
  }
  if (p.qo_indptr == nullptr || p.kv_lens == nullptr || p.block_tables == nullptr) {
    fail("{}: qo_indptr / kv_lens / block_tables is null", what);
  }
  if (p.block_table_stride <= 0) fail("{}: block_table_stride {} must be positive", what, p.block_table_stride);
  if (!(p.sm_scale > 0.0f)) fail("{}: sm_scale {} must be positive", what, p.sm_scale);
}

void throw_decode_workspace_error(std::size_t needed, std::size_t given) {
  fail("attention_decode: workspace of {} bytes is too small: the split needs {} (decode_workspace_bytes)", given,
       needed);
}

}  // namespace atom::cuda
