// CPU decoder throughput: prefill tokens/s (one long prompt, matrix-matrix), decode tokens/s for one
// sequence and for a batch of sequences (one token each per step, each with its own KV cache). The model as
// load_cpu_model gives it: fp32 for a GGUF / HF checkpoint, the integer kernels for an Atom checkpoint.
//   cpu_forward [model.gguf | hf_dir | atom_dir] [--prompt 512] [--decode 32] [--batch 8 (0: none)]
//   [--batch-prompt 128]
// Default model: .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (run from the repository root).
#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/llama_model.h"
#include "common/error.h"
#include "io/checkpoint.h"
#include "model/sampler.h"
#include "model/weights.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU seconds of the whole process (all threads): on a shared machine, wall time depends on the others.
double cpu_now() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

struct Timer {
  double wall = now(), cpu = cpu_now();
  std::pair<double, double> elapsed() const { return {now() - wall, cpu_now() - cpu}; }
};

void check_finite(const std::vector<float>& logits, const char* what) {
  for (float v : logits) {
    if (!std::isfinite(v)) atom::fail("{}: non-finite logit", what);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  std::string path = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int prompt = 512, decode = 32, batch = 8, batch_prompt = 128;
  for (int i = 1; i < argc; ++i) {
    auto next_int = [&](const char* flag) {
      if (i + 1 >= argc) atom::fail("{} needs a value", flag);
      return std::atoi(argv[++i]);
    };
    if (!std::strcmp(argv[i], "--prompt")) prompt = next_int("--prompt");
    else if (!std::strcmp(argv[i], "--decode")) decode = next_int("--decode");
    else if (!std::strcmp(argv[i], "--batch")) batch = next_int("--batch");
    else if (!std::strcmp(argv[i], "--batch-prompt")) batch_prompt = next_int("--batch-prompt");
    else if (argv[i][0] == '-') atom::fail("unknown option '{}'", argv[i]);
    else path = argv[i];
  }
  if (prompt < 1 || decode < 1 || batch < 0 || batch_prompt < 1) atom::fail("sizes must be positive (--batch 0: no batch)");

  const double t0 = now();
  const std::unique_ptr<atom::cpu::LlamaModel> loaded =
      atom::cpu::load_cpu_model(atom::open_checkpoint(path));
  const atom::cpu::LlamaModel& model = *loaded;
  const double load_s = now() - t0;
  const auto& c = model.config();
  std::printf("model %s: %s, %d layers, hidden %d, heads %d/%d, vocab %d; %s, lm_head %s; loaded in %.2f s\n",
              path.c_str(), c.architecture.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
              c.vocab_size, model.layer(0).q_proj->describe().c_str(), loaded->lm_head().describe().c_str(),
              load_s);
  atom::cpu::use_single_threaded_blas();
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("threads: OpenMP %d (OMP_WAIT_POLICY=%s), OpenBLAS %d; machine load average: see uptime\n",
              omp_get_max_threads(), wait_policy ? wait_policy : "unset", openblas_get_num_threads());

  std::mt19937_64 rng(7);
  auto random_tokens = [&](int n) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
    return t;
  };

  {  // warm-up: thread pools, page faults
    auto cache = model.new_cache();
    model.forward(random_tokens(16), cache);
  }

  // Prefill: one prompt in one forward, logits of its last token.
  const auto prompt_tokens = random_tokens(prompt);
  auto cache = model.new_cache();
  Timer timer;
  auto logits = model.forward(prompt_tokens, cache);
  auto [prefill_s, prefill_cpu] = timer.elapsed();
  check_finite(logits, "prefill");
  std::printf("prefill  1 x %d tokens          wall %7.2f s %8.1f tokens/s | cpu %7.2f s %8.1f tokens/cpu-s\n",
              prompt, prefill_s, prompt / prefill_s, prefill_cpu, prompt / prefill_cpu);

  // Decode, one sequence, greedy, after the prompt.
  std::int32_t next = atom::argmax(logits);
  timer = Timer();
  for (int s = 0; s < decode; ++s) {
    logits = model.forward(std::span<const std::int32_t>(&next, 1), cache);
    next = atom::argmax(logits);
  }
  auto [decode_s, decode_cpu] = timer.elapsed();
  check_finite(logits, "decode");
  std::printf("decode   batch 1, %d steps      wall %7.2f s %8.1f tokens/s | cpu %7.2f s %8.1f tokens/cpu-s\n",
              decode, decode_s, decode / decode_s, decode_cpu, decode / decode_cpu);

  if (batch == 0) return 0;
  // Decode, a batch of sequences: prompts prefilled together, then one token per sequence per step.
  std::vector<atom::cpu::KvCache> caches;
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<atom::cpu::SequenceInput> inputs;
  for (int b = 0; b < batch; ++b) {
    caches.push_back(model.new_cache());
    prompts.push_back(random_tokens(batch_prompt));
  }
  for (int b = 0; b < batch; ++b) inputs.push_back({prompts[static_cast<std::size_t>(b)], &caches[static_cast<std::size_t>(b)]});
  std::vector<float> batch_logits;
  timer = Timer();
  model.forward(inputs, batch_logits);
  auto [batch_prefill_s, batch_prefill_cpu] = timer.elapsed();
  std::printf("prefill  %d x %d tokens          wall %7.2f s %8.1f tokens/s | cpu %7.2f s %8.1f tokens/cpu-s\n",
              batch, batch_prompt, batch_prefill_s, batch * batch_prompt / batch_prefill_s, batch_prefill_cpu,
              batch * batch_prompt / batch_prefill_cpu);
  std::vector<std::int32_t> step_tokens(static_cast<std::size_t>(batch));
  timer = Timer();
  for (int s = 0; s < decode; ++s) {
    for (int b = 0; b < batch; ++b) {
      step_tokens[static_cast<std::size_t>(b)] =
          atom::argmax(std::span<const float>(batch_logits).subspan(static_cast<std::size_t>(b) * c.vocab_size, c.vocab_size));
      inputs[static_cast<std::size_t>(b)].tokens = std::span<const std::int32_t>(&step_tokens[static_cast<std::size_t>(b)], 1);
    }
    model.forward(inputs, batch_logits);
  }
  auto [batch_decode_s, batch_decode_cpu] = timer.elapsed();
  check_finite(batch_logits, "batch decode");
  std::printf("decode   batch %d, %d steps      wall %7.2f s %8.1f tokens/s | cpu %7.2f s %8.1f tokens/cpu-s\n",
              batch, decode, batch_decode_s, batch * decode / batch_decode_s, batch_decode_cpu,
              batch * decode / batch_decode_cpu);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "cpu_forward: %s\n", e.what());
  return 1;
}
