#include "quant/kv_centering.h"

#include <algorithm>

#include "backend/cpu/kv_cache.h"
#include "common/error.h"
#include "quant/calibration.h"

namespace atom::quant {

void RowMeanAccumulator::add(const float* rows, std::int64_t n) {
  const auto width = static_cast<std::int64_t>(sum_.size());
  for (std::int64_t r = 0; r < n; ++r) {
    const float* x = rows + r * width;
    for (std::int64_t i = 0; i < width; ++i) sum_[static_cast<std::size_t>(i)] += x[i];
  }
  rows_ += n;
}

std::vector<float> RowMeanAccumulator::mean() const {
  if (rows_ == 0) fail("KV centering: no calibration rows to average");
  std::vector<float> m(sum_.size());
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(sum_[i] / static_cast<double>(rows_));
  return m;
}

KvCenters measure_kv_centers(const cpu::LlamaModel& model, std::span<const std::int32_t> calib_tokens,
                             const QuantRecipe& recipe) {
  const ModelConfig& c = model.config();
  for (int li = 0; li < model.num_layers(); ++li) {
    if (!model.layer(li).key_center.empty() || !model.layer(li).value_center.empty())
      fail("KV centering: layer {} of the model is centered already", li);
  }
  const std::int64_t length = std::min<std::int64_t>(recipe.calib_len, c.max_position_embeddings);
  const std::vector<std::int64_t> starts = calibration_window_starts(
      static_cast<std::int64_t>(calib_tokens.size()), recipe.calib_windows, length, recipe.calib_seed);
  const std::int64_t kv_dim = std::int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<RowMeanAccumulator> keys(static_cast<std::size_t>(c.num_layers), RowMeanAccumulator(kv_dim));
  std::vector<RowMeanAccumulator> values = keys;
  // A few windows per forward, each its own sequence from position 0, through fp32 caches: their rows are
  // exactly what the model appended.
  constexpr std::size_t kWindowsPerForward = 4;
  std::vector<float> rows(static_cast<std::size_t>(length * kv_dim)), logits;
  for (std::size_t first = 0; first < starts.size(); first += kWindowsPerForward) {
    const std::size_t count = std::min(kWindowsPerForward, starts.size() - first);
    std::vector<cpu::KvCache> caches;
    std::vector<cpu::SequenceInput> batch;
    caches.reserve(count);
    for (std::size_t w = 0; w < count; ++w) {
      caches.push_back(model.new_cache(cpu::make_f32_kv_row_store));
      batch.push_back({calib_tokens.subspan(static_cast<std::size_t>(starts[first + w]),
                                            static_cast<std::size_t>(length)),
                       &caches.back(), false});
    }
    model.forward(batch, logits);
    for (const cpu::KvCache& cache : caches) {
      for (int li = 0; li < c.num_layers; ++li) {
        cache.keys(li).read(0, length, rows.data());
        keys[static_cast<std::size_t>(li)].add(rows.data(), length);
        cache.values(li).read(0, length, rows.data());
        values[static_cast<std::size_t>(li)].add(rows.data(), length);
      }
    }
  }
  KvCenters centers;
  centers.keys.resize(static_cast<std::size_t>(c.num_layers));
  centers.values.resize(centers.keys.size());
  for (std::size_t li = 0; li < centers.keys.size(); ++li) {
    if (recipe.kv_center_keys) centers.keys[li] = keys[li].mean();
    if (recipe.kv_center_values) centers.values[li] = values[li].mean();
  }
  return centers;
}

void set_kv_centers(cpu::LlamaModel& model, const KvCenters& centers) {
  if (static_cast<int>(centers.keys.size()) != model.num_layers() ||
      static_cast<int>(centers.values.size()) != model.num_layers()) {
    fail("KV centering: {} key and {} value vectors for a model of {} layers", centers.keys.size(),
         centers.values.size(), model.num_layers());
  }
  for (int li = 0; li < model.num_layers(); ++li) {
    model.set_kv_centers(li, centers.keys[static_cast<std::size_t>(li)], centers.values[static_cast<std::size_t>(li)]);
  }
}

}  // namespace atom::quant
