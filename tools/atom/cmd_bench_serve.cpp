// atom bench serve: offline serving throughput, as in the Atom paper's end-to-end evaluation. For each batch
// limit, every request of the workload is queued at once and the engine runs continuous batching (FCFS) until
// all are done; reported: generated tokens per second, mean decode latency per output token, time to first
// token. scripts/dev/plot_serve.py draws the JSON.
#include <omp.h>

#include <cmath>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common/error.h"
#include "engine/engine.h"
#include "engine/workload.h"
#include "serving_backend.h"

namespace atom::cli {
namespace {

struct BenchServeOptions {
  std::string model;
  std::vector<int> batch_sizes = {8, 16, 32, 64, 128, 256};
  int requests_per_batch = 2;  // requests = this x the batch limit, unless --num-requests
  int num_requests = 0;
  std::string trace;
  std::uint64_t seed = 0;
  int prompt_length = 0;  // > 0: fixed
  int output_length = 0;  // > 0: fixed
  int max_prompt_length = 1024;
  int max_output_length = 1024;
  bool ignore_eos = false;
  int max_batched_tokens = 2048;
  int block_size = 16;
  int shared_prefix_tokens = 0;  // > 0: every prompt starts with the same this many tokens
  bool prefix_caching = true;
  double kv_cache_mb = 0;  // 0: enough for every sequence of the batch at its longest (no preemption)
  std::string json_path;
  std::string save_workload;  // JSONL of the first run's requests (for outside references)
  BackendOptions backend;
};

double mean(const std::vector<double>& v) {
  if (v.empty()) return 0.0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double percentile(std::vector<double> v, double p) {  // nearest rank
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

nlohmann::json run_one(const ServingBackend& backend, const BenchServeOptions& opt, int max_batch,
                       const std::vector<WorkloadRequest>& workload) {
  EngineConfig config;
  config.limits.max_batch = max_batch;
  config.limits.max_batched_tokens = std::max(opt.max_batched_tokens, max_batch);
  config.block_size = opt.block_size;
  config.enable_prefix_caching = opt.prefix_caching;
  int longest = 0;
  for (const auto& r : workload) longest = std::max(longest, static_cast<int>(r.prompt.size()) + r.output_length);
  if (opt.kv_cache_mb > 0) {
    config.kv_cache_bytes = static_cast<std::size_t>(opt.kv_cache_mb * 1048576.0);
  } else {
    config.num_kv_blocks = max_batch * ((longest + opt.block_size - 1) / opt.block_size);
  }
  std::unique_ptr<ModelRunner> runner = backend.make_runner(config);  // a GPU budget sizes the KV cache here
  const std::size_t block_bytes = runner->kv_block_bytes(config.block_size);
  Engine engine(std::move(runner), backend.codec, config);

  // Warm-up (first touches, thread pools, the CUDA graph of a full batch), not timed.
  const int warm_requests = std::min<int>(max_batch, static_cast<int>(workload.size()));
  for (int i = 0; i < warm_requests; ++i) {
    GenerationRequest warm;
    warm.prompt = workload[static_cast<std::size_t>(i)].prompt;
    warm.params.temperature = 0.0f;
    warm.params.max_tokens = 3;
    warm.params.ignore_eos = true;
    engine.submit(warm);
  }
  while (engine.step()) {
  }
  engine.reset_prefix_cache();  // the warm-up's prompts are the workload's: measure without them cached
  engine.step();
  (void)backend.take_gpu_time();
  const EngineStats before = engine.stats();

  engine.record_timings(true);
  const auto start = std::chrono::steady_clock::now();
  for (const auto& r : workload) {
    GenerationRequest request;
    request.prompt = r.prompt;
    request.params.temperature = 0.0f;
    request.params.max_tokens = r.output_length;
    request.params.ignore_eos = opt.ignore_eos;
    engine.submit(std::move(request));
  }
  while (engine.step()) {
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const EngineStats stats = engine.stats();
  const std::vector<RequestTiming> timings = engine.take_timings();

  std::int64_t prompt_tokens = 0, generated = 0;
  std::vector<double> tpot_ms, ttft_ms, prefill_ms, queue_ms, e2e_ms;
  for (const RequestTiming& t : timings) {
    prompt_tokens += t.prompt_tokens;
    generated += t.completion_tokens;
    queue_ms.push_back(1e3 * t.first_scheduled);
    ttft_ms.push_back(1e3 * t.first_token);
    prefill_ms.push_back(1e3 * (t.first_token - t.first_scheduled));
    e2e_ms.push_back(1e3 * t.finished);
    if (t.completion_tokens > 1) tpot_ms.push_back(1e3 * (t.finished - t.first_token) / (t.completion_tokens - 1));
  }
  const double steps = static_cast<double>(stats.steps - before.steps);
  const std::int64_t prefix_queried = stats.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens;
  const std::int64_t prefix_hits = stats.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens;
  const ServingBackend::StepGpuTime gpu = backend.take_gpu_time();
  const double gpu_ms = gpu.decode_ms + gpu.mixed_ms;
  nlohmann::json result = {
      {"max_batch", max_batch},
      {"requests", timings.size()},
      {"prompt_tokens", prompt_tokens},
      {"generated_tokens", generated},
      {"wall_s", wall},
      {"throughput_tokens_per_s", generated / wall},
      {"total_tokens_per_s", (prompt_tokens + generated) / wall},
      {"mean_tpot_ms", mean(tpot_ms)},
      {"p50_tpot_ms", percentile(tpot_ms, 50)},
      {"p90_tpot_ms", percentile(tpot_ms, 90)},
      {"mean_ttft_ms", mean(ttft_ms)},
      {"p50_ttft_ms", percentile(ttft_ms, 50)},
      {"p90_ttft_ms", percentile(ttft_ms, 90)},
      {"mean_prefill_ms", mean(prefill_ms)},
      {"mean_queue_ms", mean(queue_ms)},
      {"mean_e2e_ms", mean(e2e_ms)},
      {"steps", stats.steps - before.steps},
      {"mean_batch", steps > 0 ? (stats.scheduled_sequences - before.scheduled_sequences) / steps : 0.0},
      {"preemptions", stats.preemptions - before.preemptions},
      {"prefix_cache_queried_tokens", prefix_queried},
      {"prefix_cache_hit_tokens", prefix_hits},
      {"prefix_cache_hit_rate", prefix_queried > 0 ? static_cast<double>(prefix_hits) / prefix_queried : 0.0},
      {"prefix_cache_evictions", stats.prefix_cache_evictions - before.prefix_cache_evictions},
      {"kv_blocks", stats.kv_blocks_total},
      {"kv_cache_gib",
       static_cast<double>(stats.kv_blocks_total) * static_cast<double>(block_bytes) / (1 << 30)},
      {"decode_steps", gpu.decode_steps},
      {"mean_decode_step_gpu_ms", gpu.decode_steps > 0 ? gpu.decode_ms / static_cast<double>(gpu.decode_steps) : 0.0},
      {"mixed_steps", gpu.mixed_steps},
      {"mean_mixed_step_gpu_ms", gpu.mixed_steps > 0 ? gpu.mixed_ms / static_cast<double>(gpu.mixed_steps) : 0.0},
      // Share of the wall time the GPU spent inside steps (0 where the backend does not time them), and the
      // rest per step: host work between steps that the GPU waits for.
      {"gpu_busy_fraction", gpu_ms > 0 ? gpu_ms / (1e3 * wall) : 0.0},
      {"mean_host_gap_ms", gpu_ms > 0 && steps > 0 ? (1e3 * wall - gpu_ms) / steps : 0.0},
  };
  return result;
}

void save_workload(const std::string& path, const std::vector<WorkloadRequest>& workload) {
  std::ofstream out(path);
  if (!out) fail("cannot write '{}'", path);
  for (const WorkloadRequest& r : workload) {
    out << nlohmann::json{{"prompt_ids", r.prompt}, {"output_length", r.output_length}}.dump() << "\n";
  }
  if (!out) fail("error writing '{}'", path);
}

void run_bench_serve(const BenchServeOptions& opt) {
  std::fprintf(stderr, "atom bench serve: loading %s\n", opt.model.c_str());
  const ServingBackend backend = load_serving_backend(opt.model, opt.backend, [](const std::string& stage, double f) {
    std::fprintf(stderr, "  %s (%.0f%%)\n", stage.c_str(), 100.0 * f);
  });
  const int vocab = backend.vocab_size;
  fmt::print("model {} on {}: {}, KV cache {}{}\n", backend.name, backend.device, backend.precision, backend.kv_dtype,
             backend.random_weights ? " -- RANDOM WEIGHTS (speed only; outputs are meaningless)" : "");
  if (backend.weight_bytes > 0) fmt::print("weights {:.2f} GiB\n", static_cast<double>(backend.weight_bytes) / (1 << 30));
  nlohmann::json workload_json;
  if (opt.trace.empty()) {
    workload_json = {{"kind", opt.prompt_length > 0 && opt.output_length > 0 ? "fixed" : "sharegpt-like"},
                     {"seed", opt.seed},
                     {"prompt_mean", 161.0},
                     {"prompt_log_sigma", 1.0},
                     {"output_mean", 338.0},
                     {"output_log_sigma", 0.9},
                     {"fixed_prompt_length", opt.prompt_length},
                     {"fixed_output_length", opt.output_length},
                     {"max_prompt_length", opt.max_prompt_length},
                     {"max_output_length", opt.max_output_length}};
  } else {
    workload_json = {{"kind", "trace"}, {"path", opt.trace}, {"seed", opt.seed}};
  }
  workload_json["ignore_eos"] = opt.ignore_eos;
  workload_json["shared_prefix_tokens"] = opt.shared_prefix_tokens;

  nlohmann::json results = nlohmann::json::array();
  fmt::print("prefix caching {}{}\n", opt.prefix_caching ? "on" : "off",
             opt.shared_prefix_tokens > 0
                 ? fmt::format(", every prompt starts with the same {} tokens", opt.shared_prefix_tokens)
                 : "");
  fmt::print("{:>9} {:>8} {:>10} {:>12} {:>10} {:>10} {:>11} {:>10} {:>7} {:>9} {:>12} {:>9} {:>9}\n",
             "max_batch", "requests", "generated", "tokens/s", "TPOT ms", "TTFT ms", "prefill ms", "mean batch",
             "preempt", "KV GiB", "step GPU ms", "GPU busy", "prefix hit");
  for (int max_batch : opt.batch_sizes) {
    const int n = opt.num_requests > 0 ? opt.num_requests : opt.requests_per_batch * max_batch;
    std::vector<WorkloadRequest> workload;
    if (opt.trace.empty()) {
      SyntheticWorkload spec;
      spec.num_requests = n;
      spec.seed = opt.seed;
      spec.max_prompt_length = opt.max_prompt_length;
      spec.max_output_length = opt.max_output_length;
      spec.fixed_prompt_length = opt.prompt_length;
      spec.fixed_output_length = opt.output_length;
      spec.min_length = std::min({4, opt.max_prompt_length, opt.max_output_length});
      workload = synthetic_workload(spec, vocab);
    } else {
      workload = load_trace_workload(opt.trace, *backend.codec, vocab,
                                     opt.output_length > 0 ? opt.output_length : 128, opt.seed, opt.max_prompt_length,
                                     opt.max_output_length);
    }
    add_shared_prefix(workload, opt.shared_prefix_tokens, vocab, opt.seed);
    if (!opt.save_workload.empty() && results.empty()) save_workload(opt.save_workload, workload);
    const nlohmann::json r = run_one(backend, opt, max_batch, workload);
    fmt::print(
        "{:>9} {:>8} {:>10} {:>12.1f} {:>10.2f} {:>10.1f} {:>11.1f} {:>10.1f} {:>7} {:>9.2f} {:>12.2f} "
        "{:>8.1f}% {:>8.1f}%\n",
        max_batch, r["requests"].get<int>(), r["generated_tokens"].get<std::int64_t>(),
        r["throughput_tokens_per_s"].get<double>(), r["mean_tpot_ms"].get<double>(),
        r["mean_ttft_ms"].get<double>(), r["mean_prefill_ms"].get<double>(), r["mean_batch"].get<double>(),
        r["preemptions"].get<std::int64_t>(), r["kv_cache_gib"].get<double>(),
        r["mean_decode_step_gpu_ms"].get<double>(), 100.0 * r["gpu_busy_fraction"].get<double>(),
        100.0 * r["prefix_cache_hit_rate"].get<double>());
    std::fflush(stdout);
    results.push_back(r);
  }
  if (!opt.json_path.empty()) {
    const nlohmann::json report = {{"model", opt.model},
                                   {"backend", backend.device},
                                   {"mode", backend.precision},
                                   {"random_weights", backend.random_weights},
                                   {"weights_gib", static_cast<double>(backend.weight_bytes) / (1 << 30)},
                                   {"gpu_memory_budget_gib", opt.backend.gpu_memory_gib},
                                   {"threads", omp_get_max_threads()},
                                   {"kv_dtype", backend.kv_dtype},
                                   {"block_size", opt.block_size},
                                   {"max_batched_tokens", opt.max_batched_tokens},
                                   {"prefix_caching", opt.prefix_caching},
                                   {"workload", workload_json},
                                   {"results", results}};
    std::ofstream out(opt.json_path);
    if (!out) fail("cannot write '{}'", opt.json_path);
    out << report.dump(2) << "\n";
    std::fprintf(stderr, "atom bench serve: wrote %s\n", opt.json_path.c_str());
  }
}

}  // namespace

void add_bench_serve_command(CLI::App& bench) {
  auto opt = std::make_shared<BenchServeOptions>();
  auto* cmd = bench.add_subcommand("serve", "Offline serving throughput over batch limits (continuous batching)");
  cmd->add_option("--model,-m", opt->model,
                  "GGUF file, Hugging Face directory, Atom checkpoint, or synthetic:<shape> (random weights, --device cuda)")
      ->required();
  cmd->add_option("--batch-sizes", opt->batch_sizes, "Batch limits to run (comma separated)")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--requests-per-batch", opt->requests_per_batch, "Requests per run = this x the batch limit")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--num-requests", opt->num_requests, "Requests per run (overrides --requests-per-batch)")
      ->check(non_negative_number());
  cmd->add_option("--trace", opt->trace, "JSONL trace: {\"prompt\": text | \"prompt_length\": n, \"output_length\": m}");
  cmd->add_option("--seed", opt->seed, "Seed of the synthetic workload (and of trace prompt_length ids)")
      ->capture_default_str();
  cmd->add_option("--prompt-length", opt->prompt_length,
                  "Fixed prompt length (0: ShareGPT-like distribution)")
      ->check(non_negative_number());
  cmd->add_option("--output-length", opt->output_length,
                  "Fixed output length (0: ShareGPT-like distribution)")
      ->check(non_negative_number());
  cmd->add_option("--max-prompt-length", opt->max_prompt_length, "Clamp of prompt lengths")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--max-output-length", opt->max_output_length, "Clamp of output lengths")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_flag("--ignore-eos", opt->ignore_eos, "Generate exactly each request's output length (fixed-length outputs)");
  cmd->add_option("--max-batched-tokens", opt->max_batched_tokens, "Token budget of one engine step")
      ->check(positive_number())
      ->capture_default_str();
  add_backend_options(cmd, opt->backend);
  cmd->add_option("--block-size", opt->block_size, "Tokens per KV block")->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--shared-prefix-tokens", opt->shared_prefix_tokens,
                  "Every prompt starts with the same this many random tokens (a shared system prompt)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_flag("--enable-prefix-caching,!--no-prefix-caching", opt->prefix_caching,
                "Reuse the KV blocks of prompt prefixes computed before (default: on)");
  cmd->add_option("--kv-cache-mb", opt->kv_cache_mb, "KV cache size (default: room for the whole batch)")
      ->check(non_negative_number());
  cmd->add_option("--json", opt->json_path, "Write the results as JSON (scripts/dev/plot_serve.py plots them)");
  cmd->add_option("--save-workload", opt->save_workload,
                  "Write the first run's requests as JSONL {prompt_ids, output_length} (scripts/bench/hf_reference.py)");
  cmd->callback([opt] { run_bench_serve(*opt); });
}

}  // namespace atom::cli
