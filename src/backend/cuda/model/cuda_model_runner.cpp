#include "backend/cuda/model/cuda_model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <unordered_map>
#include <vector>

#include <cublas_v2.h>
#include <fmt/format.h>

#include "backend/cuda/attention/attention_kernels.h"
#include "backend/cuda/elementwise/elementwise.h"
#include "backend/cuda/gemm/dequantize_weights.h"
#include "backend/cuda/gemm/gemm_baselines.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/model/argmax.h"
#include "backend/cuda/model/w8a8_epilogue.h"
#include "backend/cuda/quantize/quantize_act.h"
#include "backend/cuda/sampling/sample_rows.h"
#include "backend/cuda/transform/hadamard.h"
#include "common/error.h"

namespace atom::cuda {
namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error {} in {}", static_cast<int>(s), what);
}

constexpr std::size_t align16(std::size_t n) { return (n + 15) / 16 * 16; }

// W4A16 default of CudaRunnerOptions::w4a16_dense_rows: gemm_w4a16 reads each weight once per 16 rows of
// activations and loses to the fp16 product from ~32 rows on (H200: 10.9 vs 7.3 ms per Llama-2-7B step at 64
// rows, 17.2 vs 7.1 ms at 128); writing and re-reading an fp16 copy costs ~9 ms a step.

// Padded batch sizes of the captured decode graphs.
int graph_bucket(int batch) {
  static constexpr int kBuckets[] = {1,   2,   4,   8,   16,  24,  32,  48,  64,  80, 96,
                                     112, 128, 160, 192, 224, 256, 320, 384, 448, 512};
  for (int b : kBuckets) {
    if (batch <= b) return b;
  }
  return (batch + 63) / 64 * 64;
}

}  // namespace

std::size_t kv_bytes_per_token(const ModelConfig& c, KvDtype dtype, int group_size) {
  const std::size_t groups = group_size == 0 ? 1 : static_cast<std::size_t>(c.head_dim / group_size);
  const std::size_t row = static_cast<std::size_t>(kv_row_bytes(dtype, c.head_dim)) +
                          (dtype == KvDtype::kF16 ? 0 : groups * sizeof(std::uint32_t));
  return 2 * static_cast<std::size_t>(c.num_layers) * static_cast<std::size_t>(c.num_kv_heads) * row;
}

struct CudaModelRunner::Impl {
  // Offsets (in int32 elements) of the per-step host->device index arrays; fixed so that graphs can read
  // them.
  struct Layout {
    std::size_t tokens, positions, slots, logit_rows, dec_lens, dec_tables, pre_indptr, pre_lens, pre_tables,
        total;
  };
  // What one forward runs (host-known sizes; the arrays are in `ints`).
  struct Shape {
    int tokens = 0;      // rows (decode rows first)
    int decode = 0;      // decode sequences (one row each)
    int prefill = 0;     // prefill sequences
    int logits = 0;      // rows of logits computed
    int max_q_len = 0;   // longest prefill chunk
    int max_kv_len = 0;  // longest decode context
  };

  std::shared_ptr<const CudaLlamaWeights> w;
  CudaRunnerOptions opt;
  ModelConfig cfg;
  int max_ctx = 0;
  int qkv_width = 0, attn_width = 0;

  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceBuffer<std::uint8_t> blas_workspace;
  cudaEvent_t ev_start = nullptr, ev_stop = nullptr;

  // KV cache
  int block_size = 0, num_pages = 0, table_stride = 0;
  DeviceBuffer<std::uint8_t> kv_storage;
  std::vector<PagedKvCache> caches;  // per layer
  DeviceBuffer<std::uint8_t> decode_workspace;

  Layout layout{};
  PinnedBuffer<std::int32_t> host_ints;
  DeviceBuffer<std::int32_t> dev_ints;

  // Activations (fp16 unless said): rows = token rows of a forward.
  DeviceBuffer<std::uint16_t> tmp, hidden, normed, qkv, attn, gate_up, act, final_normed;
  DeviceBuffer<std::uint8_t> q_packed;
  DeviceBuffer<std::uint16_t> q_scales, q_outlier_scales;
  DeviceBuffer<std::int8_t> q_outliers;
  // Int8 rows for the serving-size W4A4 GEMM (gemm_w4a4_o8_s8), for products of up to kW4A4S8MaxRows rows.
  DeviceBuffer<std::int8_t> q_codes_s8;
  DeviceBuffer<std::int32_t> identity_perm;
  DeviceBuffer<std::uint16_t> dense_scratch;  // W4A16: one layer's weights in fp16 for large products
  std::unique_ptr<GemmBaselines> int8_gemm;   // W8A8: cuBLASLt int8 x int8 -> int32
  DeviceBuffer<std::int32_t> int32_scratch;   // W8A8: the exact products before scaling
  DeviceBuffer<std::uint8_t> hadamard_scratch;  // rotated checkpoints: the down Hadamard's mixing GEMM
  DeviceBuffer<float> logits_dev;
  PinnedBuffer<float> logits_host;
  DeviceBuffer<std::int32_t> argmax_dev;
  PinnedBuffer<std::int32_t> argmax_host;
  int max_logit_rows = 0;

  // Sampling on the device (sampling/sample_rows.h): per-row parameters in, tokens and logprobs out.
  PinnedBuffer<SampleRow> sample_rows_host;
  DeviceBuffer<SampleRow> sample_rows_dev;
  DeviceBuffer<std::int32_t> sampled_tokens_dev, top_tokens_dev;
  DeviceBuffer<float> sampled_logprobs_dev, top_logprobs_dev;
  PinnedBuffer<std::int32_t> sampled_tokens_host, top_tokens_host;
  PinnedBuffer<float> sampled_logprobs_host, top_logprobs_host;
  // The token-count buffer of the penalties: one slot (vocab counts + vocab prompt flags) per sequence with
  // a penalty, loaded from its history when the sequence first samples (or after the slot went stale) and
  // then kept current by the sampling kernel, which counts each sampled token.
  struct PenaltySlot {
    int slot = 0;
    std::int64_t counted = 0;  // generated tokens the slot's counts hold
  };
  std::unordered_map<std::int64_t, PenaltySlot> penalty_slots;  // by sequence id
  std::vector<int> free_slots;
  int slot_capacity = 0;
  DeviceBuffer<std::int32_t> output_counts;
  DeviceBuffer<std::uint8_t> prompt_mask;
  std::vector<TokenCountEntry> count_entries;
  DeviceBuffer<TokenCountEntry> count_entries_dev;

  std::map<int, cudaGraphExec_t> graphs;
  GpuTime gpu_time;

  // ATOM_CUDA_PROFILE=1: decode-only steps run eagerly with an event after each stage; the per-stage GPU time
  // is printed when the runner goes away (where a decode step's time goes, without a profiler).
  bool profile = false;
  int row_slices = 1;  // RmsNormQuantParams::slices etc.; ATOM_ROW_SLICES
  std::vector<cudaEvent_t> profile_events;
  std::vector<std::string> profile_names;  // stage of event i (i >= 1)
  std::map<std::string, double> profile_ms;
  std::int64_t profile_steps = 0;
  bool profiling_step = false;

