#include "engine/engine.h"

#include <algorithm>
#include <utility>

#include "common/error.h"
#include "engine/stop_strings.h"
#include "model/sampler.h"

namespace atom {

// ---------------------------------------------------------------------------------------------------------
// RequestStream

void RequestStream::push(RequestOutput output) {
  {
    std::lock_guard lock(mutex_);
    total_.text += output.text;
    total_.token_ids.insert(total_.token_ids.end(), output.token_ids.begin(), output.token_ids.end());
    total_.logprobs.insert(total_.logprobs.end(), output.logprobs.begin(), output.logprobs.end());
    total_.finished = output.finished;
    total_.finish_reason = output.finish_reason;
    total_.error = output.error;
    total_.prompt_tokens = output.prompt_tokens;
    total_.completion_tokens = output.completion_tokens;
    pending_.push_back(std::move(output));
  }
  ready_.notify_all();
}

std::optional<RequestOutput> RequestStream::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (closed_) return std::nullopt;
  if (!ready_.wait_for(lock, timeout, [&] { return !pending_.empty(); })) return std::nullopt;
  RequestOutput merged = std::move(pending_.front());
  pending_.pop_front();
  while (!pending_.empty()) {
    RequestOutput& more = pending_.front();
    merged.text += more.text;
    merged.token_ids.insert(merged.token_ids.end(), more.token_ids.begin(), more.token_ids.end());
    merged.logprobs.insert(merged.logprobs.end(), std::make_move_iterator(more.logprobs.begin()),
                           std::make_move_iterator(more.logprobs.end()));
    merged.finished = more.finished;
    merged.finish_reason = more.finish_reason;
    merged.error = std::move(more.error);
    merged.completion_tokens = more.completion_tokens;
    pending_.pop_front();
  }
  if (merged.finished) closed_ = true;
  return merged;
}

RequestOutput RequestStream::wait() {
  std::unique_lock lock(mutex_);
  ready_.wait(lock, [&] { return total_.finished; });
  return total_;
}

// ---------------------------------------------------------------------------------------------------------
// Engine

struct Engine::Request {
  Sequence sequence;
  GenerationParams params;
  SamplingParams sampling;  // set on the engine thread (the seed may come from its source)
  TokenCounts history;      // prompt tokens and generated counts, for penalties; the draw index
  std::unique_ptr<IncrementalDecoder> decoder;
  std::unique_ptr<StopStringFilter> stop_filter;
  std::shared_ptr<RequestStream> stream;
  Clock::time_point arrival, first_scheduled, first_token, last_token;
  bool scheduled = false;
};

struct Engine::Instruments {
  explicit Instruments(MetricsRegistry& r)
      : prompt_tokens(r.counter("atom_prompt_tokens_total", "Prompt tokens prefilled (first admission)")),
        generation_tokens(r.counter("atom_generation_tokens_total", "Tokens generated")),
        preemptions(r.counter("atom_num_preemptions_total", "Sequences preempted (recomputed later)")),
        steps(r.counter("atom_engine_steps_total", "Engine iterations run")),
        prefix_queries(r.counter("atom_prefix_cache_queries_total",
                                 "Tokens of admitted requests looked up in the prefix cache")),
        prefix_hits(r.counter("atom_prefix_cache_hits_total",
                              "Tokens found in the prefix cache (K/V reused, not computed)")),
        prefix_misses(r.counter("atom_prefix_cache_misses_total",
                                "Tokens looked up in the prefix cache and not found")),
        prefix_evictions(
            r.counter("atom_prefix_cache_evictions_total", "Cached KV blocks evicted to make room")),
        running(r.gauge("atom_num_requests_running", "Requests in the running batch")),
        waiting(r.gauge("atom_num_requests_waiting", "Requests waiting to be scheduled")),
        blocks_used(r.gauge("atom_kv_cache_blocks_used", "KV cache blocks in use")),
        blocks_total(r.gauge("atom_kv_cache_blocks_total", "KV cache blocks in the pool")),
        usage(r.gauge("atom_kv_cache_usage_ratio", "Fraction of KV cache blocks in use")),
        blocks_cached(r.gauge("atom_kv_cache_blocks_cached", "KV cache blocks in the prefix cache")),
        ttft(r.histogram("atom_time_to_first_token_seconds", "Time from arrival to the first generated token",
                         latency_buckets_seconds())),
        tpot(r.histogram("atom_time_per_output_token_seconds", "Time between consecutive generated tokens",
                         latency_buckets_seconds())),
        e2e(r.histogram("atom_e2e_request_latency_seconds", "Time from arrival to the end of the request",
                        latency_buckets_seconds())) {
    for (FinishReason reason : {FinishReason::stop, FinishReason::length, FinishReason::cancelled,
                                FinishReason::error}) {
      finished[static_cast<int>(reason)] = &r.counter("atom_requests_finished_total", "Requests finished, by reason",
                                                      {{"finished_reason", finish_reason_name(reason)}});
    }
  }
  Counter &prompt_tokens, &generation_tokens, &preemptions, &steps;
  Counter &prefix_queries, &prefix_hits, &prefix_misses, &prefix_evictions;
  Gauge &running, &waiting, &blocks_used, &blocks_total, &usage, &blocks_cached;
  Histogram &ttft, &tpot, &e2e;
  Counter* finished[5] = {};
  std::unique_ptr<MetricsRegistry> own_registry;  // when the caller gave none
};

