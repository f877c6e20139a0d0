#pragma once
// Key/value cache of one sequence: per layer, the K and V rows of every token seen so far (K after RoPE).
// A row is one token's [num_kv_heads * head_dim] values. Storage is pluggable through KvRowStore: fp32 here;
// the quantizer's INT8/INT4 asymmetric per-token stores (docs/FORMAT.md, groups of head_dim or fewer channels)
// implement the same interface and are handed in as a KvRowStoreFactory.
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

namespace atom::cpu {

enum class KvDType : std::uint8_t { F32, U8, U4 };
std::string_view kv_dtype_name(KvDType dtype);  // "f32" | "u8" | "u4"

// Where a quantized store keeps its rows, for attention that reads the codes in place instead of a dequantized
// copy: runs of consecutive rows (one run for a plain store, one per block for the paged pool); inside a run,
// row r's codes start r * code_stride bytes after the run's first codes (UINT4 two per byte, low nibble
// first, or UINT8; head h's at h * head_dim * bits / 8), its fp16 scales and fp16 minimums (one per group of
// group_size channels, group_size dividing head_dim; head h's first group is h * head_dim / group_size)
// r * param_stride bytes after the run's first ones. Value = fma(code, scale of its group, minimum of its group).
struct QuantKvRows {
  struct Run {
    const std::uint8_t* codes = nullptr;
    const std::uint8_t* scales = nullptr;
    const std::uint8_t* mins = nullptr;
  };
  int bits = 0;               // 4 or 8
  std::int64_t group_size = 0;  // channels per (scale, minimum) pair
  std::int64_t rows = 0;      // rows [0, rows) are described
  std::int64_t run_rows = 0;  // rows per run (the last run may hold fewer)
  std::int64_t code_stride = 0, param_stride = 0;
  std::vector<Run> runs;      // ceil(rows / run_rows) runs
};

// Rows of one layer's K (or V) for one sequence.
class KvRowStore {
 public:
  virtual ~KvRowStore() = default;
  virtual KvDType dtype() const = 0;
  virtual std::int64_t row_width() const = 0;  // num_kv_heads * head_dim
  virtual std::int64_t rows() const = 0;
  // Appends n rows (fp32, [n, row_width]); a quantized store quantizes them here.
  virtual void append(const float* rows, std::int64_t n) = 0;
  // Writes rows [begin, end) as fp32 (dequantized) to out [end - begin, row_width].
  virtual void read(std::int64_t begin, std::int64_t end, float* out) const = 0;
  // Direct fp32 view of all rows when stored as fp32 (lets attention skip the copy); nullptr otherwise.
  virtual const float* f32_rows() const { return nullptr; }
  // Fills `view` with where all rows are stored when stored as UINT4 / UINT8 codes (its vector's storage is
  // reused); false otherwise.
  virtual bool quantized_rows(QuantKvRows& view) const { return false; }
  virtual void truncate(std::int64_t rows) = 0;  // keeps the first `rows` rows
  virtual std::size_t bytes() const = 0;         // storage held, for memory accounting
};

// Makes the store of one layer's K or V: (row_width, head_dim) -> store.
using KvRowStoreFactory = std::function<std::unique_ptr<KvRowStore>(std::int64_t row_width, std::int64_t head_dim)>;

class F32KvRowStore final : public KvRowStore {
 public:
  explicit F32KvRowStore(std::int64_t row_width) : width_(row_width) {}
  KvDType dtype() const override { return KvDType::F32; }
  std::int64_t row_width() const override { return width_; }
  std::int64_t rows() const override { return static_cast<std::int64_t>(data_.size()) / width_; }
  void append(const float* rows, std::int64_t n) override;
  void read(std::int64_t begin, std::int64_t end, float* out) const override;
  const float* f32_rows() const override { return data_.data(); }
  void truncate(std::int64_t rows) override;
  std::size_t bytes() const override { return data_.capacity() * sizeof(float); }

 private:
  std::int64_t width_;
  std::vector<float> data_;
};

std::unique_ptr<KvRowStore> make_f32_kv_row_store(std::int64_t row_width, std::int64_t head_dim);

struct KvCacheShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  std::int64_t row_width() const { return std::int64_t{num_kv_heads} * head_dim; }
};

class KvCache {
 public:
  explicit KvCache(const KvCacheShape& shape, const KvRowStoreFactory& factory = make_f32_kv_row_store);
  KvCache(KvCache&&) noexcept = default;
  KvCache& operator=(KvCache&&) noexcept = default;

  const KvCacheShape& shape() const { return shape_; }
  KvDType dtype() const { return keys_.front()->dtype(); }
  // Tokens cached (= position of the next token). Between forwards every layer holds this many rows.
  std::int64_t length() const { return keys_.front()->rows(); }
  void truncate(std::int64_t tokens);  // forget tokens [tokens, length): rewind for re-generation
  void clear() { truncate(0); }
  std::size_t bytes() const;

  KvRowStore& keys(int layer) { return *keys_[static_cast<std::size_t>(layer)]; }
  KvRowStore& values(int layer) { return *values_[static_cast<std::size_t>(layer)]; }
  const KvRowStore& keys(int layer) const { return *keys_[static_cast<std::size_t>(layer)]; }
  const KvRowStore& values(int layer) const { return *values_[static_cast<std::size_t>(layer)]; }

 private:
  KvCacheShape shape_;
  std::vector<std::unique_ptr<KvRowStore>> keys_, values_;
};

}  // namespace atom::cpu
