#include "backend/cpu/paged_kv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/quant_kv_cache.h"
#include "common/error.h"
#include "common/half.h"
#include "format/format.h"

namespace atom {

KvCacheDType parse_kv_cache_dtype(const std::string& name) {
  if (name == "f32" || name == "fp32") return KvCacheDType::f32;
  if (name == "fp16" || name == "f16") return KvCacheDType::f16;
  if (name == "int8" || name == "u8") return KvCacheDType::int8;
  if (name == "int4" || name == "u4") return KvCacheDType::int4;
  fail("KV cache dtype '{}' is not one of f32, fp16, int8, int4", name);
}

const char* kv_cache_dtype_name(KvCacheDType dtype) {
  switch (dtype) {
    case KvCacheDType::f32: return "f32";
    case KvCacheDType::f16: return "fp16";
    case KvCacheDType::int8: return "int8";
    case KvCacheDType::int4: return "int4";
  }
  return "?";
}

std::size_t PagedKvPool::row_bytes(KvCacheDType dtype, std::int64_t row_width, std::int64_t head_dim,
                                   std::int64_t group_size) {
  const auto w = static_cast<std::size_t>(row_width);
  const auto groups = static_cast<std::size_t>(row_width / (group_size == 0 ? head_dim : group_size));
  switch (dtype) {
    case KvCacheDType::f32: return w * 4;
    case KvCacheDType::f16: return w * 2;
    case KvCacheDType::int8: return w + groups * 4;      // codes, fp16 scale and minimum per group
    case KvCacheDType::int4: return w / 2 + groups * 4;  // two codes a byte
  }
  return 0;
}

PagedKvPool::PagedKvPool(KvCacheDType dtype, int regions, int num_blocks, int block_size, std::int64_t row_width,
                         std::int64_t head_dim, std::int64_t group_size)
    : dtype_(dtype),
      regions_(regions),
      num_blocks_(num_blocks),
      block_size_(block_size),
      row_width_(row_width),
      head_dim_(head_dim),
      group_(group_size == 0 ? head_dim : group_size),
      groups_(0) {
  if (regions < 1 || num_blocks < 1 || block_size < 1) {
    fail("paged KV pool: {} regions, {} blocks of {} tokens", regions, num_blocks, block_size);
  }
  if (head_dim < 1 || row_width < 1 || row_width % head_dim != 0) {
    fail("paged KV pool: head_dim {} does not divide the row width {}", head_dim, row_width);
  }
  if (dtype == KvCacheDType::int4 && head_dim % 2 != 0) fail("paged KV pool: int4 needs an even head_dim, got {}", head_dim);
  if (group_size != 0 && (dtype == KvCacheDType::f32 || dtype == KvCacheDType::f16)) {
    fail("paged KV pool: kv_group_size {} needs an int8 or int4 cache, not {}", group_size, kv_cache_dtype_name(dtype));
  }
  if (group_ < 1 || head_dim % group_ != 0) {
    fail("paged KV pool: kv_group_size {} does not divide head_dim {}", group_size, head_dim);
  }
  if (dtype == KvCacheDType::int4 && group_ % 2 != 0) {
    fail("paged KV pool: int4 needs an even kv_group_size, got {}", group_size);
  }
  groups_ = row_width / group_;
  row_bytes_ = row_bytes(dtype, row_width, head_dim, group_);
  bytes_ = row_bytes_ * static_cast<std::size_t>(block_size) * num_blocks * regions;
  // Default-initialized: the pages stay untouched (and unbacked) until written.
  data_.reset(new std::uint8_t[bytes_]);
}

std::uint8_t* PagedKvPool::row(int region, std::int32_t block, std::int64_t slot) const {
  ATOM_CHECK(region >= 0 && region < regions_ && block >= 0 && block < num_blocks_);
  const std::size_t index = (static_cast<std::size_t>(region) * num_blocks_ + block) * block_size_ + slot;
  return data_.get() + index * row_bytes_;
}

void PagedKvPool::write(int region, const std::vector<std::int32_t>& table, std::int64_t first, const float* rows,
                        std::int64_t n) {
  if (first + n > static_cast<std::int64_t>(table.size()) * block_size_) {
    fail("paged KV pool: positions up to {} do not fit the {} blocks of the block table", first + n, table.size());
  }
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(group_));
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t position = first + r;
    std::uint8_t* dst = row(region, table[position / block_size_], position % block_size_);
    const float* src = rows + r * row_width_;
    switch (dtype_) {
      case KvCacheDType::f32:
        std::memcpy(dst, src, static_cast<std::size_t>(row_width_) * 4);
        break;
      case KvCacheDType::f16:
        for (std::int64_t i = 0; i < row_width_; ++i) {
          const std::uint16_t h = fp32_to_fp16(src[i]);
          std::memcpy(dst + 2 * i, &h, 2);
        }
        break;
      case KvCacheDType::int8:
      case KvCacheDType::int4: {
        const int bits = dtype_ == KvCacheDType::int8 ? 8 : 4;
        const std::int64_t code_bytes = bits == 8 ? row_width_ : row_width_ / 2;
        for (std::int64_t g = 0; g < groups_; ++g) {
          std::uint16_t scale = 0, lo = 0;
          cpu::quantize_kv_group(src + g * group_, group_, bits, codes.data(), scale, lo);
          if (bits == 8) {
            std::memcpy(dst + g * group_, codes.data(), static_cast<std::size_t>(group_));
          } else {
            std::uint8_t* packed = dst + g * group_ / 2;
            for (std::int64_t i = 0; i < group_; i += 2) {
              packed[i / 2] = static_cast<std::uint8_t>(codes[i] | (codes[i + 1] << 4));
            }
          }
          std::memcpy(dst + code_bytes + 2 * g, &scale, 2);
          std::memcpy(dst + code_bytes + 2 * groups_ + 2 * g, &lo, 2);
        }
        break;
      }
    }
  }
}