namespace {

int resolve_max_context(const EngineConfig& config, const ModelRunner& runner) {
  const int model_max = runner.max_context();
  if (config.max_context < 0) fail("max context must be >= 0 (0 = the model's), got {}", config.max_context);
  if (config.max_context > model_max) {
    fail("max context {} exceeds the model's maximum of {} positions", config.max_context, model_max);
  }
  return config.max_context == 0 ? model_max : config.max_context;
}

int resolve_num_blocks(const EngineConfig& config, const ModelRunner& runner) {
  if (config.block_size < 1) fail("KV block size must be at least 1, got {}", config.block_size);
  if (config.num_kv_blocks > 0) return config.num_kv_blocks;
  const std::size_t per_block = runner.kv_block_bytes(config.block_size);
  ATOM_CHECK(per_block > 0);
  const std::size_t blocks = config.kv_cache_bytes / per_block;
  if (blocks < 1) {
    fail("KV cache budget of {} bytes holds no block ({} bytes per block of {} tokens)", config.kv_cache_bytes,
         per_block, config.block_size);
  }
  return static_cast<int>(std::min<std::size_t>(blocks, 1 << 30));
}

EngineConfig resolved(EngineConfig config, const ModelRunner& runner) {
  config.max_context = resolve_max_context(config, runner);
  config.num_kv_blocks = resolve_num_blocks(config, runner);
  return config;
}

}  // namespace

Engine::Engine(std::unique_ptr<ModelRunner> runner, std::shared_ptr<const TextCodec> codec,
               EngineConfig config, MetricsRegistry* metrics)
    : runner_(std::move(runner)),
      codec_(std::move(codec)),
      config_(resolved(config, *runner_)),
      eos_ids_(codec_->eos_token_ids()),
      blocks_(config_.num_kv_blocks, config_.block_size, config_.enable_prefix_caching),
      scheduler_(config_.limits, blocks_),
      seed_source_(std::random_device{}()) {
  std::unique_ptr<MetricsRegistry> own;
  if (!metrics) {
    own = std::make_unique<MetricsRegistry>();
    metrics = own.get();
  }
  instruments_ = std::make_unique<Instruments>(*metrics);
  instruments_->own_registry = std::move(own);
  if (codec_->vocab_size() > runner_->vocab_size()) {
    fail("tokenizer vocabulary ({}) is larger than the model's ({})", codec_->vocab_size(), runner_->vocab_size());
  }
  runner_->allocate_kv_cache({config_.num_kv_blocks, config_.block_size});
  update_gauges();
}

Engine::~Engine() { shutdown(); }

void Engine::validate(const GenerationRequest& request) const {
  if (request.prompt.empty()) fail("prompt is empty: at least one token is needed");
  const int vocab = runner_->vocab_size();
  for (std::size_t i = 0; i < request.prompt.size(); ++i) {
    const std::int32_t token = request.prompt[i];
    if (token < 0 || token >= vocab) fail("prompt token {} is {}, outside the vocabulary [0, {})", i, token, vocab);
  }
  request.params.validate();
  const std::int64_t total = static_cast<std::int64_t>(request.prompt.size()) + request.params.max_tokens;
  if (total > config_.max_context) {
    fail("maximum context length is {} tokens, but {} were requested ({} in the prompt, {} for the completion)",
         config_.max_context, total, request.prompt.size(), request.params.max_tokens);
  }
  if (blocks_.blocks_for(total) > blocks_.num_blocks()) {
    fail("request needs {} KV blocks of {} tokens for {} tokens, but the cache has only {} blocks",
         blocks_.blocks_for(total), blocks_.block_size(), total, blocks_.num_blocks());
  }
}

