// Host time of the serving engine per step, without a model: a runner that does no work (greedy tokens from a
// counter) under the same engine, scheduler, block manager and per-token bookkeeping as `atom bench serve`.
// What it prints is the part of a GPU decode step's latency (TPOT minus the GPU time) that the engine adds.
//   engine_overhead [--batch 256] [--prompt 128] [--output 128] [--prefix-caching 1|0]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/token_id_codec.h"

namespace {

class NullRunner final : public atom::ModelRunner {
 public:
  int vocab_size() const override { return 32000; }
  int max_context() const override { return 4096; }
  std::size_t kv_block_bytes(int block_size) const override {
    return static_cast<std::size_t>(block_size) * 1024;
  }
  void allocate_kv_cache(const atom::KvCacheSpec&) override {}
  void execute(std::span<const atom::SequenceChunk>, std::span<float> logits) override {
    std::fill(logits.begin(), logits.end(), 0.0f);
  }
  bool samples_greedy_on_device() const override { return true; }
  void execute_greedy(std::span<const atom::SequenceChunk> batch, std::span<std::int32_t> tokens) override {
    std::size_t k = 0;
    for (const auto& c : batch) {
      if (c.wants_logits) tokens[k++] = 1 + (c.start_position * 7919) % 31000;
    }
  }
  std::string describe() const override { return "null"; }
};

int arg(int argc, char** argv, const char* name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const int batch = arg(argc, argv, "--batch", 256), prompt = arg(argc, argv, "--prompt", 128),
            output = arg(argc, argv, "--output", 128);
  atom::EngineConfig config;
  config.limits.max_batch = batch;
  config.limits.max_batched_tokens = 2048;
  config.num_kv_blocks = batch * ((prompt + output + 15) / 16);
  config.enable_prefix_caching = arg(argc, argv, "--prefix-caching", 1) != 0;
  atom::Engine engine(std::make_unique<NullRunner>(), std::make_shared<atom::TokenIdCodec>(32000, "null"),
                      config);
  for (int r = 0; r < batch; ++r) {
    atom::GenerationRequest request;
    request.prompt.assign(static_cast<std::size_t>(prompt), 1 + r % 1000);
    request.params.temperature = 0.0f;
    request.params.max_tokens = output;
    request.params.ignore_eos = true;
    engine.submit(std::move(request));
  }
  const auto start = std::chrono::steady_clock::now();
  while (engine.step()) {
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const atom::EngineStats s = engine.stats();
  std::printf("engine host overhead, null runner: %d requests x (%d prompt + %d output) tokens\n", batch,
              prompt, output);
  std::printf("steps %lld, mean batch %.1f, %.1f us/step, %.2f us per sequence-step\n",
              static_cast<long long>(s.steps), static_cast<double>(s.scheduled_sequences) / s.steps,
              1e6 * seconds / s.steps, 1e6 * seconds / s.scheduled_sequences);
  return 0;
}