void PagedKvPool::read(int region, const std::vector<std::int32_t>& table, std::int64_t begin, std::int64_t end,
                       float* out) const {
  if (begin < 0 || begin > end || end > static_cast<std::int64_t>(table.size()) * block_size_) {
    fail("paged KV pool: read of positions [{}, {}) with {} blocks", begin, end, table.size());
  }
  std::int64_t position = begin;
  while (position < end) {
    // A run of rows inside one block is contiguous.
    const std::int64_t slot = position % block_size_;
    const std::int64_t run = std::min(end - position, block_size_ - slot);
    const std::uint8_t* src = row(region, table[position / block_size_], slot);
    float* dst = out + (position - begin) * row_width_;
    switch (dtype_) {
      case KvCacheDType::f32:
        std::memcpy(dst, src, static_cast<std::size_t>(run * row_width_) * 4);
        break;
      case KvCacheDType::f16:
        for (std::int64_t i = 0; i < run * row_width_; ++i) {
          std::uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          dst[i] = fp16_to_fp32(h);
        }
        break;
      case KvCacheDType::int8:
      case KvCacheDType::int4: {
        const bool int8 = dtype_ == KvCacheDType::int8;
        const std::int64_t code_bytes = int8 ? row_width_ : row_width_ / 2;
        for (std::int64_t r = 0; r < run; ++r) {
          const std::uint8_t* codes = src + r * row_bytes_;
          float* values = dst + r * row_width_;
          for (std::int64_t g = 0; g < groups_; ++g) {
            std::uint16_t scale_bits, lo_bits;
            std::memcpy(&scale_bits, codes + code_bytes + 2 * g, 2);
            std::memcpy(&lo_bits, codes + code_bytes + 2 * groups_ + 2 * g, 2);
            const float scale = fp16_to_fp32(scale_bits), lo = fp16_to_fp32(lo_bits);
            const std::int64_t base = g * group_;
            if (int8) {
              for (std::int64_t i = 0; i < group_; ++i) {
                values[base + i] = std::fma(static_cast<float>(codes[base + i]), scale, lo);
              }
            } else {
              const std::uint8_t* packed = codes + base / 2;
              for (std::int64_t i = 0; i < group_; i += 2) {
                values[base + i] = std::fma(static_cast<float>(packed[i / 2] & 0x0F), scale, lo);
                values[base + i + 1] = std::fma(static_cast<float>(packed[i / 2] >> 4), scale, lo);
              }
            }
          }
        }
        break;
      }
    }
    position += run;
  }
}

