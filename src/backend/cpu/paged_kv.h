#pragma once
// The CPU paged KV cache: one pool of fixed-size blocks per (layer, K or V), shared by all sequences.
// A sequence's rows live in the blocks its block table names (position p: block table[p / block_size],
// slot p % block_size). Rows are stored as fp32, fp16, or asymmetric UINT8 / UINT4 per token (docs/FORMAT.md:
// one fp16 scale and one fp16 minimum per group of group_size channels along head_dim, head_dim by default;
// codes packed low nibble first).
// PagedKvRowStore plugs the pool into the CPU model's KvRowStore seam.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/kv_cache.h"

namespace atom {

enum class KvCacheDType { f32, f16, int8, int4 };
// "f32" | "fp16" | "int8" | "int4" (also "f16", "u8", "u4"); throws atom::Error naming the value otherwise.
KvCacheDType parse_kv_cache_dtype(const std::string& name);
const char* kv_cache_dtype_name(KvCacheDType dtype);

class PagedKvPool {
 public:
  // `regions`: stores per sequence (2 * layers). Memory is reserved, not touched, until rows are written.
  // group_size (int8 / int4): 0 means head_dim, else it must divide head_dim.
  PagedKvPool(KvCacheDType dtype, int regions, int num_blocks, int block_size, std::int64_t row_width,
              std::int64_t head_dim, std::int64_t group_size = 0);

  // Bytes of one stored row (codes, then the integer formats' fp16 scales and minimums: one per group).
  static std::size_t row_bytes(KvCacheDType dtype, std::int64_t row_width, std::int64_t head_dim,
                               std::int64_t group_size = 0);

  KvCacheDType dtype() const { return dtype_; }
  int regions() const { return regions_; }
  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  std::int64_t row_width() const { return row_width_; }
  std::int64_t group_size() const { return group_; }
  std::size_t bytes() const { return bytes_; }
  std::size_t stored_row_bytes() const { return row_bytes_; }

  // Encodes `n` fp32 rows for positions [first, first + n) of the sequence with `table`.
  void write(int region, const std::vector<std::int32_t>& table, std::int64_t first, const float* rows,
             std::int64_t n);
  // Decodes positions [begin, end) to fp32 rows.
  void read(int region, const std::vector<std::int32_t>& table, std::int64_t begin, std::int64_t end,
            float* out) const;
  // Where positions [0, rows) of the sequence with `table` are stored (int8 / int4 pools; one run per block).
  void quantized_rows(int region, const std::vector<std::int32_t>& table, std::int64_t rows,
                      cpu::QuantKvRows& view) const;

 private:
  std::uint8_t* row(int region, std::int32_t block, std::int64_t slot) const;

  KvCacheDType dtype_;
  int regions_, num_blocks_, block_size_;
  std::int64_t row_width_, head_dim_, group_, groups_;
  std::size_t row_bytes_, bytes_;
  std::unique_ptr<std::uint8_t[]> data_;
};

// One layer's K or V of one sequence, stored in the pool through the sequence's block table (which the
// runner keeps current; it must cover every row appended).
class PagedKvRowStore final : public cpu::KvRowStore {
 public:
  PagedKvRowStore(PagedKvPool& pool, int region, const std::vector<std::int32_t>& table);
  // The CPU model's dtype tags have no fp16: fp16 rows report F32, the type attention reads them as.
  cpu::KvDType dtype() const override;
  std::int64_t row_width() const override { return pool_.row_width(); }
  std::int64_t rows() const override { return rows_; }
  void append(const float* rows, std::int64_t n) override;
  void read(std::int64_t begin, std::int64_t end, float* out) const override;
  bool quantized_rows(cpu::QuantKvRows& view) const override;
  void truncate(std::int64_t rows) override;
  std::size_t bytes() const override;
  // Takes the first `rows` rows as already written to the table's blocks (by another sequence: a cached
  // prefix). Only on an empty store.
  void adopt(std::int64_t rows);

 private:
  PagedKvPool& pool_;
  int region_;
  const std::vector<std::int32_t>& table_;
  std::int64_t rows_ = 0;
};

}  // namespace atom
