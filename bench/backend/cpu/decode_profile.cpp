// Where one single-sequence decode step goes on the CPU: the model as `atom generate` / serving load it
// (load_cpu_model: fp32 for a GGUF / HF checkpoint, integer kernels for an Atom one), each LinearOp wrapped
// in a timer; the rest of the step (attention with the KV cache read, norms, RoPE, residual adds, embedding
// lookup) is the step's time minus the linears'; sampling is a greedy argmax over the logits.
// First the step as served is timed, then the per-op breakdown (timed products do not share work).
//   decode_profile [model] [--context 128] [--steps 64] [--batch-invariant 0|1] [--lm-head f32|f16|int8]
// --lm-head reads a tied lm_head (the embeddings) in that precision instead of the loader's (an Atom
// checkpoint's integer path: int8, or ATOM_CPU_LM_HEAD), for before/after comparisons; --f32-lm-head is
// --lm-head f32.
// Default model: .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (run from the repository root). Threads:
// OMP_NUM_THREADS. Batch-invariant kernels by default, as the serving runner uses them.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/parallel.h"
#include "common/error.h"
#include "io/checkpoint.h"
#include "model/sampler.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class TimedLinear final : public atom::cpu::LinearOp {
 public:
  TimedLinear(std::unique_ptr<atom::cpu::LinearOp> owned, double* seconds)
      : owned_(std::move(owned)), inner_(owned_.get()), seconds_(seconds) {}
  TimedLinear(const atom::cpu::LinearOp* borrowed, double* seconds) : inner_(borrowed), seconds_(seconds) {}
  std::int64_t in_features() const override { return inner_->in_features(); }
  std::int64_t out_features() const override { return inner_->out_features(); }
  void forward(const float* x, std::int64_t m, float* y) const override {
    const double t = now();
    inner_->forward(x, m, y);
    *seconds_ += now() - t;
  }
  std::string describe() const override { return inner_->describe(); }
  bool splits_through_parallel_for() const override { return inner_->splits_through_parallel_for(); }

 private:
  std::unique_ptr<atom::cpu::LinearOp> owned_;
  const atom::cpu::LinearOp* inner_;
  double* seconds_;
};

}  // namespace

