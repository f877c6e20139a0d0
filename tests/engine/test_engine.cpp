#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <thread>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/token_id_codec.h"
#include "fake_model.h"

namespace atom {
namespace {

using testing::FakeCodec;
using testing::FakeRunner;
using testing::fake_text;
using testing::kFakeEos;
using testing::reference_generate;

struct Harness {
  explicit Harness(EngineConfig config, int max_context = 4096) {
    auto owned = std::make_unique<FakeRunner>(max_context);
    runner = owned.get();
    engine = std::make_unique<Engine>(std::move(owned), std::make_shared<FakeCodec>(), config, &metrics);
  }
  void run_until_idle(int max_steps = 100000) {
    for (int i = 0; i < max_steps && engine->step(); ++i) {
    }
  }
  MetricsRegistry metrics;
  FakeRunner* runner = nullptr;
  std::unique_ptr<Engine> engine;
};

EngineConfig small_config(int max_batch = 8, int max_tokens = 64, int num_blocks = 256) {
  EngineConfig config;
  config.limits.max_batch = max_batch;
  config.limits.max_batched_tokens = max_tokens;
  config.num_kv_blocks = num_blocks;
  return config;
}

GenerationRequest greedy(std::vector<std::int32_t> prompt, int max_tokens, bool ignore_eos = true) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0.0f;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = ignore_eos;
  return r;
}

std::vector<std::int32_t> random_prompt(std::mt19937& rng, int length) {
  std::vector<std::int32_t> p(length);
  for (auto& t : p) t = 1 + static_cast<std::int32_t>(rng() % 62);
  return p;
}

// Index of the first EOS the fake model emits for this prompt within n tokens, or -1.
int first_eos(const std::vector<std::int32_t>& prompt, int n) {
  const auto out = reference_generate(prompt, n);
  const auto it = std::find(out.begin(), out.end(), kFakeEos);
  return it == out.end() ? -1 : static_cast<int>(it - out.begin());
}

TEST(Engine, GreedyOutputMatchesTheReferenceModel) {
  Harness h(small_config());
  const std::vector<std::int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  auto stream = h.engine->submit(greedy(prompt, 20));
  h.run_until_idle();
  const RequestOutput out = stream->wait();
  EXPECT_EQ(out.token_ids, reference_generate(prompt, 20));
  EXPECT_EQ(out.text, fake_text(out.token_ids));
  EXPECT_EQ(out.finish_reason, FinishReason::length);
  EXPECT_EQ(out.prompt_tokens, 8);
  EXPECT_EQ(out.completion_tokens, 20);
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 0);
}

TEST(Engine, AllGreedyStepsTakeTokenIdsFromARunnerThatSamplesOnTheDevice) {
  Harness h(small_config());
  h.runner->set_device_greedy(true);
  const std::vector<std::int32_t> prompt = {2, 7, 1, 8, 2, 8};
  auto stream = h.engine->submit(greedy(prompt, 12));
  h.run_until_idle();
  EXPECT_EQ(stream->wait().token_ids, reference_generate(prompt, 12));
  EXPECT_EQ(h.runner->greedy_calls(), h.runner->calls());  // every step of a greedy request
  EXPECT_GT(h.runner->greedy_calls(), 0);

  // One sampling request in the batch: those steps need the logits (execute), the greedy one still matches.
  const int greedy_before = h.runner->greedy_calls(), calls_before = h.runner->calls();
  GenerationRequest sampled = greedy({5, 5, 5}, 6);
  sampled.params.temperature = 0.8f;
  sampled.params.seed = 3;
  auto s1 = h.engine->submit(sampled);
  auto s2 = h.engine->submit(greedy(prompt, 6));
  h.run_until_idle();
  EXPECT_EQ(s2->wait().token_ids, reference_generate(prompt, 6));
  EXPECT_EQ(s1->wait().completion_tokens, 6);
  EXPECT_EQ(h.runner->greedy_calls(), greedy_before);  // the two requests ran in the same steps throughout
  EXPECT_GT(h.runner->calls(), calls_before);
}

