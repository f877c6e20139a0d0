#pragma once
// A tiny deterministic "model" and tokenizer for engine and server tests.
//
// FakeRunner keeps a real paged cache: each (block, slot) holds the token written at that position. The
// next-token logits depend on the whole prefix as READ BACK through the block table, so a wrong block
// table, a block shared by two live sequences or a lost position changes the output; the test compares
// against reference_next(), computed on the plain token list. The runner also checks the chunk contract
// (contiguous positions, block table long enough, one chunk per sequence).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/text_codec.h"
#include "model/model_runner.h"

namespace atom::testing {

constexpr int kFakeVocab = 64;
constexpr std::int32_t kFakeEos = 0;

// Token pieces: 0 EOS (no text), 1..26 "a".."z", 27 " ", 28 ".", 29 "\n", 30/31 the two bytes of "é",
// 32..63 "A".."Z" and digits-like filler "0".."5".
inline std::string fake_piece(std::int32_t token) {
  if (token == 0) return "";
  if (token >= 1 && token <= 26) return std::string(1, static_cast<char>('a' + token - 1));
  if (token == 27) return " ";
  if (token == 28) return ".";
  if (token == 29) return "\n";
  if (token == 30) return "\xC3";
  if (token == 31) return "\xA9";
  if (token >= 32 && token <= 57) return std::string(1, static_cast<char>('A' + token - 32));
  return std::string(1, static_cast<char>('0' + token - 58));
}

// The fake model: the most likely next token is a hash of the whole prefix. Token 0 (EOS) comes out when
// the hash says so (about one in 23 steps), so EOS handling is exercised.
inline std::int32_t reference_next(const std::vector<std::int32_t>& prefix) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    h ^= static_cast<std::uint64_t>(prefix[i]) + 0x9e3779b97f4a7c15ull * (i + 1);
    h *= 1099511628211ull;
  }
  h ^= h >> 29;
  if (h % 23 == 0) return kFakeEos;
  return static_cast<std::int32_t>(1 + (h >> 7) % (kFakeVocab - 1));
}

// The fake model's logits after `prefix`: peaked at reference_next() but not one-hot, so seeded sampling
// has something to choose from.
inline std::vector<float> fake_logits(const std::vector<std::int32_t>& prefix) {
  const std::int32_t next = reference_next(prefix);
  std::vector<float> row(kFakeVocab);
  for (int t = 0; t < kFakeVocab; ++t) row[t] = -0.5f * std::abs(t - next);
  row[next] += 4.0f;
  return row;
}

// Greedy continuation of `prompt` by the fake model, ignoring EOS.
inline std::vector<std::int32_t> reference_generate(std::vector<std::int32_t> prompt, int n) {
  std::vector<std::int32_t> out;
  for (int i = 0; i < n; ++i) {
    const std::int32_t t = reference_next(prompt);
    out.push_back(t);
    prompt.push_back(t);
  }
  return out;
}

class FakeRunner final : public ModelRunner {
 public:
  explicit FakeRunner(int max_context = 4096) : max_context_(max_context) {}

  int vocab_size() const override { return kFakeVocab; }
  int max_context() const override { return max_context_; }
  std::size_t kv_block_bytes(int block_size) const override { return std::size_t(block_size) * 1024; }
  void allocate_kv_cache(const KvCacheSpec& spec) override {
    spec_ = spec;
    slots_.assign(std::size_t(spec.num_blocks) * spec.block_size, -1);
  }
  std::string describe() const override { return "fake"; }

