#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "common/error.h"
#include "common/progress.h"

namespace atom {

std::vector<PerplexityWindow> perplexity_windows(std::int64_t n, const PerplexityOptions& o) {
  if (o.context < 2) fail("perplexity: context must be at least 2 tokens, got {}", o.context);
  if (o.stride < 1 || o.stride > o.context) {
    fail("perplexity: stride must be in [1, context = {}], got {}", o.context, o.stride);
  }
  if (o.max_windows < 0) fail("perplexity: max_windows must be >= 0 (0 = all), got {}", o.max_windows);
  if (n < 2) fail("perplexity: need at least 2 tokens, got {}", n);
  std::vector<PerplexityWindow> windows;
  std::int64_t prev_end = 0;
  for (std::int64_t begin = 0; begin < n; begin += o.stride) {
    const std::int64_t end = std::min(begin + o.context, n);
    windows.push_back({begin, end, std::max(prev_end, begin + 1)});
    prev_end = end;
    if (end == n || (o.max_windows > 0 && static_cast<std::int64_t>(windows.size()) == o.max_windows)) break;
  }
  return windows;
}

PerplexityResult perplexity(const WindowLogitsFn& run_window, std::int64_t vocab, std::span<const std::int32_t> tokens,
                            const PerplexityOptions& options) {
  const auto n = static_cast<std::int64_t>(tokens.size());
  const std::vector<PerplexityWindow> windows = perplexity_windows(n, options);
  for (std::int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      fail("perplexity: token {} is {}, outside the vocabulary [0, {})", i, tokens[i], vocab);
    }
  }
  PerplexityResult result;
  Progress progress("perplexity", static_cast<std::int64_t>(windows.size()), options.show_progress);
  for (const PerplexityWindow& w : windows) {
    const std::span<const std::int32_t> window = tokens.subspan(w.begin, w.end - w.begin);
    // Row r predicts window[r + 1]; rows [first_row, last_row) are the scored ones.
    const std::int64_t first_row = w.first_scored - w.begin - 1, last_row = w.end - w.begin - 1;
    std::int64_t rows_seen = 0;
    double window_nll = 0;
    run_window(window, [&](std::int64_t first, std::int64_t rows, const float* logits) {
      if (first != rows_seen) fail("perplexity: window logits arrived out of order (row {} after {})", first, rows_seen);
      rows_seen += rows;
      const std::int64_t lo = std::max(first, first_row), hi = std::min(first + rows, last_row);
      double chunk_nll = 0;
#pragma omp parallel for reduction(+ : chunk_nll) schedule(static) if (hi - lo > 8)
      for (std::int64_t r = lo; r < hi; ++r) {
        const float* row = logits + (r - first) * vocab;
        const float max = *std::max_element(row, row + vocab);
        double sum = 0;
        for (std::int64_t j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
        chunk_nll += std::log(sum) + max - row[window[static_cast<std::size_t>(r + 1)]];
      }
      window_nll += chunk_nll;
    });
    if (rows_seen != w.end - w.begin) {
      fail("perplexity: the model returned {} logits rows for a window of {} tokens", rows_seen, w.end - w.begin);
    }
    result.nll_sum += window_nll;
    result.tokens_scored += w.end - w.first_scored;
    ++result.windows;
    progress.advance(1, fmt::format("ppl {:.4f}", std::exp(result.nll_sum / result.tokens_scored)));
  }
  progress.finish();
  result.perplexity = std::exp(result.nll_sum / static_cast<double>(result.tokens_scored));
  result.seconds = progress.elapsed_seconds();
  return result;
}

PerplexityResult perplexity(const cpu::LlamaModel& model, std::span<const std::int32_t> tokens,
                            const PerplexityOptions& options) {
  return perplexity(
      [&model](std::span<const std::int32_t> window, const cpu::LogitsSink& sink) {
        cpu::KvCache cache = model.new_cache();
        const cpu::SequenceInput input{window, &cache, /*all_logits=*/true};
        model.forward(std::span<const cpu::SequenceInput>(&input, 1), sink);
      },
      model.vocab_size(), tokens, options);
}

}  // namespace atom
