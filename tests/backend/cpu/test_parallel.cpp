// How ops split work (parallel.h): the region-cost model, parallel_for with and without a forward team, and
// a whole forward on a team giving the bits of one thread.
#include <gtest/gtest.h>
#include <omp.h>

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include "backend/cpu/int8_linear.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/quant_kv_cache.h"
#include "backend/cpu/quant_linear.h"
#include "common/error.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

// Restores the thread count and the cost settings after each test.
class Parallel : public ::testing::Test {
 protected:
  void TearDown() override {
    omp_set_num_threads(threads_before_);
    set_parallel_region_cost_us(-1.0);
    set_team_hand_out_cost_us(1.0);
  }
  const int threads_before_ = omp_get_max_threads();
};

TEST_F(Parallel, RegionCostIsMeasuredOnceAndDecidesBySavedTime) {
  omp_set_num_threads(2);
  set_parallel_region_cost_us(-1.0);
  const double measured = parallel_region_cost_us();
  EXPECT_GT(measured, 0.0);     // a fork and a join take some time
  EXPECT_LT(measured, 1.0e5);   // and not 0.1 s
  EXPECT_EQ(parallel_region_cost_us(), measured);  // kept
  set_parallel_region_cost_us(10.0);
  // Two threads save half the serial time; worth it above twice the cost.
  EXPECT_FALSE(worth_parallel(40.0));
  EXPECT_TRUE(worth_parallel(41.0));
  bool inside = true;
#pragma omp parallel num_threads(2)
  {
#pragma omp master
    inside = worth_parallel(1e9);  // never nested
  }
  EXPECT_FALSE(inside);
  omp_set_num_threads(1);
  EXPECT_FALSE(worth_parallel(1e9));  // one thread: nothing to split over
}

// Every index exactly once, split over the threads when worth it, on a team or in OpenMP regions.
void expect_covers_once(std::int64_t n, double serial_us, Schedule schedule, std::size_t min_threads_used,
                        const std::string& what) {
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
  std::mutex mutex;
  std::set<std::thread::id> threads_used;
  parallel_for(n, serial_us, schedule, [&](std::int64_t begin, std::int64_t end) {
    ASSERT_LE(0, begin);
    ASSERT_LT(begin, end);
    ASSERT_LE(end, n);
    // Dynamic: one index at a time when split; unsplit, the whole range on the calling thread.
    if (schedule == Schedule::kDynamic) ASSERT_TRUE(end == begin + 1 || (begin == 0 && end == n)) << begin << " " << end;
    for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
    const std::lock_guard<std::mutex> lock(mutex);
    threads_used.insert(std::this_thread::get_id());
  });
  for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << what << " index " << i;
  EXPECT_GE(threads_used.size(), min_threads_used) << what;
}

TEST_F(Parallel, ParallelForCoversEveryIndexOnceWithAndWithoutATeam) {
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    for (Schedule schedule : {Schedule::kStatic, Schedule::kDynamic}) {
      for (std::int64_t n : {0, 1, 2, 3, 17, 1000}) {
        const std::string what = std::to_string(threads) + " threads, n " + std::to_string(n) +
                                 (schedule == Schedule::kStatic ? " static" : " dynamic");
        set_parallel_region_cost_us(0.0);  // OpenMP regions whenever there is more than one thread
        // Static chunks: every thread gets one when n >= threads.
        const std::size_t all = schedule == Schedule::kStatic && n >= threads ? std::size_t(threads) : 1;
        expect_covers_once(n, 1e6, schedule, n == 0 ? 0 : all, what + ", regions");
        expect_covers_once(n, 0.0, schedule, n == 0 ? 0 : 1, what + ", serial");
        set_team_hand_out_cost_us(0.0);
        // On a team any thread may take any unit (the leader all of them when the others are late).
        run_with_forward_team([&] {
          EXPECT_EQ(forward_team_active(), threads > 1);
          expect_covers_once(n, 1e6, schedule, n == 0 ? 0 : 1, what + ", team");
          expect_covers_once(n, 0.0, schedule, n == 0 ? 0 : 1, what + ", team, serial");
          run_with_forward_team([&] { expect_covers_once(n, 1e6, schedule, n == 0 ? 0 : 1, what + ", nested"); });
        });
        EXPECT_FALSE(forward_team_active());
      }
    }
  }
}