int main(int argc, char** argv) try {
  std::string path = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int context = 128, steps = 64, invariant = 1;
  std::string lm_head_precision;
  for (int i = 1; i < argc; ++i) {
    auto next_int = [&](const char* flag) {
      if (i + 1 >= argc) atom::fail("{} needs a value", flag);
      return std::atoi(argv[++i]);
    };
    if (!std::strcmp(argv[i], "--context"))
      context = next_int("--context");
    else if (!std::strcmp(argv[i], "--steps"))
      steps = next_int("--steps");
    else if (!std::strcmp(argv[i], "--batch-invariant"))
      invariant = next_int("--batch-invariant");
    else if (!std::strcmp(argv[i], "--f32-lm-head"))
      lm_head_precision = "f32";
    else if (!std::strcmp(argv[i], "--lm-head") && i + 1 < argc)
      lm_head_precision = argv[++i];
    else if (argv[i][0] == '-')
      atom::fail("unknown option '{}'", argv[i]);
    else
      path = argv[i];
  }
  if (context < 1 || steps < 1) atom::fail("sizes must be positive");
  atom::cpu::set_batch_invariant(invariant != 0);

  const atom::Checkpoint checkpoint = atom::open_checkpoint(path);
  std::unique_ptr<atom::cpu::LlamaModel> model = atom::cpu::load_cpu_model(checkpoint);
  const auto& c = model->config();

  if (!lm_head_precision.empty() && c.tie_word_embeddings) {
    model->set_lm_head(std::make_unique<atom::cpu::DenseLinear>(
        std::make_shared<const std::vector<float>>(model->embed_tokens()), c.vocab_size, c.hidden_size));
    atom::cpu::use_lm_head_precision(*model, atom::cpu::parse_lm_head_precision(lm_head_precision));
  }
  std::printf("model %s: %d layers, hidden %d, inter %d, vocab %d; q_proj: %s; lm_head: %s; KV %s\n",
              path.c_str(), c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size,
              model->layer(0).q_proj->describe().c_str(), model->lm_head().describe().c_str(),
              model->new_cache().dtype() == atom::cpu::KvDType::F32 ? "f32" : "quantized");
  std::printf("threads: OpenMP %d, batch-invariant %d, context %d, %d steps\n", omp_get_max_threads(),
              invariant, context, steps);

  std::mt19937_64 rng(7);
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(context));
  for (auto& t : prompt) t = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
  atom::cpu::KvCache cache = model->new_cache();
  std::vector<float> logits = model->forward(prompt, cache);
  std::int32_t next = atom::argmax(logits);
  for (int i = 0; i < 4; ++i) {  // warm-up
    logits = model->forward(std::span<const std::int32_t>(&next, 1), cache);
    next = atom::argmax(logits);
  }
  // The step as served first: the timers below keep products of one input (q/k/v, gate/up) from sharing
  // their activation quantization and OpenMP loop.
  const double served0 = now();
  for (int i = 0; i < steps; ++i) {
    logits = model->forward(std::span<const std::int32_t>(&next, 1), cache);
    next = atom::argmax(logits);
  }
  const double served = now() - served0;
  std::printf("parallel region cost (measured at the first forward): %.1f us\n",
              atom::cpu::parallel_region_cost_us());
  std::printf("decode as served: %.1f tok/s (%.3f ms/token) at context %d..%d\n", steps / served,
              1e3 * served / steps, context + 4, context + 4 + steps);

  // Buckets, in the order printed.
  const std::vector<std::string> names = {"q/k/v_proj", "o_proj", "gate/up_proj", "down_proj", "lm_head"};
  std::map<std::string, double> seconds;
  for (const auto& n : names) seconds[n] = 0;
  for (int li = 0; li < model->num_layers(); ++li) {
    atom::cpu::DecoderLayer& l = model->layer(li);
    for (auto [op, bucket] : {std::pair{&l.q_proj, "q/k/v_proj"},
                              {&l.k_proj, "q/k/v_proj"},
                              {&l.v_proj, "q/k/v_proj"},
                              {&l.o_proj, "o_proj"},
                              {&l.gate_proj, "gate/up_proj"},
                              {&l.up_proj, "gate/up_proj"},
                              {&l.down_proj, "down_proj"}}) {
      *op = std::make_unique<TimedLinear>(std::move(*op), &seconds[bucket]);
    }
  }
  // set_lm_head hands back the old op, which the wrapper borrows: keep it alive.
  const std::unique_ptr<atom::cpu::LinearOp> lm_head =
      model->set_lm_head(std::make_unique<TimedLinear>(&model->lm_head(), &seconds["lm_head"]));
  for (auto& [name, s] : seconds) s = 0;
  double step_s = 0, sample_s = 0;
  const double t0 = now();
  for (int i = 0; i < steps; ++i) {
    const double a = now();
    logits = model->forward(std::span<const std::int32_t>(&next, 1), cache);
    const double b = now();
    next = atom::argmax(logits);
    sample_s += now() - b;
    step_s += b - a;
  }
  const double total = now() - t0;
  double linears = 0;
  std::printf("%-44s %9s %7s\n", "part of a decode step", "ms/token", "share");
  auto row = [&](const std::string& name, double s) {
    std::printf("%-44s %9.3f %6.1f%%\n", name.c_str(), 1e3 * s / steps, 100 * s / total);
  };
  for (const auto& n : names) {
    row(n, seconds[n]);
    linears += seconds[n];
  }
  row("other: attention + KV read, norms, RoPE, adds", step_s - linears);
  row("sampling (greedy argmax)", sample_s);
  row("total", total);
  std::printf("decode, each product timed alone: %.1f tok/s at context %d..%d\n", steps / total,
              context + 4 + steps, context + 4 + 2 * steps);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "decode_profile: %s\n", e.what());
  return 1;
}