  void mark(const char* stage) {
    if (!profiling_step) return;
    if (profile_names.size() + 1 > profile_events.size()) {
      cudaEvent_t e;
      ATOM_CUDA_CHECK(cudaEventCreate(&e));
      profile_events.push_back(e);
    }
    ATOM_CUDA_CHECK(cudaEventRecord(profile_events[profile_names.size()], stream));
    profile_names.emplace_back(stage);
  }
  void collect_profile() {
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (std::size_t i = 1; i < profile_names.size(); ++i) {
      float ms = 0;
      ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, profile_events[i - 1], profile_events[i]));
      profile_ms[profile_names[i]] += ms;
    }
    profile_names.clear();
    ++profile_steps;
  }
  void print_profile() const {
    if (profile_steps == 0) return;
    double total = 0;
    for (const auto& [name, ms] : profile_ms) total += ms;
    std::fprintf(stderr, "ATOM_CUDA_PROFILE: %lld decode steps, %.3f ms per step (eager, no graphs)\n",
                 static_cast<long long>(profile_steps), total / static_cast<double>(profile_steps));
    for (const auto& [name, ms] : profile_ms) {
      std::fprintf(stderr, "  %-14s %8.3f ms/step  %5.1f%%\n", name.c_str(),
                   ms / static_cast<double>(profile_steps), 100.0 * ms / total);
    }
  }

  Impl(std::shared_ptr<const CudaLlamaWeights> weights, CudaRunnerOptions options)
      : w(std::move(weights)), opt(options), cfg(w->config) {
    max_ctx = opt.max_context > 0 ? std::min(opt.max_context, cfg.max_position_embeddings)
                                  : cfg.max_position_embeddings;
    if (opt.max_batch_tokens < 1 || opt.max_sequences < 1) {
      fail("CUDA runner: max_batch_tokens {} and max_sequences {} must be positive", opt.max_batch_tokens,
           opt.max_sequences);
    }
    if (opt.batch_invariant) {
      if (w->precision != Precision::kW4A4 && w->precision != Precision::kW8A8) {
        fail("CUDA runner: batch-invariant mode covers the W4A4 and W8A8 precisions; {} linears run cuBLAS, "
             "whose algorithm (and so a row's bits) changes with the number of rows",
             precision_name(w->precision));
      }
      if (w->precision == Precision::kW4A4 && !w4a4_swapab_available()) {
        fail("CUDA runner: batch-invariant mode needs the bit-exact W4A4 kernels of an sm_90a build on an sm_90 "
             "device");
      }
    }
    qkv_width = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim;
    attn_width = cfg.num_heads * cfg.head_dim;
    ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ATOM_CUDA_CHECK(cudaEventCreate(&ev_start));
    ATOM_CUDA_CHECK(cudaEventCreate(&ev_stop));
    check_blas(cublasCreate(&blas), "cublasCreate");
    check_blas(cublasSetStream(blas, stream), "cublasSetStream");
    // A fixed workspace: cuBLAS then allocates nothing while a graph is captured.
    blas_workspace.allocate(std::size_t{32} << 20);
    check_blas(cublasSetWorkspace(blas, blas_workspace.get(), blas_workspace.bytes()), "cublasSetWorkspace");
    check_blas(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    allocate_activations();
    const char* env = std::getenv("ATOM_CUDA_PROFILE");
    profile = env != nullptr && std::string(env) == "1";
    if (profile) opt.cuda_graphs = false;
    // ATOM_ROW_SLICES: the activation quantizers' row slices (quantize_act.h): unset = 1 block per token (the
    // launch timed so far), "auto" = the kernels' rule, N = N. A measurement switch until the sliced launch
    // has been timed on a GPU.
    if (const char* slices = std::getenv("ATOM_ROW_SLICES"); slices != nullptr) {
      row_slices = std::string(slices) == "auto" ? 0 : std::max(1, std::atoi(slices));
    }
  }

  ~Impl() {
    print_profile();
    for (cudaEvent_t e : profile_events) cudaEventDestroy(e);
    for (auto& [bucket, exec] : graphs) cudaGraphExecDestroy(exec);
    if (blas) cublasDestroy(blas);
    if (ev_start) cudaEventDestroy(ev_start);
    if (ev_stop) cudaEventDestroy(ev_stop);
    if (stream) cudaStreamDestroy(stream);
  }

  int rows_capacity() const {
    // Graph buckets pad decode batches up to the next bucket.
    return std::max(opt.max_batch_tokens, graph_bucket(opt.max_sequences));
  }

  void allocate_activations() {
    const std::size_t t = static_cast<std::size_t>(rows_capacity());
    const std::size_t h = static_cast<std::size_t>(cfg.hidden_size),
                      inter = static_cast<std::size_t>(cfg.intermediate_size);
    tmp.allocate(t * h);
    hidden.allocate(t * h);
    qkv.allocate(t * static_cast<std::size_t>(qkv_width));
    attn.allocate(t * static_cast<std::size_t>(attn_width));
    gate_up.allocate(t * 2 * inter);
    const bool quantized_acts = w->precision == Precision::kW4A4 || w->precision == Precision::kW8A8;
    if (quantized_acts) {
      int kn = 0, nout = 0;
      for (const DeviceLayer& l : w->layers) {
        for (const DeviceLinear* lin : {&l.qkv, &l.o_proj, &l.gate_up, &l.down}) {
          kn = std::max(kn, lin->k_normal);
          nout = std::max(nout, lin->n_outliers);
        }
      }
      q_packed.allocate(std::max<std::size_t>(16, t * static_cast<std::size_t>(kn) / 2));
      q_scales.allocate(std::max<std::size_t>(8, t * static_cast<std::size_t>(kn) / kW4A4Group));
      q_outliers.allocate(std::max<std::size_t>(16, t * static_cast<std::size_t>(nout)));
      q_outlier_scales.allocate(t);
      if (opt.serving_gemm != CudaRunnerOptions::ServingGemm::kOff && w->precision == Precision::kW4A4 &&
          w4a4_swapab_available()) {
        std::size_t row_bytes = 0;
        for (const DeviceLayer& l : w->layers)
          for (const DeviceLinear* lin : {&l.qkv, &l.o_proj, &l.gate_up, &l.down})
            row_bytes = std::max<std::size_t>(row_bytes, w4a4_s8_row_bytes(lin->k_normal, lin->n_outliers));
        q_codes_s8.allocate(std::max<std::size_t>(16, std::min<std::size_t>(t, kW4A4S8MaxRows) * row_bytes));
      }
      const int kmax = std::max({cfg.hidden_size, cfg.intermediate_size, attn_width});
      std::vector<std::int32_t> id(static_cast<std::size_t>(kmax));
      std::iota(id.begin(), id.end(), 0);
      identity_perm.upload(id);
    } else {
      normed.allocate(t * h);
      act.allocate(t * inter);
    }
    if (w->precision == Precision::kW4A16 && rows_capacity() > opt.w4a16_dense_rows) {
      std::size_t largest = 0;
      for (const DeviceLayer& l : w->layers) {
        for (const DeviceLinear* lin : {&l.qkv, &l.o_proj, &l.gate_up, &l.down}) {
          largest = std::max(largest, static_cast<std::size_t>(lin->n) * static_cast<std::size_t>(lin->k));
        }
      }
      dense_scratch.allocate(largest);
    }
    if (w->precision == Precision::kW8A8) {
      int widest = 0;
      for (const DeviceLayer& l : w->layers) {
        for (const DeviceLinear* lin : {&l.qkv, &l.o_proj, &l.gate_up, &l.down})
          widest = std::max(widest, lin->n);
      }
      int8_gemm = std::make_unique<GemmBaselines>(stream);
      int32_scratch.allocate(t * static_cast<std::size_t>(widest));
    }
    if (w->down_hadamard.n > 0) hadamard_scratch.allocate(hadamard_scratch_bytes(w->down_hadamard));
    max_logit_rows = std::max(opt.max_sequences, graph_bucket(opt.max_sequences));
    final_normed.allocate(static_cast<std::size_t>(max_logit_rows) * h);
    logits_dev.allocate(static_cast<std::size_t>(max_logit_rows) * static_cast<std::size_t>(cfg.vocab_size));
    logits_host.allocate(static_cast<std::size_t>(max_logit_rows) * static_cast<std::size_t>(cfg.vocab_size));
    argmax_dev.allocate(static_cast<std::size_t>(max_logit_rows));
    argmax_host.allocate(static_cast<std::size_t>(max_logit_rows));
    const std::size_t rows = static_cast<std::size_t>(max_logit_rows);
    sample_rows_host.allocate(rows);
    sample_rows_dev.allocate(rows);
    sampled_tokens_dev.allocate(rows);
    sampled_tokens_host.allocate(rows);
    sampled_logprobs_dev.allocate(rows);
    sampled_logprobs_host.allocate(rows);
    top_tokens_dev.allocate(rows * kMaxTopLogprobs);
    top_tokens_host.allocate(rows * kMaxTopLogprobs);
    top_logprobs_dev.allocate(rows * kMaxTopLogprobs);
    top_logprobs_host.allocate(rows * kMaxTopLogprobs);
  }

  // A free slot of the token-count buffer, growing it (twice the slots, contents kept) when none is left.
  int take_penalty_slot() {
    if (free_slots.empty()) {
      const int grown = std::max(8, 2 * slot_capacity);
      const std::size_t vocab = static_cast<std::size_t>(cfg.vocab_size);
      DeviceBuffer<std::int32_t> counts(static_cast<std::size_t>(grown) * vocab);
      DeviceBuffer<std::uint8_t> mask(static_cast<std::size_t>(grown) * vocab);
      if (slot_capacity > 0) {
        ATOM_CUDA_CHECK(cudaMemcpyAsync(counts.get(), output_counts.get(), output_counts.bytes(),
                                        cudaMemcpyDeviceToDevice, stream));
        ATOM_CUDA_CHECK(cudaMemcpyAsync(mask.get(), prompt_mask.get(), prompt_mask.bytes(),
                                        cudaMemcpyDeviceToDevice, stream));
        ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the old buffers go
      }
      output_counts = std::move(counts);
      prompt_mask = std::move(mask);
      for (int slot = grown - 1; slot >= slot_capacity; --slot) free_slots.push_back(slot);
      slot_capacity = grown;
    }
    const int slot = free_slots.back();
    free_slots.pop_back();
    return slot;
  }

  void release_penalty_slot(std::int64_t sequence_id) {
    const auto it = penalty_slots.find(sequence_id);
    if (it == penalty_slots.end()) return;
    free_slots.push_back(it->second.slot);
    penalty_slots.erase(it);
  }

  // The rows' parameters for sample_rows (row k of the sampled chunks reads logit row logit_rows[k]), with
  // the slots of sequences with penalties loaded where they are new or stale.
  void prepare_sample_rows(std::span<const SequenceChunk> batch, std::span<const SamplingRow> rows,
                           std::span<const int> logit_rows) {
    std::vector<std::int32_t> clear;
    count_entries.clear();
    std::size_t k = 0;
    for (const SequenceChunk& chunk : batch) {
      if (!chunk.wants_logits) continue;
      const SamplingRow& in = rows[k];
      if (!in.params) fail("CUDA runner: sampling row {} has no parameters", k);
      const SamplingParams& sp = *in.params;
      SampleRow& out = sample_rows_host[k];
      out = sample_row_of(sp, logit_rows[k], /*counts_slot=*/-1,
                          in.history ? static_cast<std::uint64_t>(in.history->num_generated()) : 0);
      if (sp.has_penalties()) {
        if (!in.history) fail("CUDA runner: sampling row {} has penalties but no token history", k);
        auto it = penalty_slots.find(chunk.sequence_id);
        if (it == penalty_slots.end()) {
          it = penalty_slots.emplace(chunk.sequence_id, PenaltySlot{take_penalty_slot(), -1}).first;
        }
        if (it->second.counted != in.history->num_generated()) {
          clear.push_back(it->second.slot);
          for (const auto& [token, entry] : in.history->entries()) {
            count_entries.push_back({it->second.slot, token, entry.generated, entry.in_prompt ? 1 : 0});
          }
        }
        out.counts_slot = it->second.slot;
        it->second.counted = in.history->num_generated() + 1;  // the kernel counts the token it samples
      }
      ++k;
    }
    if (!clear.empty()) {
      if (count_entries_dev.size() < count_entries.size())
        count_entries_dev.allocate(count_entries.size() * 2);
      if (!count_entries.empty()) {
        ATOM_CUDA_CHECK(cudaMemcpyAsync(count_entries_dev.get(), count_entries.data(),
                                        count_entries.size() * sizeof(TokenCountEntry),
                                        cudaMemcpyHostToDevice, stream));
      }
      LoadTokenCountsParams load;
      load.output_counts = output_counts.get();
      load.prompt_mask = prompt_mask.get();
      load.vocab = cfg.vocab_size;
      load.num_slots = slot_capacity;
      load.clear_slots = clear;
      load.entries = count_entries_dev.get();
      load.num_entries = static_cast<int>(count_entries.size());
      load_token_counts(load, stream);
    }
  }

  std::size_t workspace_bytes() const {
    return blas_workspace.bytes() + decode_workspace.bytes() + dev_ints.bytes() + tmp.bytes() +
           hidden.bytes() + normed.bytes() + qkv.bytes() + attn.bytes() + gate_up.bytes() + act.bytes() +
           final_normed.bytes() + q_packed.bytes() + q_scales.bytes() + q_outlier_scales.bytes() +
           q_outliers.bytes() + q_codes_s8.bytes() + identity_perm.bytes() + dense_scratch.bytes() + int32_scratch.bytes() + hadamard_scratch.bytes() +
           logits_dev.bytes() + (int8_gemm ? std::size_t{64} << 20 : 0);  // cuBLASLt's workspace
  }

  std::size_t block_bytes(int bs) const {
    return kv_bytes_per_token(cfg, opt.kv_dtype, kv_group_size()) * static_cast<std::size_t>(bs);
  }

  // The checkpoint's KV groups apply to a quantized cache; an f16 cache asked for instead has none.
  int kv_group_size() const { return opt.kv_dtype == KvDtype::kF16 ? 0 : w->kv_group_size; }

  void allocate_kv(const KvCacheSpec& spec) {
    if (spec.block_size < 1 || spec.block_size > 256 || (spec.block_size & (spec.block_size - 1)) != 0) {
      fail("CUDA runner: KV block size {} (a power of two in [1, 256])", spec.block_size);
    }
    if (spec.num_blocks < 1) fail("CUDA runner: {} KV blocks", spec.num_blocks);
    for (auto& [bucket, exec] : graphs) cudaGraphExecDestroy(exec);
    graphs.clear();
    block_size = spec.block_size;
    num_pages = spec.num_blocks;
    table_stride = (max_ctx + block_size - 1) / block_size;

    PagedKvCache proto;
    proto.dtype = opt.kv_dtype;
    proto.num_pages = num_pages;
    proto.page_size = block_size;
    proto.num_kv_heads = cfg.num_kv_heads;
    proto.head_dim = cfg.head_dim;
    proto.group_size = kv_group_size();
    const std::size_t codes = align16(proto.codes_bytes()), params = align16(proto.params_bytes());
    const std::size_t per_layer = 2 * (codes + params);
    kv_storage.reset();
    kv_storage.allocate(per_layer * static_cast<std::size_t>(cfg.num_layers));
    caches.clear();
    for (int l = 0; l < cfg.num_layers; ++l) {
      std::uint8_t* base = kv_storage.get() + per_layer * static_cast<std::size_t>(l);
      PagedKvCache c = proto;
      c.k_codes = base;
      c.v_codes = base + codes;
      if (params > 0) {
        c.k_params = reinterpret_cast<std::uint32_t*>(base + 2 * codes);
        c.v_params = reinterpret_cast<std::uint32_t*>(base + 2 * codes + params);
      }
      check_cache(c, "CUDA runner KV cache");
      caches.push_back(c);
    }

    const std::size_t t = static_cast<std::size_t>(rows_capacity());
    const std::size_t s = static_cast<std::size_t>(max_logit_rows);
    const std::size_t tables = s * static_cast<std::size_t>(table_stride);
    layout.tokens = 0;
    layout.positions = layout.tokens + t;
    layout.slots = layout.positions + t;
    layout.logit_rows = layout.slots + t;
    layout.dec_lens = layout.logit_rows + s;
    layout.dec_tables = layout.dec_lens + s;
    layout.pre_indptr = layout.dec_tables + tables;
    layout.pre_lens = layout.pre_indptr + s + 1;
    layout.pre_tables = layout.pre_lens + s;
    layout.total = layout.pre_tables + tables;
    host_ints.allocate(layout.total);
    dev_ints.allocate(layout.total);
    std::memset(host_ints.get(), 0, layout.total * sizeof(std::int32_t));

    // The decode split plan depends on the batch and the longest context: size the workspace for the worst.
    std::size_t ws = 0;
    for (int b = 1; b <= max_logit_rows; ++b) {
      DecodeParams d = decode_params(b, max_ctx);
      ws = std::max(ws, decode_workspace_bytes(d));
    }
    decode_workspace.reset();
    decode_workspace.allocate(std::max<std::size_t>(ws, 16));
  }

  const std::int32_t* dev(std::size_t offset) const { return dev_ints.get() + offset; }

  DecodeParams decode_params(int batch, int max_kv_len) const {
    DecodeParams d;
    d.cache = caches.at(0);  // the split plan reads the geometry; forward() sets each layer's cache
    d.batch = batch;
    d.num_qo_heads = cfg.num_heads;
    d.q = qkv.get();
    d.q_token_stride = qkv_width;
    d.q_head_stride = cfg.head_dim;
    d.out = attn.get();
    d.out_token_stride = attn_width;
    d.out_head_stride = cfg.head_dim;
    d.kv_lens = dev(layout.dec_lens);
    d.block_tables = dev(layout.dec_tables);
    d.block_table_stride = table_stride;
    d.max_kv_len = max_kv_len;
    d.sm_scale = 1.0f / std::sqrt(static_cast<float>(cfg.head_dim));
    d.workspace = decode_workspace.get();
    d.workspace_bytes = decode_workspace.bytes();
    return d;
  }

  // ---- Pieces of the forward.

  // Whether a product of m rows runs on the serving-size GEMM (W4A4: its quantizer then writes int8 rows).
  // Whether linear l's product of m rows runs on the serving-size kernel (int8 activation rows): W8A8, or W4A4
  // with INT4 groups of 128 (the kernel's format; INT3 / other groups keep the packed layout).
  bool serving_gemm_rows(const DeviceLinear& l, int m) const {
    using SG = CudaRunnerOptions::ServingGemm;
    if (opt.serving_gemm == SG::kOff || !w4a4_swapab_available() || m <= 16 || m > kW4A4S8MaxRows) return false;
    if (opt.serving_gemm == SG::kMeasured && !w4a4_prefers_s8_activations(m, l.n)) return false;
    if (w->precision == Precision::kW8A8) return true;
    return w->precision == Precision::kW4A4 && l.act.format == ActFormat::kInt4 && l.act.group_size == kW4A4Group;
  }

  // Where the quantizer feeding `l` writes its m rows: the layout l's GEMM reads at this m.
  QuantizedActOut quant_out(const DeviceLinear& l, int m) {
    QuantizedActOut o;
    if (serving_gemm_rows(l, m) && w->precision == Precision::kW4A4) {
      o.codes_s8 = q_codes_s8.get();
      o.codes_s8_stride = w4a4_s8_row_bytes(l.k_normal, l.n_outliers);
      o.scales = q_scales.get();
      o.scale_token_stride = 1;  // group-major, as the kernel reads them
      o.scale_group_stride = m;
      o.outlier_scales = q_outlier_scales.get();
      o.outlier_scale_stride = 1;
      return o;
    }
    o.packed = q_packed.get();
    o.packed_stride = l.k_normal / 2;
    o.scales = q_scales.get();
    o.scale_token_stride = l.k_normal / kW4A4Group;
    o.scale_group_stride = 1;
    o.outliers = q_outliers.get();
    o.outlier_stride = l.n_outliers;
    o.outlier_scales = q_outlier_scales.get();
    o.outlier_scale_stride = 1;
    return o;
  }

  const std::int32_t* perm_or_identity(const DeviceBuffer<std::int32_t>& perm) const {
    return perm.empty() ? identity_perm.get() : perm.get();
  }

  void gemm_f16(const std::uint16_t* x, const std::uint16_t* wt, void* y, int m, int n, int k, bool f32_out) {
    const float one = 1.0f, zero = 0.0f;
    check_blas(
        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, wt, CUDA_R_16F, k, x, CUDA_R_16F, k,
                     &zero, y, f32_out ? CUDA_R_32F : CUDA_R_16F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
  }

  // out [m, l.n] = input x W^T. Quantized precisions read the q_* buffers (filled by the preceding fused
  // quantizer); fp16 / w4a16 read x.
  void linear(const DeviceLinear& l, const std::uint16_t* x, int m, std::uint16_t* out) {
    switch (w->precision) {
      case Precision::kF16:
        gemm_f16(x, l.weight_f16.get(), out, m, l.n, l.k, false);
        break;
      case Precision::kW4A16: {
        if (m > opt.w4a16_dense_rows) {
          dequantize_w4a4_weights_f16(l.packed_view(), dense_scratch.get(), l.k, stream);
          gemm_f16(x, dense_scratch.get(), out, m, l.n, l.k, false);
          break;
        }
        GemmW4A16Args a;
        a.x = x;
        a.m = m;
        a.w = l.packed_view();
        a.out = out;
        gemm_w4a16(a, stream);
        break;
      }
      case Precision::kW8A8:
        if (serving_gemm_rows(l, m)) {
          // Serving sizes: our kernel reads the same int8 layouts and scales in its epilogue (one pass, fp16 out).
          GemmW8A8Args a;
          a.x = q_outliers.get();
          a.x_scales = q_outlier_scales.get();
          a.m = m;
          a.w = l.weight_i8.get();
          a.w_scales = l.channel_scales.get();
          a.n = l.n;
          a.k = l.k;
          a.out = out;
          gemm_w8a8_s8(a, stream);
          break;
        }
        int8_gemm->i8(q_outliers.get(), l.weight_i8.get(), int32_scratch.get(), m, l.n, l.k);
        w8a8_scale_epilogue(int32_scratch.get(), m, l.n, q_outlier_scales.get(), l.channel_scales.get(), out,
                            stream);
        break;
      case Precision::kW4A4: {
        if (serving_gemm_rows(l, m)) {
          GemmW4A4S8Args a;
          a.a = {q_codes_s8.get(), q_scales.get(), q_outlier_scales.get(), m};
          a.w = l.packed_view();
          a.out = out;
          a.out_type = GemmOutType::kF16;
          // k_splits 1: the bit-exact kernel (split-K reassociates the fp32 sum).
          gemm_w4a4_o8_s8(a, stream, W4A4SwapAbTile::kAuto, opt.batch_invariant ? 1 : 0);
          break;
        }
        GemmW4A4Args a;
        a.a = {q_packed.get(), q_scales.get(), q_outliers.get(), q_outlier_scales.get(), m};
        a.w = l.packed_view();
        a.out = out;
        a.out_type = GemmOutType::kF16;
        // The in-order wgmma kernel equals the reference at every m; the small-m kernels split K over warps.
        gemm_w4a4_o8(a, stream, opt.batch_invariant ? W4A4Kernel::kWgmmaBn128 : W4A4Kernel::kAuto);
        break;
      }
    }
  }

  bool quantized_acts() const { return w->precision == Precision::kW4A4 || w->precision == Precision::kW8A8; }

  // Residual add (unless first) + RMSNorm of tmp into the input of `l` (quantized, or fp16 in `normed`).
  void norm_into(const DeviceLinear& l, const DeviceBuffer<std::uint16_t>& gamma,
                 const DeviceBuffer<std::int32_t>& perm, int m, bool first) {
    const int h = cfg.hidden_size;
    if (quantized_acts()) {
      RmsNormQuantParams p;
      p.num_tokens = m;
      p.layout = l.act;
      p.input = tmp.get();
      p.input_stride = h;
      p.residual = first ? nullptr : hidden.get();
      p.residual_stride = h;
      p.residual_out = hidden.get();
      p.residual_out_stride = h;
      p.weight = gamma.get();
      p.eps = cfg.rms_norm_eps;
      p.perm = perm_or_identity(perm);
      p.out = quant_out(l, m);
      p.slices = row_slices;
      rmsnorm_quantize(p, stream);
    } else {
      RmsNormParams p;
      p.num_rows = m;
      p.hidden = h;
      p.input = tmp.get();
      p.input_stride = h;
      p.residual = first ? nullptr : hidden.get();
      p.residual_stride = h;
      p.residual_out = hidden.get();
      p.residual_out_stride = h;
      p.weight = gamma.get();
      p.eps = cfg.rms_norm_eps;
      p.perm = perm.empty() ? nullptr : perm.get();
      p.out = normed.get();
      p.out_stride = h;
      rmsnorm_f16(p, stream);
    }
  }

  void forward(const Shape& s) {
    const int m = s.tokens, h = cfg.hidden_size, inter = cfg.intermediate_size, d = cfg.head_dim;
    EmbeddingParams e;
    e.table = w->embed_tokens.get();
    e.vocab = cfg.vocab_size;
    e.hidden = h;
    e.tokens = dev(layout.tokens);
    e.num_tokens = m;
    e.out = tmp.get();
    e.out_stride = h;
    mark("start");
    embedding_lookup(e, stream);
    mark("embed");

    for (int li = 0; li < cfg.num_layers; ++li) {
      const DeviceLayer& L = w->layers[static_cast<std::size_t>(li)];
      norm_into(L.qkv, L.input_norm, L.attn_perm, m, li == 0);
      mark("norm");
      linear(L.qkv, normed.get(), m, qkv.get());
      mark("qkv_gemm");

      KvAppendParams a;
      a.cache = caches[static_cast<std::size_t>(li)];
      a.num_tokens = m;
      a.num_qo_heads = cfg.num_heads;
      a.q = qkv.get();
      a.q_token_stride = qkv_width;
      a.q_head_stride = d;
      a.q_out = qkv.get();
      a.q_out_token_stride = qkv_width;
      a.q_out_head_stride = d;
      a.k = qkv.get() + static_cast<std::size_t>(cfg.num_heads) * d;
      a.k_token_stride = qkv_width;
      a.k_head_stride = d;
      a.v = qkv.get() + static_cast<std::size_t>(cfg.num_heads + cfg.num_kv_heads) * d;
      a.v_token_stride = qkv_width;
      a.v_head_stride = d;
      a.positions = dev(layout.positions);
      a.slots = dev(layout.slots);
      a.rope_inv_freq = w->rope_inv_freq.get();
      a.rope_interleaved = false;
      a.qk_hadamard = w->qk_hadamard;
      a.k_center = L.k_center.empty() ? nullptr : L.k_center.get();
      kv_cache_append(a, stream);
      mark("rope_kv_append");

      if (s.decode > 0) {
        DecodeParams dp = decode_params(s.decode, s.max_kv_len);
        dp.cache = caches[static_cast<std::size_t>(li)];
        attention_decode(dp, stream);
        mark("attn_decode");
      }
      if (s.prefill > 0) {
        PrefillParams p;
        p.cache = caches[static_cast<std::size_t>(li)];
        p.batch = s.prefill;
        p.num_qo_heads = cfg.num_heads;
        p.max_q_len = s.max_q_len;
        p.q = qkv.get() + static_cast<std::size_t>(s.decode) * qkv_width;
        p.q_token_stride = qkv_width;
        p.q_head_stride = d;
        p.out = attn.get() + static_cast<std::size_t>(s.decode) * attn_width;
        p.out_token_stride = attn_width;
        p.out_head_stride = d;
        p.qo_indptr = dev(layout.pre_indptr);
        p.kv_lens = dev(layout.pre_lens);
        p.block_tables = dev(layout.pre_tables);
        p.block_table_stride = table_stride;
        p.sm_scale = 1.0f / std::sqrt(static_cast<float>(d));
        p.causal = true;
        attention_prefill(p, stream);
        mark("attn_prefill");
      }

      if (quantized_acts()) {
        ReorderQuantParams r;
        r.num_tokens = m;
        r.layout = L.o_proj.act;
        r.input = attn.get();
        r.input_stride = attn_width;
        r.perm = perm_or_identity(L.o_proj.perm);
        r.out = quant_out(L.o_proj, m);
        r.slices = row_slices;
        reorder_quantize(r, stream);
        mark("o_quant");
      }
      linear(L.o_proj, attn.get(), m, tmp.get());
      mark("o_gemm");

      norm_into(L.gate_up, L.post_attention_norm, L.mlp_perm, m, false);
      mark("norm");
      linear(L.gate_up, normed.get(), m, gate_up.get());
      mark("gate_up_gemm");
      if (w->down_hadamard.n > 0) {
        // Rotated checkpoint: SiLU * up is transformed in the original channel order, then down_proj's
        // input is gathered by its permutation and quantized (as o_proj's). Quantized activations transform
        // in place in the gate half of gate_up.
        SiluMulHadamardParams hp;
        hp.num_tokens = m;
        hp.transform = w->down_hadamard;
        hp.gate = gate_up.get();
        hp.gate_stride = 2 * inter;
        hp.up = gate_up.get() + inter;
        hp.up_stride = 2 * inter;
        hp.out = quantized_acts() ? gate_up.get() : act.get();
        hp.out_stride = quantized_acts() ? 2 * inter : inter;
        hp.scratch = hadamard_scratch.get();
        hp.blas = blas;
        silu_mul_hadamard_f16(hp, stream);
        if (quantized_acts()) {
          ReorderQuantParams r;
          r.num_tokens = m;
          r.layout = L.down.act;
          r.input = gate_up.get();
          r.input_stride = 2 * inter;
          r.perm = perm_or_identity(L.down.perm);
          r.out = quant_out(L.down, m);
          r.slices = row_slices;
          reorder_quantize(r, stream);
        }
      } else if (quantized_acts()) {
        SiluMulQuantParams q;
        q.num_tokens = m;
        q.layout = L.down.act;
        q.gate = gate_up.get();
        q.gate_stride = 2 * inter;
        q.up = gate_up.get() + inter;
        q.up_stride = 2 * inter;
        q.out = quant_out(L.down, m);
        q.slices = row_slices;
        silu_mul_quantize(q, stream);
      } else {
        SiluMulParams q;
        q.num_tokens = m;
        q.width = inter;
        q.gate = gate_up.get();
        q.gate_stride = 2 * inter;
        q.up = gate_up.get() + inter;
        q.up_stride = 2 * inter;
        q.out = act.get();
        q.out_stride = inter;
        silu_mul_f16(q, stream);
      }
      mark("silu_mul");
      linear(L.down, act.get(), m, tmp.get());
      mark("down_gemm");
    }

    // Last residual add + final norm, only on the rows that want logits.
    RmsNormParams f;
    f.num_rows = s.logits;
    f.hidden = h;
    f.input = tmp.get();
    f.input_stride = h;
    f.rows = dev(layout.logit_rows);
    f.residual = hidden.get();
    f.residual_stride = h;
    f.weight = w->final_norm.get();
    f.eps = cfg.rms_norm_eps;
    f.out = final_normed.get();
    f.out_stride = h;
    if (s.logits > 0) {
      rmsnorm_f16(f, stream);
      mark("final_norm");
      // Batch-invariant: one fixed shape (the rows past s.logits are stale and ignored).
      gemm_f16(final_normed.get(), w->output_weight(), logits_dev.get(),
               opt.batch_invariant ? max_logit_rows : s.logits, cfg.vocab_size, h, true);
      mark("lm_head");
    }
  }

  void upload_ints(const Shape& s) {
    // Only the used part of each region travels.
    const auto copy = [&](std::size_t offset, std::size_t count) {
      if (count == 0) return;
      ATOM_CUDA_CHECK(cudaMemcpyAsync(dev_ints.get() + offset, host_ints.get() + offset,
                                      count * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream));
    };
    const std::size_t t = static_cast<std::size_t>(s.tokens);
    copy(layout.tokens, t);
    copy(layout.positions, t);
    copy(layout.slots, t);
    copy(layout.logit_rows, static_cast<std::size_t>(s.logits));
    copy(layout.dec_lens, static_cast<std::size_t>(s.decode));
    copy(layout.dec_tables, static_cast<std::size_t>(s.decode) * static_cast<std::size_t>(table_stride));
    if (s.prefill > 0) {
      copy(layout.pre_indptr, static_cast<std::size_t>(s.prefill) + 1);
      copy(layout.pre_lens, static_cast<std::size_t>(s.prefill));
      copy(layout.pre_tables, static_cast<std::size_t>(s.prefill) * static_cast<std::size_t>(table_stride));
    }
  }

  cudaGraphExec_t graph_for(const Shape& s) {
    auto it = graphs.find(s.tokens);
    if (it != graphs.end()) return it->second;
    // One eager run first: lazy initialisation (kernel attributes, cuBLAS heuristics) must not be captured.
    forward(s);
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      forward(s);
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    ATOM_CUDA_CHECK(status);
    graphs.emplace(s.tokens, exec);
    return exec;
  }

  enum class Output { kLogits, kArgmax, kSample };

  // Runs the batch; fills logits_out (kLogits), tokens_out with each sampling chunk's argmax (kArgmax), or
  // sampled_out with each sampling chunk's draw (kSample, with sample_in's parameters).
  // No per-sequence state: every step takes positions, K/V slots and attention lengths from each chunk's
  // start_position and block table alone. So a sequence's first chunk may start past 0 (prefix caching:
  // the blocks before start_position were filled by an earlier request and are only read, through the
  // table, by the same paged attention that serves later chunks of a chunked prefill), and a one-token
  // first chunk runs as a decode.
  void execute(std::span<const SequenceChunk> batch, std::span<float> logits_out,
               std::span<std::int32_t> tokens_out, Output mode, std::span<const SamplingRow> sample_in = {},
               std::span<SampledToken> sampled_out = {}) {
    if (caches.empty()) fail("CUDA runner: execute() before allocate_kv_cache()");
    if (batch.empty()) return;
    if (static_cast<int>(batch.size()) > opt.max_sequences) {
      fail("CUDA runner: {} sequences in one step (max_sequences {})", batch.size(), opt.max_sequences);
    }
    std::vector<int> order;  // decode chunks first, then prefill chunks, each in batch order
    order.reserve(batch.size());
    int total = 0, wants = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const SequenceChunk& c = batch[i];
      const int n = static_cast<int>(c.tokens.size());
      if (n < 1) fail("CUDA runner: sequence {} has no new tokens", c.sequence_id);
      if (c.start_position < 0 || c.start_position + n > max_ctx) {
        fail("CUDA runner: sequence {} positions [{}, {}) exceed the context of {}", c.sequence_id,
             c.start_position, c.start_position + n, max_ctx);
      }
      const int blocks = (c.start_position + n + block_size - 1) / block_size;
      if (static_cast<int>(c.block_table.size()) < blocks) {
        fail("CUDA runner: sequence {} has {} KV blocks for {} positions", c.sequence_id,
             c.block_table.size(), c.start_position + n);
      }
      for (int b = 0; b < blocks; ++b) {
        const int page = c.block_table[static_cast<std::size_t>(b)];
        if (page < 0 || page >= num_pages)
          fail("CUDA runner: sequence {} names KV block {} of {}", c.sequence_id, page, num_pages);
      }
      for (std::int32_t t : c.tokens) {
        if (t < 0 || t >= cfg.vocab_size)
          fail("CUDA runner: token id {} outside the vocabulary of {}", t, cfg.vocab_size);
      }
      total += n;
      wants += c.wants_logits ? 1 : 0;
      if (n == 1) order.push_back(static_cast<int>(i));
    }
    const int decode = static_cast<int>(order.size());
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].tokens.size() > 1) order.push_back(static_cast<int>(i));
    }
    if (total > opt.max_batch_tokens) {
      fail("CUDA runner: {} tokens in one step (max_batch_tokens {})", total, opt.max_batch_tokens);
    }
    if (mode == Output::kLogits &&
        logits_out.size() < static_cast<std::size_t>(wants) * static_cast<std::size_t>(cfg.vocab_size)) {
      fail("CUDA runner: logits span of {} floats for {} rows", logits_out.size(), wants);
    }
    if (mode == Output::kArgmax && tokens_out.size() < static_cast<std::size_t>(wants)) {
      fail("CUDA runner: token span of {} for {} rows", tokens_out.size(), wants);
    }
    if (mode == Output::kSample && (sample_in.size() < static_cast<std::size_t>(wants) ||
                                    sampled_out.size() < static_cast<std::size_t>(wants))) {
      fail("CUDA runner: {} sampling rows and {} outputs for {} rows", sample_in.size(), sampled_out.size(),
           wants);
    }

    const bool use_graph = opt.cuda_graphs && decode == static_cast<int>(batch.size());
    // Sequences attended by the decode kernel (the first rows); the rest go through the prefill kernel. In
    // batch-invariant mode every sequence does: the prefill kernel walks a row's keys in one fixed order of
    // 64-key tiles from position 0, while the decode kernel's split plan follows the batch.
    const int attn_decode = opt.batch_invariant ? 0 : decode;
    Shape s;
    s.decode = attn_decode;
    s.prefill = static_cast<int>(batch.size()) - attn_decode;
    std::int32_t* ints = host_ints.get();
    const std::size_t stride = static_cast<std::size_t>(table_stride);
    // Token rows: chunk order[j] occupies rows [row_of[j], row_of[j] + n).
    std::vector<int> last_row(batch.size());
    int row = 0, max_kv = 0, max_q = 0;
    for (int j = 0; j < static_cast<int>(order.size()); ++j) {
      const SequenceChunk& c = batch[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])];
      const int n = static_cast<int>(c.tokens.size());
      for (int i = 0; i < n; ++i) {
        const int pos = c.start_position + i;
        ints[layout.tokens + row + i] = c.tokens[static_cast<std::size_t>(i)];
        ints[layout.positions + row + i] = pos;
        ints[layout.slots + row + i] =
            c.block_table[static_cast<std::size_t>(pos / block_size)] * block_size + pos % block_size;
      }
      const int kv_len = c.start_position + n;
      const int blocks = (kv_len + block_size - 1) / block_size;
      if (j < attn_decode) {
        ints[layout.dec_lens + j] = kv_len;
        std::copy_n(c.block_table.begin(), blocks,
                    ints + layout.dec_tables + static_cast<std::size_t>(j) * stride);
        max_kv = std::max(max_kv, kv_len);
      } else {
        const int p = j - attn_decode;
        if (p == 0) ints[layout.pre_indptr] = 0;
        ints[layout.pre_indptr + p + 1] = row + n - attn_decode;
        ints[layout.pre_lens + p] = kv_len;
        std::copy_n(c.block_table.begin(), blocks,
                    ints + layout.pre_tables + static_cast<std::size_t>(p) * stride);
        max_q = std::max(max_q, n);
      }
      last_row[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] = row + n - 1;
      row += n;
    }
    s.tokens = total;
    s.max_kv_len = max_kv;
    s.max_q_len = max_q;

    if (use_graph) {
      // Pad to the bucket: padded rows write no KV (slot -1), attend to nothing (kv_len 0); logits of every
      // row.
      const int bucket = std::min(graph_bucket(decode), max_logit_rows);
      for (int j = decode; j < bucket; ++j) {
        ints[layout.tokens + j] = 0;
        ints[layout.positions + j] = 0;
        ints[layout.slots + j] = -1;
        if (opt.batch_invariant) {
          ints[layout.pre_indptr + j + 1] = j + 1;  // one query row that sees no key
          ints[layout.pre_lens + j] = 0;
        } else {
          ints[layout.dec_lens + j] = 0;
        }
      }
      for (int j = 0; j < bucket; ++j) ints[layout.logit_rows + j] = j;
      s.tokens = s.logits = bucket;
      if (opt.batch_invariant) {
        s.prefill = bucket;
        s.max_q_len = 1;
      } else {
        s.decode = bucket;
        s.max_kv_len = max_ctx;
      }
    } else {
      int k = 0;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (batch[i].wants_logits) ints[layout.logit_rows + k++] = last_row[i];
      }
      s.logits = k;
    }

    upload_ints(s);
    ATOM_CUDA_CHECK(cudaEventRecord(ev_start, stream));
    if (use_graph) {
      const cudaGraphExec_t exec = graph_for(s);
      ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    } else {
      profiling_step = profile && decode == static_cast<int>(batch.size());
      forward(s);
      if (profiling_step) collect_profile();
      profiling_step = false;
    }
    // ev_stop follows the step's last kernel (the forward, or the sampling after it): the GPU time of a step.
    const std::size_t vocab = static_cast<std::size_t>(cfg.vocab_size);
    // Logit row of the k-th chunk that samples: graphs compute every (padded) row, in batch order.
    std::vector<int> logit_rows;
    logit_rows.reserve(static_cast<std::size_t>(wants));
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].wants_logits)
        logit_rows.push_back(use_graph ? static_cast<int>(i) : static_cast<int>(logit_rows.size()));
    }
    bool any_logprobs = false;
    if (s.logits > 0 && mode == Output::kSample) {
      prepare_sample_rows(batch, sample_in, logit_rows);
      const std::size_t n = static_cast<std::size_t>(wants);
      ATOM_CUDA_CHECK(cudaMemcpyAsync(sample_rows_dev.get(), sample_rows_host.get(), n * sizeof(SampleRow),
                                      cudaMemcpyHostToDevice, stream));
      SampleRowsParams sp;
      sp.logits = logits_dev.get();
      sp.logits_stride = static_cast<std::int64_t>(vocab);
      sp.vocab = cfg.vocab_size;
      sp.rows = sample_rows_dev.get();
      sp.num_rows = wants;
      sp.output_counts = output_counts.get();
      sp.prompt_mask = prompt_mask.get();
      sp.num_slots = slot_capacity;
      sp.count_sampled = true;
      sp.tokens = sampled_tokens_dev.get();
      sp.logprobs = sampled_logprobs_dev.get();
      sp.top_tokens = top_tokens_dev.get();
      sp.top_logprobs = top_logprobs_dev.get();
      sample_rows(sp, stream);
      ATOM_CUDA_CHECK(cudaEventRecord(ev_stop, stream));
      ATOM_CUDA_CHECK(cudaMemcpyAsync(sampled_tokens_host.get(), sampled_tokens_dev.get(),
                                      n * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
      for (std::size_t k = 0; k < n; ++k) any_logprobs = any_logprobs || sample_rows_host[k].logprobs >= 0;
      if (any_logprobs) {
        ATOM_CUDA_CHECK(cudaMemcpyAsync(sampled_logprobs_host.get(), sampled_logprobs_dev.get(),
                                        n * sizeof(float), cudaMemcpyDeviceToHost, stream));
        ATOM_CUDA_CHECK(cudaMemcpyAsync(top_tokens_host.get(), top_tokens_dev.get(),
                                        n * kMaxTopLogprobs * sizeof(std::int32_t), cudaMemcpyDeviceToHost,
                                        stream));
        ATOM_CUDA_CHECK(cudaMemcpyAsync(top_logprobs_host.get(), top_logprobs_dev.get(),
                                        n * kMaxTopLogprobs * sizeof(float), cudaMemcpyDeviceToHost, stream));
      }
    } else if (s.logits > 0 && mode == Output::kArgmax) {
      argmax_rows(logits_dev.get(), s.logits, cfg.vocab_size, argmax_dev.get(), stream);
      ATOM_CUDA_CHECK(cudaEventRecord(ev_stop, stream));
      ATOM_CUDA_CHECK(cudaMemcpyAsync(argmax_host.get(), argmax_dev.get(),
                                      static_cast<std::size_t>(s.logits) * sizeof(std::int32_t),
                                      cudaMemcpyDeviceToHost, stream));
    } else if (s.logits > 0 && mode == Output::kLogits) {
      ATOM_CUDA_CHECK(cudaEventRecord(ev_stop, stream));
      ATOM_CUDA_CHECK(cudaMemcpyAsync(logits_host.get(), logits_dev.get(),
                                      static_cast<std::size_t>(s.logits) * vocab * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
    } else {
      ATOM_CUDA_CHECK(cudaEventRecord(ev_stop, stream));
    }
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    float ms = 0.0f;
    ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, ev_start, ev_stop));
    if (decode == static_cast<int>(batch.size())) {
      gpu_time.decode_ms += ms;
      ++gpu_time.decode_steps;
    } else {
      gpu_time.mixed_ms += ms;
      ++gpu_time.mixed_steps;
    }

    // Results in batch order of the chunks that want them.
    int k = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!batch[i].wants_logits) continue;
      const std::size_t src_row = use_graph ? i : static_cast<std::size_t>(k);
      if (mode == Output::kSample) {
        const std::size_t r = static_cast<std::size_t>(k);
        SampledToken& out = sampled_out[r];
        out = SampledToken{};
        out.token = sampled_tokens_host[r];
        if (sample_rows_host[r].logprobs >= 0) {
          out.logprob = sampled_logprobs_host[r];
          const int n = std::min(sample_rows_host[r].logprobs, cfg.vocab_size);
          for (int j = 0; j < n; ++j) {
            out.top_logprobs.push_back(
                {top_tokens_host[r * kMaxTopLogprobs + static_cast<std::size_t>(j)],
                 top_logprobs_host[r * kMaxTopLogprobs + static_cast<std::size_t>(j)]});
          }
        }
      } else if (mode == Output::kArgmax) {
        tokens_out[static_cast<std::size_t>(k)] = argmax_host[src_row];
      } else {
        std::memcpy(logits_out.data() + static_cast<std::size_t>(k) * vocab,
                    logits_host.get() + src_row * vocab, vocab * sizeof(float));
      }
      ++k;
    }
  }
};