// The team's other threads do take work: each unit waits (up to 5 s) until a unit has run on another thread.
TEST_F(Parallel, ATeamsOtherThreadsTakeUnits) {
  for (Schedule schedule : {Schedule::kStatic, Schedule::kDynamic}) {
    omp_set_num_threads(2);
    set_team_hand_out_cost_us(0.0);
    std::mutex mutex;
    std::set<std::thread::id> seen;
    std::atomic<bool> two_threads{false};
    run_with_forward_team([&] {
      parallel_for(2, 1e6, schedule, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) {
          {
            const std::lock_guard<std::mutex> lock(mutex);
            seen.insert(std::this_thread::get_id());
            if (seen.size() >= 2) two_threads = true;
          }
          const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
          while (!two_threads && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
        }
      });
    });
    EXPECT_TRUE(two_threads) << (schedule == Schedule::kStatic ? "static" : "dynamic");
  }
}

// Thousands of small jobs back to back on an oversubscribed team (4 threads on however few cores): a worker
// that wakes late must never run a unit of a job it did not see opened (its body may be gone), nor a unit
// twice. Each job's indices run exactly once, and no other job's body runs them.
TEST_F(Parallel, BackToBackJobsOnAnOversubscribedTeamRunEachIndexOnce) {
  omp_set_num_threads(4);
  set_team_hand_out_cost_us(0.0);
  std::mt19937 rng(5);
  int bad = 0;
  run_with_forward_team([&] {
    ASSERT_TRUE(forward_team_active());
    for (int job = 0; job < 20000 && bad == 0; ++job) {
      const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 9);
      const Schedule schedule = rng() % 2 ? Schedule::kStatic : Schedule::kDynamic;
      std::array<std::atomic<int>, 9> hits{};
      std::atomic<int> wrong_job{0};
      const int this_job = job;
      parallel_for(n, 1e6, schedule, [&hits, &wrong_job, this_job, job_ref = &job](std::int64_t begin, std::int64_t end) {
        if (*job_ref != this_job) wrong_job.fetch_add(1);
        for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
      });
      for (std::int64_t i = 0; i < 9; ++i) bad += hits[static_cast<std::size_t>(i)].load() != (i < n ? 1 : 0);
      bad += wrong_job.load();
      if (bad > 0) ADD_FAILURE() << "job " << job << " (n " << n << ")";
    }
  });
  EXPECT_EQ(bad, 0);
}

TEST_F(Parallel, ATeamPassesExceptionsOnAndEnds) {
  omp_set_num_threads(2);
  set_team_hand_out_cost_us(0.0);
  for (int i = 0; i < 3; ++i) {
    EXPECT_THROW(run_with_forward_team([] {
                   parallel_for(10, 1e6, Schedule::kStatic, [](std::int64_t, std::int64_t) {});
                   fail("planted error {}", 1);
                 }),
                 Error);
    EXPECT_FALSE(forward_team_active());
  }
  // Thrown inside units (any thread's): the job's other units end first, then the leader rethrows it.
  for (Schedule schedule : {Schedule::kStatic, Schedule::kDynamic}) {
    std::atomic<int> units_run{0};
    EXPECT_THROW(run_with_forward_team([&] {
                   parallel_for(8, 1e6, schedule, [&](std::int64_t begin, std::int64_t) {
                     units_run.fetch_add(1);
                     if (begin == 0) fail("planted error in a unit");
                   });
                 }),
                 Error);
    EXPECT_EQ(units_run.load(), schedule == Schedule::kStatic ? 2 : 8);
  }
  int ran = 0;
  run_with_forward_team([&] {
    ++ran;
    std::atomic<int> sum{0};
    parallel_for(100, 1e6, Schedule::kDynamic, [&](std::int64_t begin, std::int64_t) { sum += int(begin); });
    EXPECT_EQ(sum.load(), 4950);  // the team still works
  });
  EXPECT_EQ(ran, 1);
}