std::shared_ptr<RequestStream> Engine::submit(GenerationRequest generation) {
  validate(generation);
  auto request = std::make_unique<Request>();
  request->params = std::move(generation.params);
  request->sequence.prompt_length = static_cast<int>(generation.prompt.size());
  // Token counts only where a penalty reads them; every request counts its draws (the sampler's counter).
  request->history = TokenCounts(generation.prompt, request->params.sampling(0).has_penalties());
  request->sequence.tokens = std::move(generation.prompt);
  request->decoder = codec_->new_decoder();
  request->stop_filter = std::make_unique<StopStringFilter>(request->params.stop);
  request->arrival = Clock::now();
  std::shared_ptr<RequestStream> stream;
  {
    std::lock_guard lock(mutex_);
    if (stop_requested_) fail("the engine is shutting down");
    request->sequence.id = next_id_++;
    stream = std::make_shared<RequestStream>(request->sequence.id, request->sequence.prompt_length);
    request->stream = stream;
    inbox_.push_back(std::move(request));
  }
  wake_.notify_all();
  return stream;
}

void Engine::cancel(std::int64_t request_id) {
  {
    std::lock_guard lock(mutex_);
    cancels_.push_back(request_id);
  }
  wake_.notify_all();
}

void Engine::reset_prefix_cache() {
  {
    std::lock_guard lock(mutex_);
    reset_prefix_cache_ = true;
  }
  wake_.notify_all();
}

void Engine::absorb_inbox() {
  std::deque<std::unique_ptr<Request>> incoming;
  std::vector<std::int64_t> cancels;
  bool reset_cache = false;
  {
    std::lock_guard lock(mutex_);
    incoming.swap(inbox_);
    cancels.swap(cancels_);
    reset_cache = std::exchange(reset_prefix_cache_, false);
  }
  if (reset_cache) blocks_.clear_cache();
  for (auto& request : incoming) {
    request->sampling =
        request->params.sampling(request->params.seed ? *request->params.seed : seed_source_());
    scheduler_.add(&request->sequence);
    const std::int64_t id = request->sequence.id;
    requests_.emplace(id, std::move(request));
  }
  for (std::int64_t id : cancels) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;
    Request& request = *it->second;
    RequestOutput output;
    // Text held back for a possible stop string is released: it was generated.
    output.text = request.stop_filter->append(request.decoder->flush()) + request.stop_filter->flush();
    finish(request, FinishReason::cancelled, std::move(output));
  }
}

void Engine::finish(Request& request, FinishReason reason, RequestOutput output, const std::string& error) {
  const Clock::time_point now = Clock::now();
  output.finished = true;
  output.finish_reason = reason;
  output.error = error;
  output.prompt_tokens = request.sequence.prompt_length;
  output.completion_tokens = request.sequence.generated();
  scheduler_.remove(&request.sequence);
  runner_->release(request.sequence.id);
  request.stream->push(std::move(output));

  instruments_->finished[static_cast<int>(reason)]->inc();
  instruments_->e2e.observe(std::chrono::duration<double>(now - request.arrival).count());
  {
    std::lock_guard lock(mutex_);
    if (record_timings_) {
      auto since = [&](Clock::time_point t) { return std::chrono::duration<double>(t - request.arrival).count(); };
      RequestTiming timing;
      timing.id = request.sequence.id;
      timing.prompt_tokens = request.sequence.prompt_length;
      timing.completion_tokens = request.sequence.generated();
      timing.first_scheduled = request.scheduled ? since(request.first_scheduled) : 0.0;
      timing.first_token = request.sequence.generated() > 0 ? since(request.first_token) : 0.0;
      timing.finished = since(now);
      timing.finish_reason = reason;
      timings_.push_back(timing);
    }
  }
  requests_.erase(request.sequence.id);  // destroys `request`
}

