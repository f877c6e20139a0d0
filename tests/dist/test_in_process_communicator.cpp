#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "common/error.h"
#include "dist/in_process_communicator.h"

namespace atom::dist {
namespace {

// Random values of mixed magnitudes: their fp32 sum depends on the order of addition for many elements.
std::vector<float> rank_values(int rank, std::size_t n) {
  std::mt19937 rng(static_cast<unsigned>(rank) * 7919u + 1u);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng) * static_cast<float>(1 + 3 * rank);
  return v;
}

std::vector<float> sum_in_rank_order(int world, std::size_t n) {
  std::vector<float> sum = rank_values(0, n);
  for (int r = 1; r < world; ++r) {
    const auto v = rank_values(r, n);
    for (std::size_t i = 0; i < n; ++i) sum[i] += v[i];
  }
  return sum;
}

TEST(InProcessCommunicator, AllReduceSumsInRankOrderWhateverTheTiming) {
  constexpr std::size_t kN = 1000;
  for (int world : {1, 2, 3, 4}) {
    const std::vector<float> expected = sum_in_rank_order(world, kN);
    // The reverse order gives other bits for these values: the check below tells the orders apart.
    std::vector<float> reversed = rank_values(world - 1, kN);
    for (int r = world - 2; r >= 0; --r) {
      const auto v = rank_values(r, kN);
      for (std::size_t i = 0; i < kN; ++i) reversed[i] += v[i];
    }
    if (world >= 3) {
      EXPECT_NE(0, std::memcmp(expected.data(), reversed.data(), kN * sizeof(float)));
    }

    for (int trial = 0; trial < 5; ++trial) {
      InProcessGroup group(world);
      std::vector<std::vector<float>> results(static_cast<std::size_t>(world));
      run_ranks(group, [&](Communicator& comm) {
        EXPECT_EQ(comm.world_size(), world);
        // Ranks arrive in a different order each trial.
        std::this_thread::sleep_for(std::chrono::microseconds(((comm.rank() + trial) % world) * 300));
        std::vector<float> data = rank_values(comm.rank(), kN);
        comm.all_reduce_sum(data);
        results[static_cast<std::size_t>(comm.rank())] = std::move(data);
      });
      for (int r = 0; r < world; ++r)
        EXPECT_EQ(0, std::memcmp(results[static_cast<std::size_t>(r)].data(), expected.data(), kN * sizeof(float)))
            << "world " << world << " rank " << r << " trial " << trial;
    }
  }
}

TEST(InProcessCommunicator, AllGatherPlacesBlocksInRankOrder) {
  constexpr int kWorld = 3;
  InProcessGroup group(kWorld);
  std::vector<std::vector<float>> results(kWorld);
  run_ranks(group, [&](Communicator& comm) {
    for (int step = 0; step < 20; ++step) {  // back-to-back collectives reuse the group's slots
      const float base = static_cast<float>(comm.rank() * 100 + step);
      std::vector<float> in = {base, base + 0.5f};
      std::vector<float> out(kWorld * in.size());
      comm.all_gather(in, out);
      in.assign(in.size(), -1.0f);  // the others have copied it: overwriting must not reach them
      for (int r = 0; r < kWorld; ++r) {
        ASSERT_EQ(out[static_cast<std::size_t>(2 * r)], static_cast<float>(r * 100 + step));
        ASSERT_EQ(out[static_cast<std::size_t>(2 * r + 1)], static_cast<float>(r * 100 + step) + 0.5f);
      }
      std::vector<float> s = {1.0f};
      comm.all_reduce_sum(s);
      ASSERT_EQ(s[0], static_cast<float>(kWorld));
    }
  });
}

TEST(InProcessCommunicator, MismatchedCountsFailOnEveryRankNamingTheCounts) {
  InProcessGroup group(2);
  try {
    run_ranks(group, [&](Communicator& comm) {
      std::vector<float> data(comm.rank() == 0 ? 4 : 5, 1.0f);
      comm.all_reduce_sum(data);
    });
    FAIL() << "mismatched counts were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 passed 5 elements but rank 0 passed 4"), std::string::npos)
        << e.what();
  }
}

TEST(InProcessCommunicator, AllGatherRefusesAWrongOutputSize) {
  // Rank 1 aborts the group before its error reaches run_ranks, and rank 0 may record its GroupAborted first:
  // the report must still be rank 1's error, whichever thread gets there first (many trials).
  for (int trial = 0; trial < 50; ++trial) {
    InProcessGroup group(2);
    try {
      run_ranks(group, [&](Communicator& comm) {
        std::vector<float> in(3, 1.0f), out(comm.rank() == 1 ? 5 : 6);
        comm.all_gather(in, out);
      });
      FAIL() << "a wrong output size was accepted";
    } catch (const Error& e) {
      ASSERT_NE(std::string(e.what()).find("rank 1 passed 5 output elements"), std::string::npos)
          << "trial " << trial << ": " << e.what();
    }
  }
}

TEST(InProcessCommunicator, ARankThatThrowsReleasesTheOthersAndItsErrorIsReported) {
  InProcessGroup group(3);
  try {
    run_ranks(group, [&](Communicator& comm) {
      if (comm.rank() == 2) throw Error("rank 2 broke");
      std::vector<float> data(8, 1.0f);
      comm.all_reduce_sum(data);  // would wait forever for rank 2 without the abort
    });
    FAIL() << "the error was lost";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "rank 2 broke");
  }
  std::vector<float> data(1);
  EXPECT_THROW(group.communicator(0).all_reduce_sum(data), Error);  // an aborted group stays aborted
}

TEST(InProcessCommunicator, RefusesBadSizesAndRanks) {
  EXPECT_THROW(InProcessGroup(0), Error);
  InProcessGroup group(2);
  EXPECT_THROW(group.communicator(2), Error);
  EXPECT_THROW(group.communicator(-1), Error);
}

}  // namespace
}  // namespace atom::dist