// The engine's history (prompt + generated tokens) reaches the sampler: a greedy request with penalties
// follows a re-run of the fake model with the same penalties applied to its logits.
TEST(Engine, PenaltiesSeeThePromptAndTheGeneratedTokens) {
  for (bool device_sampling : {false, true}) {
    Harness h(small_config());
    h.runner->set_device_greedy(true);  // a penalized request is not plain greedy: never execute_greedy()
    h.runner->set_device_sampling(device_sampling);
    const std::vector<std::int32_t> prompt = {7, 8, 9, 7, 52, 4};
    GenerationRequest r = greedy(prompt, 25);
    r.params.repetition_penalty = 10.0f;  // the fake model's favourite (+4) falls below its neighbours
    r.params.frequency_penalty = 0.7f;
    r.params.presence_penalty = 0.4f;
    auto stream = h.engine->submit(r);
    h.run_until_idle();
    const auto got = stream->wait().token_ids;

    const SamplingParams params = r.params.sampling(0);
    std::vector<std::int32_t> prefix = prompt;
    TokenCounts history(prompt);
    std::vector<std::int32_t> want;
    for (int i = 0; i < 25; ++i) {
      std::vector<float> logits = testing::fake_logits(prefix);
      apply_penalties(logits, params, history);
      const std::int32_t t = argmax(logits);
      want.push_back(t);
      prefix.push_back(t);
      history.add_generated(t);
    }
    EXPECT_EQ(got, want) << "device sampling " << device_sampling;
    EXPECT_NE(got, reference_generate(prompt, 25)) << "the penalties should change the greedy path";
    EXPECT_EQ(h.runner->sample_calls(), h.runner->calls());
    EXPECT_EQ(h.runner->greedy_calls(), 0);
  }
}

TEST(Engine, LogprobsComeWithEveryGeneratedToken) {
  Harness h(small_config());
  const std::vector<std::int32_t> prompt = {3, 1, 4, 1, 5};
  GenerationRequest r = greedy(prompt, 12);
  r.params.logprobs = 3;
  auto stream = h.engine->submit(r);
  GenerationRequest plain = greedy({2, 7}, 5);
  auto without = h.engine->submit(plain);
  h.run_until_idle();
  const RequestOutput out = stream->wait();
  ASSERT_EQ(out.logprobs.size(), out.token_ids.size());
  std::vector<std::int32_t> prefix = prompt;
  for (std::size_t i = 0; i < out.token_ids.size(); ++i) {
    const std::vector<double> lp = log_softmax(testing::fake_logits(prefix));
    const SampledToken& s = out.logprobs[i];
    EXPECT_EQ(s.token, out.token_ids[i]);
    EXPECT_NEAR(s.logprob, lp[s.token], 1e-6);
    ASSERT_EQ(s.top_logprobs.size(), 3u);
    EXPECT_EQ(s.top_logprobs[0].token, s.token);  // greedy: the most likely token
    EXPECT_GE(s.top_logprobs[0].logprob, s.top_logprobs[1].logprob);
    EXPECT_GE(s.top_logprobs[1].logprob, s.top_logprobs[2].logprob);
    prefix.push_back(out.token_ids[i]);
  }
  EXPECT_TRUE(without->wait().logprobs.empty());
}

TEST(Engine, SeededDrawsDoNotDependOnTheRunnersSamplingPath) {
  auto run = [](bool device_sampling) {
    Harness h(small_config());
    h.runner->set_device_sampling(device_sampling);
    GenerationRequest r = greedy({11, 12, 13}, 30);
    r.params.temperature = 1.2f;
    r.params.min_p = 0.02f;
    r.params.seed = 99;
    auto stream = h.engine->submit(r);
    h.run_until_idle();
    return stream->wait().token_ids;
  };
  EXPECT_EQ(run(false), run(true));
}

