#include "backend/cpu/kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace atom::cpu {

std::string_view kv_dtype_name(KvDType dtype) {
  switch (dtype) {
    case KvDType::F32: return "f32";
    case KvDType::U8: return "u8";
    case KvDType::U4: return "u4";
  }
  return "?";
}

void F32KvRowStore::append(const float* rows, std::int64_t n) {
  data_.insert(data_.end(), rows, rows + n * width_);
}

void F32KvRowStore::read(std::int64_t begin, std::int64_t end, float* out) const {
  ATOM_CHECK(0 <= begin && begin <= end && end <= rows());
  std::copy(data_.begin() + begin * width_, data_.begin() + end * width_, out);
}

void F32KvRowStore::truncate(std::int64_t rows) {
  ATOM_CHECK(rows >= 0);
  if (rows < this->rows()) data_.resize(static_cast<std::size_t>(rows * width_));
}

std::unique_ptr<KvRowStore> make_f32_kv_row_store(std::int64_t row_width, std::int64_t /*head_dim*/) {
  return std::make_unique<F32KvRowStore>(row_width);
}

KvCache::KvCache(const KvCacheShape& shape, const KvRowStoreFactory& factory) : shape_(shape) {
  if (shape.num_layers <= 0 || shape.num_kv_heads <= 0 || shape.head_dim <= 0) {
    fail("KV cache shape must be positive: {} layers, {} kv heads, head_dim {}", shape.num_layers,
         shape.num_kv_heads, shape.head_dim);
  }
  for (int i = 0; i < shape.num_layers; ++i) {
    keys_.push_back(factory(shape.row_width(), shape.head_dim));
    values_.push_back(factory(shape.row_width(), shape.head_dim));
    ATOM_CHECK(keys_.back() && values_.back());
    ATOM_CHECK(keys_.back()->row_width() == shape.row_width() && values_.back()->row_width() == shape.row_width());
    ATOM_CHECK(keys_.back()->rows() == 0 && values_.back()->rows() == 0);
  }
}

void KvCache::truncate(std::int64_t tokens) {
  if (tokens < 0) fail("KV cache: cannot truncate to {} tokens", tokens);
  for (auto& k : keys_) k->truncate(tokens);
  for (auto& v : values_) v->truncate(tokens);
}

std::size_t KvCache::bytes() const {
  std::size_t total = 0;
  for (const auto& k : keys_) total += k->bytes();
  for (const auto& v : values_) total += v->bytes();
  return total;
}

}  // namespace atom::cpu
