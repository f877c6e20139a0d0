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

namespace {

// -ln softmax(row)[target], in double.
double token_nll(const float* row, std::int64_t vocab, std::int32_t target) {
  const float max = *std::max_element(row, row + vocab);
  double sum = 0;
  for (std::int64_t j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
  return std::log(sum) + max - row[target];
}

void check_vocabulary(std::span<const std::int32_t> tokens, std::int64_t vocab) {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      fail("perplexity: token {} is {}, outside the vocabulary [0, {})", i, tokens[i], vocab);
    }
  }
}

}  // namespace

PerplexityResult perplexity(const WindowLogitsFn& run_window, std::int64_t vocab, std::span<const std::int32_t> tokens,
                            const PerplexityOptions& options) {
  const auto n = static_cast<std::int64_t>(tokens.size());
  const std::vector<PerplexityWindow> windows = perplexity_windows(n, options);
  check_vocabulary(tokens, vocab);
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
        chunk_nll += token_nll(logits + (r - first) * vocab, vocab, window[static_cast<std::size_t>(r + 1)]);
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

PerplexityResult perplexity(ModelRunner& runner, std::span<const std::int32_t> tokens, const PerplexityOptions& options,
                            int parallel_windows) {
  const auto n = static_cast<std::int64_t>(tokens.size());
  const std::vector<PerplexityWindow> windows = perplexity_windows(n, options);
  const std::int64_t vocab = runner.vocab_size();
  check_vocabulary(tokens, vocab);
  if (parallel_windows < 1) fail("perplexity: parallel_windows must be at least 1, got {}", parallel_windows);
  if (options.context > runner.max_context()) {
    fail("perplexity: windows of {} tokens exceed the runner's context of {}", options.context, runner.max_context());
  }
  constexpr int kBlockSize = 16;
  const int blocks_per_window = static_cast<int>((options.context + kBlockSize - 1) / kBlockSize);
  const int lanes = static_cast<int>(std::min<std::int64_t>(parallel_windows, static_cast<std::int64_t>(windows.size())));
  runner.allocate_kv_cache({lanes * blocks_per_window, kBlockSize});
  std::vector<std::vector<std::int32_t>> tables(static_cast<std::size_t>(lanes));
  for (int lane = 0; lane < lanes; ++lane) {
    for (int b = 0; b < blocks_per_window; ++b) tables[static_cast<std::size_t>(lane)].push_back(lane * blocks_per_window + b);
  }

  PerplexityResult result;
  Progress progress("perplexity", static_cast<std::int64_t>(windows.size()), options.show_progress);
  std::int64_t next_sequence_id = 1;
  std::vector<SequenceChunk> batch;
  std::vector<std::int64_t> wants_lane;  // lane of each logits row of a step
  std::vector<float> logits;
  for (std::size_t first = 0; first < windows.size(); first += static_cast<std::size_t>(lanes)) {
    const std::size_t count = std::min(windows.size() - first, static_cast<std::size_t>(lanes));
    std::vector<std::int64_t> ids(count);
    std::int64_t longest = 0;
    for (std::size_t i = 0; i < count; ++i) {
      ids[i] = next_sequence_id++;
      longest = std::max(longest, windows[first + i].end - windows[first + i].begin);
    }
    // Step t feeds token t of every window that has a token t + 1 to predict; its logits are read only where
    // token t + 1 is scored (the earlier steps still fill the KV cache).
    for (std::int64_t t = 0; t + 1 < longest; ++t) {
      batch.clear();
      wants_lane.clear();
      for (std::size_t i = 0; i < count; ++i) {
        const PerplexityWindow& w = windows[first + i];
        if (t + 1 >= w.end - w.begin) continue;
        SequenceChunk chunk;
        chunk.sequence_id = ids[i];
        chunk.tokens = tokens.subspan(static_cast<std::size_t>(w.begin + t), 1);
        chunk.start_position = static_cast<std::int32_t>(t);
        chunk.block_table = tables[i];
        chunk.wants_logits = w.begin + t + 1 >= w.first_scored;
        if (chunk.wants_logits) wants_lane.push_back(static_cast<std::int64_t>(i));
        batch.push_back(chunk);
      }
      logits.resize(wants_lane.size() * static_cast<std::size_t>(vocab));
      runner.execute(batch, logits);
      for (std::size_t k = 0; k < wants_lane.size(); ++k) {
        const PerplexityWindow& w = windows[first + static_cast<std::size_t>(wants_lane[k])];
        result.nll_sum += token_nll(logits.data() + k * static_cast<std::size_t>(vocab), vocab,
                                    tokens[static_cast<std::size_t>(w.begin + t + 1)]);
      }
    }
    for (std::size_t i = 0; i < count; ++i) {
      runner.release(ids[i]);
      result.tokens_scored += windows[first + i].end - windows[first + i].first_scored;
      ++result.windows;
    }
    progress.advance(static_cast<std::int64_t>(count), fmt::format("ppl {:.4f}", std::exp(result.nll_sum / std::max<std::int64_t>(result.tokens_scored, 1))));
  }
  progress.finish();
  result.perplexity = std::exp(result.nll_sum / static_cast<double>(result.tokens_scored));
  result.seconds = progress.elapsed_seconds();
  return result;
}

}  // namespace atom