TEST(Engine, RejectsBadSamplingParameters) {
  Harness h(small_config());
  GenerationRequest r = greedy({1, 2}, 4);
  r.params.min_p = -0.1f;
  EXPECT_THROW(h.engine->submit(r), Error);
  r.params.min_p = 0.0f;
  r.params.logprobs = 50;
  EXPECT_THROW(h.engine->submit(r), Error);
}

TEST(ModelRunner, DefaultExecuteGreedyIsTheArgmaxOfTheLogits) {
  FakeRunner runner;
  runner.allocate_kv_cache({8, 16});
  const std::vector<std::int32_t> prompt = {4, 4, 2};
  const std::vector<std::int32_t> table = {0};
  const SequenceChunk chunk{1, prompt, 0, table, true};
  std::int32_t token = -1;
  runner.execute_greedy(std::span<const SequenceChunk>(&chunk, 1), std::span<std::int32_t>(&token, 1));
  EXPECT_EQ(token, testing::reference_next(prompt));
}

TEST(TokenIdCodec, RefusesTextAndDecodesToNothing) {
  const TokenIdCodec codec(1000, "synthetic:llama-2-7b");
  try {
    codec.encode("hello", true);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("synthetic:llama-2-7b"), std::string::npos) << e.what();
  }
  EXPECT_THROW(codec.apply_chat_template({}), Error);
  auto decoder = codec.new_decoder();
  EXPECT_EQ(decoder->push(42), "");
  EXPECT_EQ(decoder->flush(), "");
  EXPECT_TRUE(codec.eos_token_ids().empty());
  EXPECT_EQ(codec.vocab_size(), 1000);
}

TEST(Engine, StopsAtEndOfSequenceUnlessIgnored) {
  std::mt19937 rng(1);
  std::vector<std::int32_t> prompt;
  int eos_at = -1;
  while (eos_at < 2) {  // a prompt whose continuation hits EOS after a few tokens
    prompt = random_prompt(rng, 6);
    eos_at = first_eos(prompt, 40);
  }
  Harness h(small_config());
  auto stopped = h.engine->submit(greedy(prompt, 40, /*ignore_eos=*/false));
  auto through = h.engine->submit(greedy(prompt, 40, /*ignore_eos=*/true));
  h.run_until_idle();
  const RequestOutput a = stopped->wait();
  const auto reference = reference_generate(prompt, 40);
  EXPECT_EQ(a.finish_reason, FinishReason::stop);
  EXPECT_EQ(a.token_ids, std::vector<std::int32_t>(reference.begin(), reference.begin() + eos_at + 1));
  EXPECT_EQ(a.text, fake_text(std::vector<std::int32_t>(reference.begin(), reference.begin() + eos_at)));
  const RequestOutput b = through->wait();
  EXPECT_EQ(b.finish_reason, FinishReason::length);
  EXPECT_EQ(b.token_ids, reference);
}

TEST(Engine, StopTokenIdsEndTheRequest) {
  const std::vector<std::int32_t> prompt = {10, 20, 30};
  const auto reference = reference_generate(prompt, 30);
  // The first token that did not occur before it, from the 4th on.
  int at = 3;
  while (std::find(reference.begin(), reference.begin() + at, reference[at]) != reference.begin() + at) ++at;
  Harness h(small_config());
  GenerationRequest request = greedy(prompt, 30);
  request.params.stop_token_ids = {reference[at]};
  auto stream = h.engine->submit(request);
  h.run_until_idle();
  const RequestOutput out = stream->wait();
  EXPECT_EQ(out.finish_reason, FinishReason::stop);
  EXPECT_EQ(out.token_ids, std::vector<std::int32_t>(reference.begin(), reference.begin() + at + 1));
  EXPECT_EQ(out.text, fake_text(std::vector<std::int32_t>(reference.begin(), reference.begin() + at)));
}