CudaModelRunner::CudaModelRunner(std::shared_ptr<const CudaLlamaWeights> weights, CudaRunnerOptions options)
    : impl_(std::make_unique<Impl>(std::move(weights), options)) {}
CudaModelRunner::~CudaModelRunner() = default;

int CudaModelRunner::vocab_size() const { return impl_->cfg.vocab_size; }
int CudaModelRunner::max_context() const { return impl_->max_ctx; }
std::size_t CudaModelRunner::kv_block_bytes(int block_size) const { return impl_->block_bytes(block_size); }
void CudaModelRunner::allocate_kv_cache(const KvCacheSpec& spec) { impl_->allocate_kv(spec); }
void CudaModelRunner::execute(std::span<const SequenceChunk> batch, std::span<float> logits) {
  impl_->execute(batch, logits, {}, Impl::Output::kLogits);
}
void CudaModelRunner::execute_greedy(std::span<const SequenceChunk> batch, std::span<std::int32_t> tokens) {
  impl_->execute(batch, {}, tokens, Impl::Output::kArgmax);
}
void CudaModelRunner::execute_sample(std::span<const SequenceChunk> batch, std::span<const SamplingRow> rows,
                                     std::span<SampledToken> out) {
  // Plain greedy rows only: the argmax kernel is all it takes.
  const bool plain_greedy = std::all_of(
      rows.begin(), rows.end(), [](const SamplingRow& r) { return r.params && r.params->plain_greedy(); });
  if (!plain_greedy) {
    impl_->execute(batch, {}, {}, Impl::Output::kSample, rows, out);
    return;
  }
  std::vector<std::int32_t> tokens(rows.size());
  impl_->execute(batch, {}, tokens, Impl::Output::kArgmax);
  for (std::size_t i = 0; i < rows.size(); ++i) out[i] = SampledToken{tokens[i], 0.0f, {}};
}
void CudaModelRunner::release(std::int64_t sequence_id) { impl_->release_penalty_slot(sequence_id); }
std::string CudaModelRunner::describe() const {
  const DeviceInfo info = current_device_info();
  return fmt::format("cuda ({}), {}, kv {}, graphs {}{}", info.name, impl_->w->describe(),
                     kv_dtype_name(impl_->opt.kv_dtype), impl_->opt.cuda_graphs ? "on" : "off",
                     impl_->opt.batch_invariant ? ", batch-invariant" : "");
}
std::size_t CudaModelRunner::workspace_bytes() const { return impl_->workspace_bytes(); }
std::size_t CudaModelRunner::kv_cache_bytes() const { return impl_->kv_storage.bytes(); }
const CudaLlamaWeights& CudaModelRunner::weights() const { return *impl_->w; }
CudaModelRunner::GpuTime CudaModelRunner::take_gpu_time() { return std::exchange(impl_->gpu_time, {}); }

}  // namespace atom::cuda
