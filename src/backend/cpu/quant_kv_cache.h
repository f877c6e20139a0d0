#pragma once
// Quantized KV row stores (docs/FORMAT.md, asymmetric UINT-n per token: one fp16 scale and one fp16 minimum per
// group of group_size channels along head_dim; group_size = head_dim is one pair per token per head). UINT4 codes
// are packed two per byte, low nibble first.
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cpu/kv_cache.h"

namespace atom::cpu {

class QuantKvRowStore final : public KvRowStore {
 public:
  // bits = 4 or 8; head_dim must divide row_width (and be even for 4 bits); group_size 0 means head_dim, else it
  // must divide head_dim (and be even for 4 bits).
  QuantKvRowStore(std::int64_t row_width, std::int64_t head_dim, int bits, std::int64_t group_size = 0);
  KvDType dtype() const override { return bits_ == 4 ? KvDType::U4 : KvDType::U8; }
  std::int64_t row_width() const override { return width_; }
  std::int64_t rows() const override { return rows_; }
  void append(const float* rows, std::int64_t n) override;
  void read(std::int64_t begin, std::int64_t end, float* out) const override;
  bool quantized_rows(QuantKvRows& view) const override;
  void truncate(std::int64_t rows) override;
  std::size_t bytes() const override;

  std::int64_t group_size() const { return group_; }
  // Stored form of row r, for tests and for copying to other backends: codes, then per group (row_width /
  // group_size of them, head h's first at h * head_dim / group_size) the fp16 scale and minimum.
  const std::uint8_t* codes(std::int64_t r) const { return codes_.data() + r * row_bytes_; }
  const std::uint16_t* scales(std::int64_t r) const { return scales_.data() + r * groups_; }
  const std::uint16_t* mins(std::int64_t r) const { return mins_.data() + r * groups_; }

 private:
  std::int64_t width_, head_dim_, group_, groups_, row_bytes_;
  int bits_;
  std::int64_t rows_ = 0;
  std::vector<std::uint8_t> codes_;                 // [rows, row_bytes]
  std::vector<std::uint16_t> scales_, mins_;        // [rows, groups] fp16
};

// quant::quantize_asymmetric_group (the format's rule) on AVX2, bit for bit: one head of one KV row per call,
// every token and layer. Groups holding a NaN or an infinity, or whose minimum or maximum is zero, take the
// scalar rule.
void quantize_kv_group(const float* x, std::int64_t n, int bits, std::uint8_t* codes, std::uint16_t& scale_bits,
                       std::uint16_t& lo_bits);

// Factories for KvCache (LlamaModel::new_cache): one group per head.
std::unique_ptr<KvRowStore> make_u8_kv_row_store(std::int64_t row_width, std::int64_t head_dim);
std::unique_ptr<KvRowStore> make_u4_kv_row_store(std::int64_t row_width, std::int64_t head_dim);
// group_size 0: one group per head (make_u8 / make_u4 above); checked when a store is made.
KvRowStoreFactory kv_row_store_factory(KvDType dtype, std::int64_t group_size = 0);

}  // namespace atom::cpu