TEST(Engine, StopStringsCutTheTextAndAreHeldBackWhileStreaming) {
  const std::vector<std::int32_t> prompt = {7, 7, 7};
  const auto reference = reference_generate(prompt, 40);
  const std::string full = fake_text(reference);
  // A 3-character stop string whose first occurrence is at offset 10 or later.
  std::size_t at = 10;
  while (full.find(full.substr(at, 3)) != at) ++at;
  const std::string stop = full.substr(at, 3);
  Harness h(small_config());
  GenerationRequest request = greedy(prompt, 40);
  request.params.stop = {"never-there", stop};
  auto stream = h.engine->submit(request);
  std::string streamed;
  bool finished = false;
  while (!finished) {
    h.engine->step();
    while (auto piece = stream->next(std::chrono::milliseconds(0))) {
      streamed += piece->text;
      // Released text never ends inside a possible stop string start that later completes.
      EXPECT_EQ(full.compare(0, streamed.size(), streamed), 0);
      EXPECT_LE(streamed.size(), at);
      finished = piece->finished;
      if (finished) EXPECT_EQ(piece->finish_reason, FinishReason::stop);
    }
  }
  EXPECT_EQ(streamed, full.substr(0, at));
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 0);
}

// Many requests, a tight KV pool, small batch and token budgets: chunked prefill, mixed batches and
// preemption by recompute all happen, and every output still equals the single-request reference.
TEST(Engine, ConcurrentRequestsUnderPreemptionMatchTheReference) {
  EngineConfig config = small_config(/*max_batch=*/8, /*max_tokens=*/32, /*num_blocks=*/20);
  config.block_size = 16;
  Harness h(config);
  std::mt19937 rng(5);
  struct Case {
    std::vector<std::int32_t> prompt;
    int max_tokens;
    std::shared_ptr<RequestStream> stream;
  };
  std::vector<Case> cases;
  for (int i = 0; i < 24; ++i) {
    Case c;
    c.prompt = random_prompt(rng, 5 + static_cast<int>(rng() % 60));
    c.max_tokens = 10 + static_cast<int>(rng() % 40);
    c.stream = h.engine->submit(greedy(c.prompt, c.max_tokens));
    cases.push_back(c);
  }
  h.run_until_idle();
  for (auto& c : cases) {
    const RequestOutput out = c.stream->wait();
    ASSERT_EQ(out.finish_reason, FinishReason::length);
    EXPECT_EQ(out.token_ids, reference_generate(c.prompt, c.max_tokens)) << "request " << c.stream->id();
  }
  const EngineStats stats = h.engine->stats();
  EXPECT_GT(stats.preemptions, 0) << "the pool was meant to run dry";
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(stats.running + stats.waiting, 0);
  EXPECT_LE(h.runner->max_batch_seen(), 8);
  EXPECT_EQ(h.runner->max_tokens_seen(), 32) << "the token budget is filled by mixed batches";
}

// Seeded sampling with every setting, under preemption by recompute: each request draws what it draws alone
// (the uniform is keyed by the token's index, the penalties' counts live in the request).
TEST(Engine, SeededPenalizedSamplingUnderPreemptionMatchesTheRequestAlone) {
  auto request = [](std::mt19937& rng, int i) {
    GenerationRequest r = greedy(random_prompt(rng, 5 + static_cast<int>(rng() % 50)), 20 + i % 20);
    r.params.temperature = 0.9f;
    r.params.top_k = 20;
    r.params.top_p = 0.95f;
    r.params.min_p = 0.01f;
    r.params.repetition_penalty = 1.2f;
    r.params.presence_penalty = 0.3f;
    r.params.frequency_penalty = 0.2f;
    r.params.seed = 100 + i;
    return r;
  };
  std::mt19937 rng(8);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) requests.push_back(request(rng, i));
  std::vector<std::vector<std::int32_t>> alone;
  for (const GenerationRequest& r : requests) {
    Harness h(small_config());
    auto stream = h.engine->submit(r);
    h.run_until_idle();
    alone.push_back(stream->wait().token_ids);
  }
  EngineConfig tight = small_config(/*max_batch=*/8, /*max_tokens=*/32, /*num_blocks=*/16);
  Harness h(tight);
  h.runner->set_device_sampling(true);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const GenerationRequest& r : requests) streams.push_back(h.engine->submit(r));
  h.run_until_idle();
  for (std::size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(streams[i]->wait().token_ids, alone[i]) << i;
  EXPECT_GT(h.engine->stats().preemptions, 0) << "the pool was meant to run dry";
}