void Engine::on_token(Request& request, SampledToken sampled, Clock::time_point now) {
  Sequence& sequence = request.sequence;
  const std::int32_t token = sampled.token;
  sequence.tokens.push_back(token);
  request.history.add_generated(token);
  instruments_->generation_tokens.inc();
  if (sequence.generated() == 1) {
    request.first_token = now;
    instruments_->ttft.observe(std::chrono::duration<double>(now - request.arrival).count());
  } else {
    instruments_->tpot.observe(std::chrono::duration<double>(now - request.last_token).count());
  }
  request.last_token = now;

  RequestOutput output;
  output.token_ids = {token};
  if (request.sampling.logprobs >= 0) output.logprobs.push_back(std::move(sampled));
  output.prompt_tokens = sequence.prompt_length;
  output.completion_tokens = sequence.generated();
  const auto& stop_ids = request.params.stop_token_ids;
  const bool is_eos = !request.params.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
  const bool is_stop_id = std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
  StopStringFilter& filter = *request.stop_filter;
  if (is_eos || is_stop_id) {
    // The stop token itself is not text of the answer.
    output.text = filter.append(request.decoder->flush());
    if (!filter.stopped()) output.text += filter.flush();
    finish(request, FinishReason::stop, std::move(output));
    return;
  }
  output.text = filter.append(request.decoder->push(token));
  if (filter.stopped()) {
    finish(request, FinishReason::stop, std::move(output));
    return;
  }
  if (sequence.generated() >= request.params.max_tokens ||
      static_cast<int>(sequence.tokens.size()) >= config_.max_context) {
    output.text += filter.append(request.decoder->flush());
    if (filter.stopped()) {
      finish(request, FinishReason::stop, std::move(output));
      return;
    }
    output.text += filter.flush();
    finish(request, FinishReason::length, std::move(output));
    return;
  }
  request.stream->push(std::move(output));
}

bool Engine::step() {
  absorb_inbox();
  if (scheduler_.idle()) {
    update_gauges();
    return false;
  }
  const ScheduleResult plan = scheduler_.schedule();
  for (Sequence* victim : plan.preempted) {
    runner_->release(victim->id);
    ++preemptions_;
    instruments_->preemptions.inc();
  }
  ATOM_CHECK(!plan.chunks.empty());

  const Clock::time_point scheduled_at = Clock::now();
  std::vector<SequenceChunk> batch;
  batch.reserve(plan.chunks.size());
  std::vector<Request*> sampled;
  std::vector<SamplingRow> rows;
  for (const ScheduledChunk& chunk : plan.chunks) {
    Sequence& sequence = *chunk.sequence;
    Request& request = *requests_.at(sequence.id);
    if (!request.scheduled) {
      request.scheduled = true;
      request.first_scheduled = scheduled_at;
      instruments_->prompt_tokens.inc(sequence.prompt_length);
    }
    SequenceChunk item;
    item.sequence_id = sequence.id;
    item.tokens = std::span<const std::int32_t>(sequence.tokens).subspan(sequence.num_computed, chunk.num_tokens);
    item.start_position = sequence.num_computed;
    item.block_table = sequence.block_table;
    item.wants_logits = chunk.samples;
    batch.push_back(item);
    if (chunk.samples) {
      sampled.push_back(&request);
      rows.push_back({&request.sampling, &request.history});
    }
  }
  // A runner that samples on the device does every step; one that only takes argmaxes there does the steps
  // whose requests are all plain greedy; otherwise the runner's default brings the logits to the host.
  const bool device_greedy = !runner_->samples_on_device() && runner_->samples_greedy_on_device() &&
                             !sampled.empty() &&
                             std::all_of(sampled.begin(), sampled.end(),
                                         [](const Request* r) { return r->sampling.plain_greedy(); });
  sampled_tokens_.assign(sampled.size(), SampledToken{});
  try {
    if (device_greedy) {
      greedy_tokens_.resize(sampled.size());
      runner_->execute_greedy(batch, greedy_tokens_);
      for (std::size_t i = 0; i < sampled.size(); ++i) sampled_tokens_[i].token = greedy_tokens_[i];
    } else {
      runner_->execute_sample(batch, rows, sampled_tokens_);
    }
  } catch (const std::exception& e) {
    // A failed step ends the requests in it; the engine carries on with the others.
    for (const ScheduledChunk& chunk : plan.chunks) {
      Request& request = *requests_.at(chunk.sequence->id);
      finish(request, FinishReason::error, {}, fmt::format("model execution failed: {}", e.what()));
    }
    update_gauges();
    return true;
  }
  Scheduler::mark_computed(plan);
  scheduler_.cache_computed_blocks(plan);
  if (plan.prefix_queried_tokens > 0) {
    prefix_queried_ += plan.prefix_queried_tokens;
    prefix_hits_ += plan.prefix_hit_tokens;
    instruments_->prefix_queries.inc(static_cast<double>(plan.prefix_queried_tokens));
    instruments_->prefix_hits.inc(static_cast<double>(plan.prefix_hit_tokens));
    instruments_->prefix_misses.inc(static_cast<double>(plan.prefix_queried_tokens - plan.prefix_hit_tokens));
  }
  const Clock::time_point now = Clock::now();
  for (std::size_t i = 0; i < sampled.size(); ++i) {
    on_token(*sampled[i], std::move(sampled_tokens_[i]), now);  // may finish (and destroy) the request
  }
  ++steps_;
  scheduled_sequences_ += static_cast<std::int64_t>(plan.chunks.size());
  scheduled_tokens_ += plan.num_tokens;
  instruments_->steps.inc();
  update_gauges();
  return true;
}