void PagedKvPool::quantized_rows(int region, const std::vector<std::int32_t>& table, std::int64_t rows,
                                 cpu::QuantKvRows& view) const {
  ATOM_CHECK(dtype_ == KvCacheDType::int8 || dtype_ == KvCacheDType::int4);
  if (rows < 0 || rows > static_cast<std::int64_t>(table.size()) * block_size_) {
    fail("paged KV pool: {} rows with {} blocks", rows, table.size());
  }
  const std::int64_t code_bytes = dtype_ == KvCacheDType::int8 ? row_width_ : row_width_ / 2;
  view.bits = dtype_ == KvCacheDType::int8 ? 8 : 4;
  view.group_size = group_;
  view.rows = rows;
  view.run_rows = block_size_;
  view.code_stride = view.param_stride = static_cast<std::int64_t>(row_bytes_);
  view.runs.clear();
  for (std::int64_t b = 0; b * block_size_ < rows; ++b) {
    const std::uint8_t* first = row(region, table[static_cast<std::size_t>(b)], 0);
    view.runs.push_back({first, first + code_bytes, first + code_bytes + 2 * groups_});
  }
}

PagedKvRowStore::PagedKvRowStore(PagedKvPool& pool, int region, const std::vector<std::int32_t>& table)
    : pool_(pool), region_(region), table_(table) {}

cpu::KvDType PagedKvRowStore::dtype() const {
  switch (pool_.dtype()) {
    case KvCacheDType::int8: return cpu::KvDType::U8;
    case KvCacheDType::int4: return cpu::KvDType::U4;
    default: return cpu::KvDType::F32;
  }
}

void PagedKvRowStore::append(const float* rows, std::int64_t n) {
  pool_.write(region_, table_, rows_, rows, n);
  rows_ += n;
}

void PagedKvRowStore::read(std::int64_t begin, std::int64_t end, float* out) const {
  if (end > rows_) fail("paged KV store: read of rows [{}, {}) of {}", begin, end, rows_);
  pool_.read(region_, table_, begin, end, out);
}

bool PagedKvRowStore::quantized_rows(cpu::QuantKvRows& view) const {
  if (pool_.dtype() != KvCacheDType::int8 && pool_.dtype() != KvCacheDType::int4) return false;
  pool_.quantized_rows(region_, table_, rows_, view);
  return true;
}

void PagedKvRowStore::truncate(std::int64_t rows) {
  if (rows < 0) fail("paged KV store: truncate to {} rows", rows);
  rows_ = std::min(rows_, rows);
}

void PagedKvRowStore::adopt(std::int64_t rows) {
  if (rows_ != 0 || rows < 0) fail("paged KV store: adopt {} rows into a store of {}", rows, rows_);
  const std::int64_t capacity = static_cast<std::int64_t>(table_.size()) * pool_.block_size();
  if (rows > capacity) fail("paged KV store: adopt {} rows, but the block table holds {}", rows, capacity);
  rows_ = rows;
}

std::size_t PagedKvRowStore::bytes() const {
  return static_cast<std::size_t>(rows_) * pool_.stored_row_bytes();
}

}  // namespace atom