  void execute(std::span<const SequenceChunk> batch, std::span<float> logits) override {
    if (const int ms = delay_ms_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    std::lock_guard lock(mutex_);
    ++calls_;
    std::set<std::int64_t> seen;
    std::map<std::int32_t, int> holders;  // block -> sequences of the batch whose tables name it
    for (const SequenceChunk& chunk : batch) {
      for (std::int32_t b : std::set<std::int32_t>(chunk.block_table.begin(), chunk.block_table.end()))
        ++holders[b];
    }
    std::size_t out = 0;
    int tokens = 0;
    for (const SequenceChunk& chunk : batch) {
      EXPECT_TRUE(seen.insert(chunk.sequence_id).second) << "sequence twice in one batch";
      EXPECT_FALSE(chunk.tokens.empty());
      // Positions continue where this sequence's cache ends (0 after a preemption), or, for a sequence new
      // to the runner, after whole blocks of a cached prefix (prefix caching).
      const auto w = written_.find(chunk.sequence_id);
      if ((w == written_.end() || w->second == 0) && chunk.start_position > 0) {
        EXPECT_EQ(chunk.start_position % spec_.block_size, 0) << "sequence " << chunk.sequence_id;
        adopted_tokens_ += chunk.start_position;
      } else {
        EXPECT_EQ(chunk.start_position, w == written_.end() ? 0 : w->second)
            << "sequence " << chunk.sequence_id;
      }
      const std::int64_t end = chunk.start_position + static_cast<std::int64_t>(chunk.tokens.size());
      EXPECT_GE(static_cast<std::int64_t>(chunk.block_table.size()) * spec_.block_size, end);
      // A block this chunk writes is nobody else's (blocks before start_position may be shared, read only).
      for (std::int64_t b = chunk.start_position / spec_.block_size; b * spec_.block_size < end; ++b) {
        EXPECT_EQ(holders[chunk.block_table[b]], 1)
            << "block " << chunk.block_table[b] << " written while shared";
      }
      for (std::size_t i = 0; i < chunk.tokens.size(); ++i) slot(chunk, chunk.start_position + i) = chunk.tokens[i];
      written_[chunk.sequence_id] = end;
      tokens += static_cast<int>(chunk.tokens.size());
      if (!chunk.wants_logits) continue;
      std::vector<std::int32_t> prefix(end);
      for (std::int64_t p = 0; p < end; ++p) prefix[p] = slot(chunk, p);
      const std::vector<float> row = fake_logits(prefix);
      std::copy(row.begin(), row.end(), logits.begin() + static_cast<std::ptrdiff_t>(out * kFakeVocab));
      ++out;
    }
    EXPECT_EQ(out * kFakeVocab, logits.size());
    max_batch_seen_ = std::max<int>(max_batch_seen_, static_cast<int>(batch.size()));
    max_tokens_seen_ = std::max(max_tokens_seen_, tokens);
    if (fail_next_) {
      fail_next_ = false;
      throw std::runtime_error("injected failure");
    }
  }
  void release(std::int64_t sequence_id) override {
    std::lock_guard lock(mutex_);
    written_.erase(sequence_id);
    ++releases_;
  }

  // Device-side greedy (as the CUDA runner does): the engine then asks for token ids on all-greedy steps.
  void set_device_greedy(bool on) { device_greedy_ = on; }
  bool samples_greedy_on_device() const override { return device_greedy_; }
  void execute_greedy(std::span<const SequenceChunk> batch, std::span<std::int32_t> tokens) override {
    {
      std::lock_guard lock(mutex_);
      ++greedy_calls_;
    }
    ModelRunner::execute_greedy(batch, tokens);  // execute() + argmax of each row
  }
  int greedy_calls() const { std::lock_guard lock(mutex_); return greedy_calls_; }

  // Sampling on the "device" (as the CUDA runner does): the engine then calls execute_sample() every step.
  void set_device_sampling(bool on) { device_sampling_ = on; }
  bool samples_on_device() const override { return device_sampling_; }
  void execute_sample(std::span<const SequenceChunk> batch, std::span<const SamplingRow> rows,
                      std::span<SampledToken> out) override {
    {
      std::lock_guard lock(mutex_);
      ++sample_calls_;
    }
    ModelRunner::execute_sample(batch, rows, out);  // execute() + sample_token() of each row
  }
  int sample_calls() const {
    std::lock_guard lock(mutex_);
    return sample_calls_;
  }

  int calls() const { std::lock_guard lock(mutex_); return calls_; }
  // Positions of new sequences that came from cached blocks (prefix caching), summed.
  std::int64_t adopted_tokens() const {
    std::lock_guard lock(mutex_);
    return adopted_tokens_;
  }
  int max_batch_seen() const { std::lock_guard lock(mutex_); return max_batch_seen_; }
  int max_tokens_seen() const { std::lock_guard lock(mutex_); return max_tokens_seen_; }
  void fail_next() { std::lock_guard lock(mutex_); fail_next_ = true; }
  // Slows every step down (a model that takes time), so tests can act while requests run.
  void set_step_delay_ms(int ms) { delay_ms_ = ms; }

 private:
  std::int32_t& slot(const SequenceChunk& chunk, std::int64_t position) {
    const std::int32_t block = chunk.block_table[position / spec_.block_size];
    return slots_[std::size_t(block) * spec_.block_size + position % spec_.block_size];
  }

  int max_context_;
  KvCacheSpec spec_;
  std::vector<std::int32_t> slots_;
  std::map<std::int64_t, std::int64_t> written_;
  mutable std::mutex mutex_;
  int calls_ = 0, max_batch_seen_ = 0, max_tokens_seen_ = 0, releases_ = 0, greedy_calls_ = 0,
      sample_calls_ = 0;
  std::int64_t adopted_tokens_ = 0;
  bool fail_next_ = false;
  bool device_greedy_ = false;
  bool device_sampling_ = false;
  std::atomic<int> delay_ms_{0};
};

// Holds back an incomplete UTF-8 character and turns invalid bytes into U+FFFD, like the tokenizer's
// stream decoder. (The fake vocabulary's only multi-byte character is the 2-byte "\xC3\xA9".)
class FakeDecoder final : public IncrementalDecoder {
 public:
  std::string push(std::int32_t token) override {
    held_ += fake_piece(token);
    std::string out;
    std::size_t i = 0;
    while (i < held_.size()) {
      const auto c = static_cast<unsigned char>(held_[i]);
      if (c < 0x80) {
        out += static_cast<char>(c);
        ++i;
      } else if ((c & 0xE0) == 0xC0) {
        if (i + 1 == held_.size()) break;  // wait for the continuation byte
        if ((static_cast<unsigned char>(held_[i + 1]) & 0xC0) == 0x80) {
          out += held_.substr(i, 2);
          i += 2;
        } else {
          out += kReplacement;
          ++i;
        }
      } else {
        out += kReplacement;  // a stray continuation byte
        ++i;
      }
    }
    held_.erase(0, i);
    return out;
  }
  std::string flush() override {
    const bool incomplete = !held_.empty();
    held_.clear();
    return incomplete ? std::string(kReplacement) : std::string();
  }