void Engine::update_gauges() {
  instruments_->running.set(scheduler_.num_running());
  instruments_->waiting.set(scheduler_.num_waiting());
  instruments_->blocks_used.set(blocks_.num_used());
  instruments_->blocks_total.set(blocks_.num_blocks());
  instruments_->usage.set(static_cast<double>(blocks_.num_used()) / blocks_.num_blocks());
  instruments_->blocks_cached.set(blocks_.num_cached());
  if (blocks_.evictions() > evictions_reported_) {
    instruments_->prefix_evictions.inc(static_cast<double>(blocks_.evictions() - evictions_reported_));
    evictions_reported_ = blocks_.evictions();
  }
  std::lock_guard lock(mutex_);
  stats_.running = scheduler_.num_running();
  stats_.waiting = scheduler_.num_waiting() + static_cast<int>(inbox_.size());
  stats_.kv_blocks_used = blocks_.num_used();
  stats_.kv_blocks_total = blocks_.num_blocks();
  stats_.steps = steps_;
  stats_.preemptions = preemptions_;
  stats_.scheduled_sequences = scheduled_sequences_;
  stats_.scheduled_tokens = scheduled_tokens_;
  stats_.prefix_cache_queried_tokens = prefix_queried_;
  stats_.prefix_cache_hit_tokens = prefix_hits_;
  stats_.kv_blocks_cached = blocks_.num_cached();
  stats_.prefix_cache_evictions = blocks_.evictions();
}

int Engine::max_request_tokens() const {
  const std::int64_t pool = static_cast<std::int64_t>(blocks_.num_blocks()) * blocks_.block_size();
  return static_cast<int>(std::min<std::int64_t>(config_.max_context, pool));
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mutex_);
  EngineStats stats = stats_;
  stats.waiting = std::max(stats.waiting, static_cast<int>(inbox_.size()));
  return stats;
}

void Engine::record_timings(bool on) {
  std::lock_guard lock(mutex_);
  record_timings_ = on;
}

std::vector<RequestTiming> Engine::take_timings() {
  std::lock_guard lock(mutex_);
  std::vector<RequestTiming> taken;
  taken.swap(timings_);
  return taken;
}

void Engine::start() {
  ATOM_CHECK(!thread_.joinable());
  thread_ = std::thread([this] { run_loop(); });
}

void Engine::run_loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stop_requested_ || !inbox_.empty() || !cancels_.empty() || reset_prefix_cache_ ||
               !scheduler_.idle();
      });
      if (stop_requested_) break;
    }
    step();
  }
}

void Engine::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Whatever is left is cancelled, so that no client waits forever.
  absorb_inbox();
  std::vector<std::int64_t> left;
  for (const auto& [id, request] : requests_) left.push_back(id);
  for (std::int64_t id : left) finish(*requests_.at(id), FinishReason::cancelled, {});
  update_gauges();
}

}  // namespace atom