TEST(Engine, CancellationFreesBlocksAtTheNextStep) {
  Harness h(small_config());
  auto keep = h.engine->submit(greedy({1, 2, 3}, 60));
  auto drop = h.engine->submit(greedy(std::vector<std::int32_t>(40, 9), 60));
  for (int i = 0; i < 5; ++i) h.engine->step();
  const int used_before = h.engine->stats().kv_blocks_used;
  EXPECT_EQ(used_before, 1 + 3);  // 3+5 positions in one block, 40+5 in three
  h.engine->cancel(drop->id());
  h.engine->cancel(12345);  // unknown ids are ignored
  h.engine->step();
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 1);
  const RequestOutput dropped = drop->wait();
  EXPECT_EQ(dropped.finish_reason, FinishReason::cancelled);
  EXPECT_EQ(dropped.completion_tokens, 5);
  h.run_until_idle();
  EXPECT_EQ(keep->wait().token_ids, reference_generate({1, 2, 3}, 60));
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 0);
  // Cancelling before the engine ever saw the request.
  auto early = h.engine->submit(greedy({4, 5}, 10));
  h.engine->cancel(early->id());
  h.engine->step();
  EXPECT_EQ(early->wait().finish_reason, FinishReason::cancelled);
  EXPECT_EQ(early->wait().completion_tokens, 0);
}

TEST(Engine, RejectsRequestsItCannotServe) {
  Harness h(small_config(8, 64, /*num_blocks=*/4), /*max_context=*/100);
  EXPECT_THROW(h.engine->submit(greedy({}, 5)), Error);
  EXPECT_THROW(h.engine->submit(greedy({1, 64}, 5)), Error);
  EXPECT_THROW(h.engine->submit(greedy({1, -1}, 5)), Error);
  EXPECT_THROW(h.engine->submit(greedy({1, 2}, 0)), Error);
  EXPECT_THROW(h.engine->submit(greedy(std::vector<std::int32_t>(90, 1), 11)), Error);  // 101 > context 100
  try {
    h.engine->submit(greedy(std::vector<std::int32_t>(60, 1), 10));  // 70 positions: 5 blocks > 4
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV blocks"), std::string::npos) << e.what();
  }
  GenerationRequest bad = greedy({1}, 5);
  bad.params.temperature = -1.0f;
  EXPECT_THROW(h.engine->submit(bad), Error);
  bad.params.temperature = 1.0f;
  bad.params.top_p = 0.0f;
  EXPECT_THROW(h.engine->submit(bad), Error);
  EXPECT_NO_THROW(h.engine->submit(greedy(std::vector<std::int32_t>(54, 1), 10)));  // 64 positions: 4 blocks
  EngineConfig too_long = small_config();
  too_long.max_context = 5000;
  EXPECT_THROW(Harness{too_long}, Error);
}