 private:
  static constexpr const char* kReplacement = "\xEF\xBF\xBD";
  std::string held_;
};

class FakeCodec final : public TextCodec {
 public:
  std::vector<std::int32_t> encode(const std::string& text, bool add_special) const override {
    std::vector<std::int32_t> out;
    if (add_special) out.push_back(58);  // a BOS-like token
    for (char c : text) {
      if (c >= 'a' && c <= 'z') out.push_back(1 + c - 'a');
      else if (c >= 'A' && c <= 'Z') out.push_back(32 + c - 'A');
      else if (c == '.') out.push_back(28);
      else if (c == '\n') out.push_back(29);
      else out.push_back(27);
    }
    return out;
  }
  std::string apply_chat_template(const std::vector<ChatMessage>& messages) const override {
    std::string out;
    for (const auto& m : messages) out += m.role + "\n" + m.content + "\n";
    return out + "assistant\n";
  }
  std::unique_ptr<IncrementalDecoder> new_decoder() const override { return std::make_unique<FakeDecoder>(); }
  std::vector<std::int32_t> eos_token_ids() const override { return {kFakeEos}; }
  int vocab_size() const override { return kFakeVocab; }
};

// Decoded text of a token list as the engine releases it (EOS excluded).
inline std::string fake_text(const std::vector<std::int32_t>& tokens) {
  FakeDecoder decoder;
  std::string out;
  for (std::int32_t t : tokens) {
    if (t != kFakeEos) out += decoder.push(t);
  }
  return out + decoder.flush();
}

}  // namespace atom::testing
