#include "serving_backend.h"

#include <filesystem>

#include <fmt/format.h>

#include "backend/cpu/cpu_runner.h"
#include "backend/cpu/paged_kv.h"
#include "common/error.h"
#include "engine/cpu_serving_model.h"
#include "engine/token_id_codec.h"
#include "engine/tokenizer_codec.h"
#include "io/checkpoint.h"
#include "tokenizer/checkpoint_tokenizer.h"

#ifdef ATOM_WITH_CUDA
#include "backend/cuda/model/cuda_model_runner.h"
#include "backend/cuda/model/llama_weights.h"
#endif

namespace atom::cli {
namespace {

constexpr const char* kSyntheticPrefix = "synthetic:";

bool is_synthetic(const std::string& model) { return model.rfind(kSyntheticPrefix, 0) == 0; }

std::string display_name(const std::string& path) {
  const std::filesystem::path p(path);
  return (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
}

ServingBackend cpu_backend(const std::string& model, const BackendOptions& opt,
                           const BackendProgress& progress) {
  if (is_synthetic(model)) fail("synthetic models ('{}') run on --device cuda only", model);
  if (opt.precision != "auto")
    fail("--precision applies to synthetic models (the CPU runs what the checkpoint holds)");
  if (opt.gpu_memory_gib > 0) fail("--gpu-memory-gb applies to --device cuda");
  auto serving = std::make_shared<CpuServingModel>(load_cpu_serving_model(model, progress));
  const KvCacheDType kv =
      opt.kv_dtype == "auto" ? serving->kv_cache_dtype : parse_kv_cache_dtype(opt.kv_dtype);
  ServingBackend b;
  b.name = serving->name;
  b.device = "cpu";
  b.kv_dtype = kv_cache_dtype_name(kv);
  b.codec = serving->codec;
  b.vocab_size = serving->model->vocab_size();
  b.precision = serving->model->layer(0).q_proj->describe();
  b.make_runner = [serving, kv](EngineConfig&) -> std::unique_ptr<ModelRunner> {
    return std::make_unique<CpuModelRunner>(serving->model, kv);
  };
  b.take_gpu_time = [] { return ServingBackend::StepGpuTime{}; };
  return b;
}

#ifdef ATOM_WITH_CUDA
cuda::KvDtype cuda_kv_dtype(const std::string& name, cuda::KvDtype fallback) {
  if (name == "auto") return fallback;
  switch (parse_kv_cache_dtype(name)) {
    case KvCacheDType::f16:
      return cuda::KvDtype::kF16;
    case KvCacheDType::int8:
      return cuda::KvDtype::kU8;
    case KvCacheDType::int4:
      return cuda::KvDtype::kU4;
    case KvCacheDType::f32:
      break;
  }
  fail("--kv-dtype {}: the CUDA backend stores the KV cache as fp16, int8 or int4", name);
}

const char* kv_name(cuda::KvDtype t) {
  switch (t) {
    case cuda::KvDtype::kF16:
      return "fp16";
    case cuda::KvDtype::kU8:
      return "int8";
    case cuda::KvDtype::kU4:
      return "int4";
  }
  return "?";
}

ServingBackend cuda_backend(const std::string& model, const BackendOptions& opt,
                            const BackendProgress& progress) {
  cuda::require_cuda_device();
  std::shared_ptr<const cuda::CudaLlamaWeights> weights;
  ServingBackend b;
  if (opt.online_transforms && !is_synthetic(model))
    fail("--online-transforms applies to synthetic models (a rotated checkpoint says what it needs)");
  if (is_synthetic(model)) {
    const std::string shape = model.substr(std::string(kSyntheticPrefix).size());
    if (opt.precision == "auto")
      fail("synthetic model '{}': give --precision (fp16, w8a8, w4a16, atom-w4a4)", model);
    if (progress) progress(fmt::format("generating random {} weights", opt.precision), 0.0);
    weights = cuda::make_synthetic_weights(cuda::synthetic_config(shape), cuda::parse_precision(opt.precision),
                                           model, /*seed=*/0, opt.online_transforms);
    b.codec = std::make_shared<TokenIdCodec>(weights->config.vocab_size, model);
    b.name = model;
  } else {
    if (opt.precision != "auto") {
      fail("--precision applies to synthetic models; '{}' runs in the precision it was saved in", model);
    }
    if (progress) progress("loading tokenizer", 0.0);
    const Checkpoint checkpoint = open_checkpoint(model);
    b.codec = std::make_shared<TokenizerCodec>(load_tokenizer(checkpoint));
    weights = cuda::load_cuda_weights(model, [&](const std::string& stage, double f) {
      if (progress) progress(stage, 0.05 + 0.9 * f);
    });
    b.name = display_name(model);
  }
  const cuda::KvDtype kv = cuda_kv_dtype(opt.kv_dtype, weights->default_kv);
  b.device = "cuda";
  b.precision = cuda::precision_name(weights->precision);
  b.kv_dtype = kv_name(kv);
  b.random_weights = weights->random_weights;
  b.weight_bytes = weights->bytes();
  b.vocab_size = weights->config.vocab_size;
  auto last = std::make_shared<cuda::CudaModelRunner*>(nullptr);
  const bool graphs = opt.cuda_graphs, serving_gemm = opt.serving_gemm, invariant = opt.batch_invariant;
  const double budget_gib = opt.gpu_memory_gib;
  b.make_runner = [weights, kv, graphs, serving_gemm, invariant, budget_gib,
                   last](EngineConfig& config) -> std::unique_ptr<ModelRunner> {
    cuda::CudaRunnerOptions ro;
    ro.kv_dtype = kv;
    ro.max_batch_tokens = config.limits.max_batched_tokens;
    ro.max_sequences = config.limits.max_batch;
    ro.max_context = config.max_context;
    ro.cuda_graphs = graphs;
    ro.serving_gemm = serving_gemm ? cuda::CudaRunnerOptions::ServingGemm::kMeasured
                                   : cuda::CudaRunnerOptions::ServingGemm::kOff;
    ro.batch_invariant = invariant;
    auto runner = std::make_unique<cuda::CudaModelRunner>(weights, ro);
    if (budget_gib > 0) {
      const double budget = budget_gib * static_cast<double>(1ULL << 30);
      const double used = static_cast<double>(weights->bytes() + runner->workspace_bytes());
      const double left = budget - used;
      const std::size_t block = runner->kv_block_bytes(config.block_size);
      if (left < static_cast<double>(block)) {
        fail(
            "--gpu-memory-gb {}: the weights ({:.2f} GiB) and buffers ({:.2f} GiB) leave no room for a KV "
            "cache",
            budget_gib, static_cast<double>(weights->bytes()) / (1 << 30),
            static_cast<double>(runner->workspace_bytes()) / (1 << 30));
      }
      config.num_kv_blocks = 0;
      config.kv_cache_bytes = static_cast<std::size_t>(left);
    }
    *last = runner.get();
    return runner;
  };
  b.take_gpu_time = [last]() -> ServingBackend::StepGpuTime {
    if (*last == nullptr) return {};
    const cuda::CudaModelRunner::GpuTime t = (*last)->take_gpu_time();
    return {t.decode_ms, t.mixed_ms, t.decode_steps, t.mixed_steps};
  };
  return b;
}
#endif

}  // namespace

ServingBackend load_serving_backend(const std::string& model, const BackendOptions& options,
                                    const BackendProgress& progress) {
  if (options.device == "cpu") return cpu_backend(model, options, progress);
  if (options.device == "cuda") {
#ifdef ATOM_WITH_CUDA
    return cuda_backend(model, options, progress);
#else
    fail("--device cuda: this atom was built without the CUDA backend (configure with nvcc available)");
#endif
  }
  fail("--device '{}' (expected cpu or cuda)", options.device);
}

void add_backend_options(CLI::App* cmd, BackendOptions& o) {
  cmd->add_option("--device", o.device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--precision", o.precision,
                  "Synthetic models (--model synthetic:llama-2-7b|llama-2-13b|llama-3-8b): fp16, w8a8, "
                  "w4a16, atom-w4a4")
      ->check(CLI::IsMember({"auto", "fp16", "w8a8", "w4a16", "atom-w4a4"}))
      ->capture_default_str();
  cmd->add_option("--kv-dtype", o.kv_dtype,
                  "KV cache storage: auto (the checkpoint's), f32 (cpu), fp16, int8, int4")
      ->check(CLI::IsMember({"auto", "f32", "fp16", "int8", "int4"}))
      ->capture_default_str();
  cmd->add_flag("!--no-cuda-graphs", o.cuda_graphs, "Run decode steps without CUDA graphs");
  cmd->add_flag("--serving-gemm,!--no-serving-gemm", o.serving_gemm,
                "W4A4/W8A8 products of 17-64 rows on the serving-size GEMM (int8 activation rows, split-K; sm_90a), "
                "where it is measured faster (default on)");
  cmd->add_flag("--batch-invariant", o.batch_invariant,
                "CUDA, W4A4/W8A8: a sequence's tokens do not depend on the batch it is served in (bit-exact "
                "kernels, fixed-order attention; costs throughput). The CPU backend always runs so");
  cmd->add_flag("--online-transforms", o.online_transforms,
                "Synthetic models: run the online transforms of a rotated checkpoint (the Q/K Hadamard and the "
                "Hadamard on down_proj's input), to measure what they cost");
  cmd->add_option(
         "--gpu-memory-gb", o.gpu_memory_gib,
         "GPU memory budget in GiB for weights, buffers and KV cache (the KV cache gets what is left)")
      ->check(CLI::NonNegativeNumber);
}

}  // namespace atom::cli
