// GPU sampling (sampling/sample_rows.h) per decode step: batches of 1 .. 256 rows over the Llama-2 (32000),
// SmolLM2 (49152) and Llama-3 (128256) vocabularies, for each kind of setting: plain greedy (argmax_rows),
// temperature only, top-k, top-p, top-k + top-p + min-p, penalties + top-p, 20 logprobs. Each case is
// validated first (tokens against atom::sample_token on the host: equal but for rounding at token edges),
// then timed (cudaEvent per launch, median of 20). The last column is what the step would cost without it:
// copying the logits to pinned host memory (before any host sampling).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../common/bench_harness.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/model/argmax.h"
#include "backend/cuda/sampling/sample_rows.h"
#include "model/sampler.h"

using namespace atom;
using namespace atom::cuda;
using bench::DeviceBuffer;

namespace {

struct Setting {
  const char* name;
  SamplingParams params;
  bool argmax_kernel = false;
};

std::vector<Setting> settings() {
  std::vector<Setting> out;
  SamplingParams p;
  p.temperature = 0.0f;
  out.push_back({"greedy (argmax_rows)", p, true});
  p = SamplingParams{};
  p.temperature = 0.8f;
  out.push_back({"temperature", p});
  p.top_k = 50;
  out.push_back({"top_k 50", p});
  p = SamplingParams{};
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  out.push_back({"top_p 0.9", p});
  p.top_k = 50;
  p.min_p = 0.05f;
  out.push_back({"top_k + top_p + min_p", p});
  p = SamplingParams{};
  p.top_p = 0.9f;
  p.repetition_penalty = 1.1f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.5f;
  out.push_back({"penalties + top_p", p});
  p = SamplingParams{};
  p.temperature = 0.8f;
  p.logprobs = 20;
  out.push_back({"logprobs 20", p});
  return out;
}

}  // namespace

int main() {
  std::printf("%s", bench::markdown_header(
                        {"vocab", "rows", "setting", "us/step", "us/row", "valid", "logits D2H us"})
                        .c_str());
  std::mt19937_64 rng(1);
  for (int vocab : {32000, 49152, 128256}) {
    for (int rows : {1, 32, 256}) {
      std::normal_distribution<float> normal(0.0f, 2.5f);
      std::vector<float> logits(static_cast<std::size_t>(rows) * vocab);
      for (float& x : logits) x = normal(rng);
      DeviceBuffer<float> logits_dev(logits.size());
      logits_dev.upload(logits);
      // One penalty slot per row: a 500-token prompt and 200 generated tokens.
      std::vector<TokenCounts> history(rows);
      std::vector<TokenCountEntry> entries;
      std::vector<std::int32_t> clear;
      for (int r = 0; r < rows; ++r) {
        std::vector<std::int32_t> prompt(500);
        for (auto& t : prompt) t = static_cast<std::int32_t>(rng() % vocab);
        history[r] = TokenCounts(prompt);
        for (int i = 0; i < 200; ++i) history[r].add_generated(static_cast<std::int32_t>(rng() % 2000));
        clear.push_back(r);
        for (const auto& [token, e] : history[r].entries())
          entries.push_back({r, token, e.generated, e.in_prompt});
      }
      DeviceBuffer<std::int32_t> counts(static_cast<std::size_t>(rows) * vocab);
      DeviceBuffer<std::uint8_t> mask(static_cast<std::size_t>(rows) * vocab);
      DeviceBuffer<TokenCountEntry> entries_dev(entries.size());
      entries_dev.upload(entries);
      LoadTokenCountsParams load;
      load.output_counts = counts.p;
      load.prompt_mask = mask.p;
      load.vocab = vocab;
      load.num_slots = rows;
      load.clear_slots = clear;
      load.entries = entries_dev.p;
      load.num_entries = static_cast<int>(entries.size());
      load_token_counts(load, nullptr);
      DeviceBuffer<SampleRow> rows_dev(rows);
      DeviceBuffer<std::int32_t> tokens(rows), top_tokens(static_cast<std::size_t>(rows) * kMaxTopLogprobs);
      DeviceBuffer<float> logprobs(rows), top_logprobs(static_cast<std::size_t>(rows) * kMaxTopLogprobs);
      float* pinned = nullptr;
      ATOM_CUDA_CHECK(cudaMallocHost(&pinned, logits.size() * sizeof(float)));
      const double copy_ms = bench::event_median_ms(
          [&](int) {
            ATOM_CUDA_CHECK(cudaMemcpyAsync(pinned, logits_dev.p, logits.size() * sizeof(float),
                                            cudaMemcpyDeviceToHost, nullptr));
          },
          20, 3);
      for (const Setting& setting : settings()) {
        std::vector<SampleRow> host_rows(rows);
        for (int r = 0; r < rows; ++r) {
          const SamplingParams& p = setting.params;  // the host reference draws with the same seed
          host_rows[r] = sample_row_of(p, r, p.has_penalties() ? r : -1, static_cast<std::uint64_t>(r));
        }
        rows_dev.upload(host_rows);
        SampleRowsParams sp;
        sp.logits = logits_dev.p;
        sp.logits_stride = vocab;
        sp.vocab = vocab;
        sp.rows = rows_dev.p;
        sp.num_rows = rows;
        sp.output_counts = counts.p;
        sp.prompt_mask = mask.p;
        sp.num_slots = rows;
        sp.tokens = tokens.p;
        sp.logprobs = logprobs.p;
        sp.top_tokens = top_tokens.p;
        sp.top_logprobs = top_logprobs.p;
        auto launch = [&](int) {
          if (setting.argmax_kernel) {
            argmax_rows(logits_dev.p, rows, vocab, tokens.p, nullptr);
          } else {
            sample_rows(sp, nullptr);
          }
        };
        launch(0);
        ATOM_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<std::int32_t> got = tokens.download();
        int same = 0;
        for (int r = 0; r < rows; ++r) {
          const std::span<const float> row(logits.data() + static_cast<std::size_t>(r) * vocab, vocab);
          same +=
              got[r] == sample_token(row, setting.params, &history[r], static_cast<std::uint64_t>(r)).token;
        }
        const double ms = bench::event_median_ms(launch, 20, 3);
        std::printf("| %d | %d | %s | %.1f | %.2f | %d/%d | %.1f |\n", vocab, rows, setting.name, ms * 1e3,
                    ms * 1e3 / rows, same, rows, copy_ms * 1e3);
      }
      cudaFreeHost(pinned);
    }
  }
  return 0;
}
