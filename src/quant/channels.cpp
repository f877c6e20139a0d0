#include "quant/channels.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace atom::quant {

std::vector<std::int32_t> reorder_by_sum_of_squares(std::span<const double> sum_of_squares) {
  for (std::size_t i = 0; i < sum_of_squares.size(); ++i) {
    if (!std::isfinite(sum_of_squares[i])) fail("reorder: sum of squares of channel {} is not finite", i);
  }
  std::vector<std::int32_t> perm(sum_of_squares.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(),
                   [&](std::int32_t a, std::int32_t b) { return sum_of_squares[a] < sum_of_squares[b]; });
  return perm;
}

std::vector<float> smoothquant_scales(std::span<const float> act_absmax, std::span<const float> weight_absmax,
                                      float alpha) {
  if (act_absmax.size() != weight_absmax.size()) {
    fail("smoothquant: {} activation maxima for {} weight maxima", act_absmax.size(), weight_absmax.size());
  }
  if (!(alpha >= 0.0f && alpha <= 1.0f)) fail("smoothquant: alpha {} not in [0, 1]", alpha);
  std::vector<float> s(act_absmax.size(), 1.0f);
  for (std::size_t j = 0; j < s.size(); ++j) {
    const double a = act_absmax[j], w = weight_absmax[j];
    if (!(a > 0.0) || !(w > 0.0) || !std::isfinite(a) || !std::isfinite(w)) continue;
    const double v = std::pow(a, alpha) / std::pow(w, 1.0 - alpha);
    s[j] = static_cast<float>(std::clamp(v, 1e-5, 1e5));
  }
  return s;
}

void accumulate_weight_absmax(std::span<const float> w, std::int64_t n, std::int64_t k,
                              std::vector<float>& absmax) {
  if (static_cast<std::int64_t>(w.size()) != n * k)
    fail("smoothquant: {} weights for [{}, {}]", w.size(), n, k);
  if (absmax.empty()) absmax.assign(static_cast<std::size_t>(k), 0.0f);
  if (static_cast<std::int64_t>(absmax.size()) != k)
    fail("smoothquant: weight maxima of width {} for k {}", absmax.size(), k);
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t j = 0; j < k; ++j) absmax[j] = std::max(absmax[j], std::fabs(w[r * k + j]));
  }
}

void apply_smoothing(std::span<const float> s, std::span<float> w, std::int64_t n) {
  const auto k = static_cast<std::int64_t>(s.size());
  if (static_cast<std::int64_t>(w.size()) != n * k)
    fail("smoothquant: {} weights for [{}, {}]", w.size(), n, k);
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t j = 0; j < k; ++j) w[r * k + j] *= s[j];
  }
}

void fold_smoothing_into_norm(std::span<const float> s, std::span<float> norm_weight) {
  if (s.size() != norm_weight.size())
    fail("smoothquant: {} scales for a norm of {}", s.size(), norm_weight.size());
  for (std::size_t j = 0; j < s.size(); ++j) norm_weight[j] /= s[j];
}

ClipSearchResult search_clip(std::span<const float> grid, const std::function<double(float)>& error) {
  if (grid.empty()) fail("clip search: empty grid");
  ClipSearchResult result;
  for (std::size_t i = 0; i < grid.size(); ++i) {
    if (!(grid[i] > 0.0f && grid[i] <= 1.0f)) fail("clip search: ratio {} not in (0, 1]", grid[i]);
    const double e = error(grid[i]);
    result.errors.push_back(e);
    if (i == 0 || e < result.best_error) {
      result.best_error = e;
      result.best_clip = grid[i];
    }
  }
  return result;
}

std::vector<float> default_clip_grid() {
  std::vector<float> grid;
  for (int i = 0; i <= 6; ++i) grid.push_back(1.0f - 0.05f * static_cast<float>(i));
  return grid;
}

}  // namespace atom::quant