TEST(Engine, SeededSamplingIsReproducibleAndIndependentOfTheBatch) {
  auto sampled = [](std::uint64_t seed, int neighbours) {
    Harness h(small_config());
    std::mt19937 rng(3);
    for (int i = 0; i < neighbours; ++i) h.engine->submit(greedy(random_prompt(rng, 10), 30));
    GenerationRequest r = greedy({11, 12, 13}, 30);
    r.params.temperature = 1.5f;
    r.params.top_k = 10;
    r.params.seed = seed;
    auto stream = h.engine->submit(r);
    h.run_until_idle();
    return stream->wait().token_ids;
  };
  const auto a = sampled(42, 0);
  EXPECT_EQ(a, sampled(42, 5));
  EXPECT_NE(a, sampled(43, 0));
  EXPECT_NE(a, reference_generate({11, 12, 13}, 30)) << "temperature 1.5 should leave the greedy path";
}

TEST(Engine, AFailedStepEndsItsRequestsAndTheEngineCarriesOn) {
  Harness h(small_config());
  auto doomed = h.engine->submit(greedy({1, 2}, 10));
  h.runner->fail_next();
  h.engine->step();
  const RequestOutput out = doomed->wait();
  EXPECT_EQ(out.finish_reason, FinishReason::error);
  EXPECT_NE(out.error.find("injected failure"), std::string::npos) << out.error;
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 0);
  auto fine = h.engine->submit(greedy({1, 2}, 10));
  h.run_until_idle();
  EXPECT_EQ(fine->wait().token_ids, reference_generate({1, 2}, 10));
}

TEST(Engine, BackgroundThreadServesManyClientThreads) {
  Harness h(small_config(6, 24, 64));
  h.engine->start();
  std::vector<std::thread> clients;
  std::atomic<int> mismatches{0};
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      std::mt19937 rng(100 + i);
      const auto prompt = random_prompt(rng, 3 + i * 2);
      auto stream = h.engine->submit(greedy(prompt, 25));
      std::vector<std::int32_t> tokens;
      std::string text;
      for (;;) {
        auto piece = stream->next(std::chrono::milliseconds(50));
        if (!piece) continue;
        tokens.insert(tokens.end(), piece->token_ids.begin(), piece->token_ids.end());
        text += piece->text;
        if (piece->finished) break;
      }
      if (tokens != reference_generate(prompt, 25) || text != fake_text(tokens)) ++mismatches;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  // Shutdown cancels what is left.
  h.runner->set_step_delay_ms(2);
  auto left = h.engine->submit(greedy({1}, 1000));
  while (!left->next(std::chrono::milliseconds(100))) {
  }
  h.engine->shutdown();
  EXPECT_EQ(left->wait().finish_reason, FinishReason::cancelled);
  EXPECT_THROW(h.engine->submit(greedy({1}, 3)), Error);
}

TEST(Engine, ReportsMetrics) {
  Harness h(small_config());
  auto a = h.engine->submit(greedy({1, 2, 3}, 7));
  auto b = h.engine->submit(greedy({4, 5}, 5));
  h.run_until_idle();
  a->wait();
  b->wait();
  const std::string text = h.metrics.render_prometheus();
  EXPECT_NE(text.find("atom_generation_tokens_total 12\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_prompt_tokens_total 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_requests_finished_total{finished_reason=\"length\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_time_to_first_token_seconds_count 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_time_per_output_token_seconds_count 10\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_kv_cache_blocks_used 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_kv_cache_blocks_total 256\n"), std::string::npos) << text;
}

TEST(Engine, RecordsTimingsForBenchmarks) {
  Harness h(small_config());
  h.engine->record_timings(true);
  h.engine->submit(greedy({1, 2, 3}, 4));
  h.run_until_idle();
  const auto timings = h.engine->take_timings();
  ASSERT_EQ(timings.size(), 1u);
  EXPECT_EQ(timings[0].completion_tokens, 4);
  EXPECT_LE(timings[0].first_scheduled, timings[0].first_token);
  EXPECT_LE(timings[0].first_token, timings[0].finished);
  EXPECT_TRUE(h.engine->take_timings().empty());
}

}  // namespace
}  // namespace atom
