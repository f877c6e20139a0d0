#pragma once
// The serving engine: requests in, text increments out. One engine thread runs iterations (schedule a
// batch, run it on the ModelRunner, sample, detokenize, check stops); any thread may submit and cancel.
// Without start(), step() drives it synchronously (tests, offline benchmarks).
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/block_manager.h"
#include "engine/metrics.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/text_codec.h"
#include "model/model_runner.h"

namespace atom {

struct EngineConfig {
  SchedulerLimits limits;
  int max_context = 0;     // positions per sequence (prompt + generated); 0: the model's
  int block_size = 16;     // tokens per KV block
  int num_kv_blocks = 0;   // 0: as many as kv_cache_bytes holds
  std::size_t kv_cache_bytes = std::size_t{1} << 30;
  // Automatic prefix caching (engine/block_manager.h): KV blocks of prompt prefixes that earlier requests
  // computed are reused. On by default, as in vLLM: the cached K/V are those the request would compute
  // (up to the last-bit differences that different chunk shapes already give, as batching does).
  bool enable_prefix_caching = true;
};

// The client's end of one request: the engine pushes increments, the client takes them.
class RequestStream {
 public:
  RequestStream(std::int64_t id, int prompt_tokens) : id_(id), prompt_tokens_(prompt_tokens) {}
  std::int64_t id() const { return id_; }
  int prompt_tokens() const { return prompt_tokens_; }

  // Everything pushed since the last call, merged into one increment; waits up to `timeout` for it.
  // nullopt on timeout, and after the finished increment was taken.
  std::optional<RequestOutput> next(std::chrono::milliseconds timeout);
  // Waits for the end and returns the whole output as one increment (whatever next() took or not).
  RequestOutput wait();

  void push(RequestOutput output);  // engine side

 private:
  const std::int64_t id_;
  const int prompt_tokens_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<RequestOutput> pending_;
  RequestOutput total_;  // everything pushed, for wait()
  bool closed_ = false;  // the finished increment was taken
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  std::int64_t steps = 0;
  std::int64_t preemptions = 0;
  std::int64_t scheduled_sequences = 0;  // summed over steps: / steps = mean batch size
  std::int64_t scheduled_tokens = 0;     // summed over steps (prefill chunks and decode tokens)
  // Prefix caching: tokens of admitted sequences looked up in the cache, and found there (their K/V
  // reused, not computed); blocks in the cache, and cached blocks evicted for room.
  std::int64_t prefix_cache_queried_tokens = 0;
  std::int64_t prefix_cache_hit_tokens = 0;
  int kv_blocks_cached = 0;
  std::int64_t prefix_cache_evictions = 0;
};

// Timing of one finished request, for benchmarks (seconds since its submission).
struct RequestTiming {
  std::int64_t id = 0;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  double first_scheduled = 0.0;
  double first_token = 0.0;
  double finished = 0.0;
  FinishReason finish_reason = FinishReason::none;
};

class Engine {
 public:
  // `metrics` (optional) receives the engine's counters, gauges and histograms; it must outlive the engine.
  Engine(std::unique_ptr<ModelRunner> runner, std::shared_ptr<const TextCodec> codec, EngineConfig config,
         MetricsRegistry* metrics = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws atom::Error naming the field when the request cannot be served (empty or
  // too long prompt, token out of vocabulary, bad parameters, more KV blocks than the pool has).
  std::shared_ptr<RequestStream> submit(GenerationRequest request);
  // Ends a request (its stream gets a finished increment with reason cancelled) and frees its KV blocks
  // at the next iteration boundary. Unknown or finished ids are ignored.
  void cancel(std::int64_t request_id);

  // Synchronous driving: one iteration. Returns false when there was nothing to do.
  bool step();

  // Empties the prefix cache of blocks no request holds (at the next iteration boundary; with synchronous
  // driving, at the next step()), e.g. after the weights changed or to measure without it.
  void reset_prefix_cache();

  // Background driving: an engine thread runs iterations until shutdown().
  void start();
  // Stops the engine thread; requests still queued or running are cancelled.
  void shutdown();

  EngineStats stats() const;
  const EngineConfig& config() const { return config_; }
  int max_context() const { return config_.max_context; }
  // The most tokens (prompt + completion) one request can have: within the context and the KV pool.
  int max_request_tokens() const;
  const ModelRunner& runner() const { return *runner_; }
  const TextCodec& codec() const { return *codec_; }
  // Timings of finished requests since the last call (when recording is on); for benchmarks.
  void record_timings(bool on);
  std::vector<RequestTiming> take_timings();

 private:
  struct Request;
  struct Instruments;
  using Clock = std::chrono::steady_clock;

  void validate(const GenerationRequest& request) const;
  void absorb_inbox();
  void finish(Request& request, FinishReason reason, RequestOutput output, const std::string& error = "");
  void on_token(Request& request, SampledToken sampled, Clock::time_point now);
  void update_gauges();
  void run_loop();

  std::unique_ptr<ModelRunner> runner_;
  std::shared_ptr<const TextCodec> codec_;
  EngineConfig config_;
  std::vector<std::int32_t> eos_ids_;
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unique_ptr<Instruments> instruments_;
  std::unordered_map<std::int64_t, std::unique_ptr<Request>> requests_;  // engine thread only
  std::mt19937_64 seed_source_;
  std::vector<std::int32_t> greedy_tokens_;
  std::vector<SampledToken> sampled_tokens_;
  std::int64_t steps_ = 0, preemptions_ = 0, scheduled_sequences_ = 0, scheduled_tokens_ = 0;
  std::int64_t prefix_queried_ = 0, prefix_hits_ = 0, evictions_reported_ = 0;

  // Shared with submitting threads.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Request>> inbox_;
  std::vector<std::int64_t> cancels_;
  std::int64_t next_id_ = 1;
  bool stop_requested_ = false;
  bool reset_prefix_cache_ = false;
  EngineStats stats_;
  bool record_timings_ = false;
  std::vector<RequestTiming> timings_;
  std::thread thread_;
};

}  // namespace atom
