#pragma once
// Perplexity of a token sequence with Hugging Face's sliding-window recipe: windows of `context` tokens
// starting every `stride` tokens; each window scores only the tokens the previous windows did not score,
// and never its own first token (nothing precedes it inside the window). With stride == context every
// window scores all but its first token.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "backend/cpu/llama_model.h"
#include "model/model_runner.h"

namespace atom {

struct PerplexityOptions {
  std::int64_t context = 2048;   // tokens per window, >= 2
  std::int64_t stride = 2048;    // advance between window starts, 1 .. context
  std::int64_t max_windows = 0;  // 0: all windows
  bool show_progress = true;     // common/progress.h bar on stderr
};

struct PerplexityResult {
  double perplexity = 0;  // exp(nll_sum / tokens_scored)
  double nll_sum = 0;     // sum of -ln p(token | window before it)
  std::int64_t tokens_scored = 0;
  std::int64_t windows = 0;
  double seconds = 0;
};

struct PerplexityWindow {
  std::int64_t begin = 0;         // tokens [begin, end) are fed to the model
  std::int64_t end = 0;
  std::int64_t first_scored = 0;  // tokens [first_scored, end) are scored
};

// The windows of the recipe for n tokens. Throws atom::Error for n < 2 or options out of range.
std::vector<PerplexityWindow> perplexity_windows(std::int64_t n, const PerplexityOptions& options);

// Runs one window: must hand `sink` the logits of every position of `window`, rows in order (row r holds
// the logits that predict window[r + 1]).
using WindowLogitsFn = std::function<void(std::span<const std::int32_t> window, const cpu::LogitsSink& sink)>;

// Perplexity with any model that produces window logits (`vocab` columns per row).
PerplexityResult perplexity(const WindowLogitsFn& run_window, std::int64_t vocab,
                            std::span<const std::int32_t> tokens, const PerplexityOptions& options);
// Perplexity of the CPU decoder: every window runs on a fresh fp32 KV cache.
PerplexityResult perplexity(const cpu::LlamaModel& model, std::span<const std::int32_t> tokens,
                            const PerplexityOptions& options);
// Perplexity through a serving backend's runner, on the path generation takes: every window is fed one token
// per step (decode steps over the runner's paged, possibly quantized, KV cache), `parallel_windows` windows
// side by side as one batch. Allocates the runner's KV cache (parallel_windows x context positions in
// blocks of 16): pass a runner no engine uses, made for at least that many sequences, batched tokens and
// positions.
PerplexityResult perplexity(ModelRunner& runner, std::span<const std::int32_t> tokens, const PerplexityOptions& options,
                            int parallel_windows);

}  // namespace atom
