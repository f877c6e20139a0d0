#pragma once
// What `atom serve` and `atom bench serve` run: a model on a device, ready to hand ModelRunners to engines.
//   --device cpu   the CPU backend (GGUF, Hugging Face directory or Atom checkpoint)
//   --device cuda  the CUDA backend: the same checkpoints (fp16, or the precision of an Atom checkpoint), or
//                  `synthetic:<shape>` (llama-2-7b, llama-2-13b, llama-3-8b) with random weights in the
//                  precision given by --precision, for speed measurements.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <CLI/CLI.hpp>

#include "engine/engine.h"
#include "engine/text_codec.h"
#include "model/model_runner.h"

namespace atom::cli {

struct BackendOptions {
  std::string device = "cpu";      // cpu | cuda
  std::string precision = "auto";  // synthetic models: fp16 | w8a8 | w4a16 | atom-w4a4
  std::string kv_dtype = "auto";   // auto (the checkpoint's) | f32 (cpu) | fp16 | int8 | int4
  bool cuda_graphs = true;
  bool serving_gemm = true;  // --[no-]serving-gemm (CudaRunnerOptions::serving_gemm)
  bool batch_invariant = false;  // --batch-invariant (CudaRunnerOptions::batch_invariant; the CPU always is)
  bool online_transforms = false;  // synthetic models: run a rotated checkpoint's Q/K and down Hadamards
  double gpu_memory_gib =
      0;  // > 0: weights + runner buffers + KV cache fit in this (the KV cache gets the rest)
};

struct ServingBackend {
  std::string name;       // for /v1/models and reports
  std::string device;     // "cpu" | "cuda"
  std::string precision;  // "fp32" on the CPU for plain checkpoints, else the quantized / GPU precision
  std::string kv_dtype;   // resolved
  bool random_weights = false;
  std::size_t weight_bytes = 0;
  std::shared_ptr<const TextCodec> codec;
  int vocab_size = 0;
  // A runner for an engine with `config`'s limits. With a GPU memory budget it also sets
  // config.kv_cache_bytes (and clears num_kv_blocks) to what the budget leaves; throws atom::Error when
  // nothing is left.
  std::function<std::unique_ptr<ModelRunner>(EngineConfig& config)> make_runner;
  // GPU time (forward and sampling, between two events on the stream) of the last runner's steps since the
  // previous call, split into decode-only and mixed (prefill) steps; zeros on the cpu.
  struct StepGpuTime {
    double decode_ms = 0, mixed_ms = 0;
    long long decode_steps = 0, mixed_steps = 0;
  };
  std::function<StepGpuTime()> take_gpu_time;
};

using BackendProgress = std::function<void(const std::string& stage, double fraction)>;
ServingBackend load_serving_backend(const std::string& model, const BackendOptions& options,
                                    const BackendProgress& progress = {});

// Registers --device, --precision, --kv-dtype, --no-cuda-graphs and --gpu-memory-gb on a command.
void add_backend_options(CLI::App* cmd, BackendOptions& options);

}  // namespace atom::cli
