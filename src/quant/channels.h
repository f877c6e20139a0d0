#pragma once
// Per-input-channel decisions of the quantizer: the reorder permutation with the outliers last, SmoothQuant's
// migration scales, and the clip-ratio grid search. How many outlier channels a layer gets is part of the
// recipe (format/recipe.h).
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "format/recipe.h"  // default_outlier_count, check_outlier_count

namespace atom::quant {

// Channel order of a linear input (FORMAT.md `perm`): all channels sorted by increasing activation sum
// of squares (diag(X^T X) over the calibration set; ties by channel index), as the Atom reference does.
// The largest ones come last, so the last n_outliers entries are the outliers, and channels of similar
// magnitude share groups.
std::vector<std::int32_t> reorder_by_sum_of_squares(std::span<const double> sum_of_squares);

// SmoothQuant (Xiao et al. 2023): per input channel j, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), with
// max|W_j| over every output row of every linear reading this input. X is divided by s (folded into the
// preceding RMSNorm weight) and W's column j multiplied by s. Channels with a zero activation or weight
// maximum get s = 1; s is clamped to [1e-5, 1e5].
std::vector<float> smoothquant_scales(std::span<const float> act_absmax, std::span<const float> weight_absmax,
                                      float alpha);
// Column maxima max_r |w[r, j]| of w [n, k], folded into `absmax` (elementwise max; resized to k if empty).
void accumulate_weight_absmax(std::span<const float> w, std::int64_t n, std::int64_t k,
                              std::vector<float>& absmax);
// Applies s: w[r, j] *= s[j] (in place), norm_weight[j] /= s[j] (in place).
void apply_smoothing(std::span<const float> s, std::span<float> w, std::int64_t n);
void fold_smoothing_into_norm(std::span<const float> s, std::span<float> norm_weight);

// Grid search of a clip ratio: evaluates error(c) for every c of `grid` and keeps the smallest error (the
// first one on ties). Throws atom::Error on an empty grid or a ratio outside (0, 1].
struct ClipSearchResult {
  float best_clip = 1.0f;
  double best_error = 0.0;
  std::vector<double> errors;  // per grid entry
};
ClipSearchResult search_clip(std::span<const float> grid, const std::function<double(float)>& error);
// The default grid: 1.00, 0.95, ..., 0.70.
std::vector<float> default_clip_grid();

}  // namespace atom::quant