// A small model on the integer path (Atom W4 + INT8 outlier linears, int8 lm_head, UINT4 KV cache): its
// decode steps run on a forward team with 2 or 3 threads and give the bits of one thread, every op split.
TEST_F(Parallel, AForwardOnATeamGivesTheBitsOfOneThread) {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 700;
  c.hidden_size = 160;  // 128 in INT4 groups + 32 INT8 outlier channels
  c.intermediate_size = 288;
  c.num_layers = 2;
  c.num_heads = 10;  // 5 query heads per KV head: a group of 4 and one of 1 in the attention kernel
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  LlamaWeights weights = test::random_llama_weights(c, 91);
  const LlamaWeights dense = weights;
  LlamaModel model(std::move(weights));
  auto atom = [](const std::vector<float>& w, std::int64_t n, std::int64_t k) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
    std::iota(perm.begin(), perm.end(), 0);
    return std::make_unique<AtomLinear>(quant::quantize_weights_rtn(w, n, perm, 32, 128, quant::NumberFormat::kInt4, 0.9f),
                                        0.9f, "test");
  };
  const std::int64_t h = c.hidden_size, q_dim = 160, kv_dim = 32, inter = c.intermediate_size;
  for (int li = 0; li < c.num_layers; ++li) {
    const LayerWeights& w = dense.layers[static_cast<std::size_t>(li)];
    DecoderLayer& l = model.layer(li);
    l.q_proj = atom(w.q_proj, q_dim, h);
    l.k_proj = atom(w.k_proj, kv_dim, h);
    l.v_proj = atom(w.v_proj, kv_dim, h);
    l.o_proj = atom(w.o_proj, h, q_dim);
    l.gate_proj = atom(w.gate_proj, inter, h);
    l.up_proj = atom(w.up_proj, inter, h);
    l.down_proj = atom(w.down_proj, h, inter);
  }
  model.set_lm_head(std::make_unique<Int8Linear>(dense.embed_tokens, c.vocab_size, h));
  model.set_kv_store_factory(make_u4_kv_row_store);
  bool team_seen = false;
  model.set_linear_observer([&](int, std::string_view, const float*, std::int64_t, std::int64_t) {
    team_seen = team_seen || forward_team_active();
  });
  std::mt19937_64 rng(92);
  std::vector<std::int32_t> prompt(20);
  for (auto& t : prompt) t = static_cast<std::int32_t>(rng() % c.vocab_size);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    set_team_hand_out_cost_us(0.0);   // every op split on the team
    set_parallel_region_cost_us(0.0);  // and in regions where no team runs
    KvCache cache = model.new_cache();
    std::vector<float> all = model.forward(prompt, cache);
    for (int s = 0; s < 6; ++s) {
      const std::int32_t next = static_cast<std::int32_t>((s * 37 + 5) % c.vocab_size);
      const auto logits = model.forward(std::span<const std::int32_t>(&next, 1), cache);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };
  const auto one = run(1);
  EXPECT_FALSE(team_seen);
  for (int threads : {2, 3}) {
    team_seen = false;
    const auto many = run(threads);
    EXPECT_TRUE(team_seen) << threads << " threads";
    ASSERT_EQ(many.size(), one.size());
    int differ = 0;
    for (std::size_t i = 0; i < one.size(); ++i) differ += std::bit_cast<std::uint32_t>(one[i]) != std::bit_cast<std::uint32_t>(many[i]);
    EXPECT_EQ(differ, 0) << threads << " threads";
  }
}

}  // namespace
}  // namespace atom::cpu
