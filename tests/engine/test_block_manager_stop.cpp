#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "common/error.h"
#include "engine/block_manager.h"
#include "engine/metrics.h"
#include "engine/stop_strings.h"

namespace atom {
namespace {

TEST(BlockManager, GrowsTablesAndReturnsBlocks) {
  BlockManager blocks(8, 16);
  EXPECT_EQ(blocks.blocks_for(0), 0);
  EXPECT_EQ(blocks.blocks_for(1), 1);
  EXPECT_EQ(blocks.blocks_for(16), 1);
  EXPECT_EQ(blocks.blocks_for(17), 2);
  std::vector<std::int32_t> a, b;
  ASSERT_TRUE(blocks.grow(a, 17));  // 2 blocks
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(blocks.grow(a, 32));  // still 2
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(blocks.grow(b, 16 * 6));  // the other 6
  EXPECT_EQ(blocks.num_free(), 0);
  std::set<std::int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 8u) << "a block handed out twice";
  // Not enough: the table stays as it was.
  EXPECT_FALSE(blocks.grow(a, 33));
  EXPECT_EQ(a.size(), 2u);
  blocks.release(b);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(blocks.num_free(), 6);
  ASSERT_TRUE(blocks.grow(a, 33));
  EXPECT_EQ(blocks.num_used(), 3);
}

TEST(BlockManager, RandomWorkloadNeverLeaksOrDoubleAllocates) {
  BlockManager blocks(64, 16);
  std::mt19937 rng(7);
  std::vector<std::vector<std::int32_t>> tables(10);
  std::vector<std::int64_t> lengths(10, 0);
  for (int it = 0; it < 2000; ++it) {
    const int i = static_cast<int>(rng() % tables.size());
    if (rng() % 5 == 0) {
      blocks.release(tables[i]);
      lengths[i] = 0;
    } else {
      const std::int64_t want = lengths[i] + 1 + rng() % 40;
      if (blocks.grow(tables[i], want)) lengths[i] = want;
    }
    std::set<std::int32_t> owned;
    int count = 0;
    for (std::size_t t = 0; t < tables.size(); ++t) {
      EXPECT_EQ(static_cast<int>(tables[t].size()), blocks.blocks_for(lengths[t]));
      for (std::int32_t b : tables[t]) owned.insert(b), ++count;
    }
    ASSERT_EQ(static_cast<int>(owned.size()), count);
    ASSERT_EQ(blocks.num_used(), count);
  }
}

TEST(BlockManager, RejectsBadGeometry) {
  EXPECT_THROW(BlockManager(0, 16), Error);
  EXPECT_THROW(BlockManager(4, 0), Error);
}

// Feeds pieces one at a time and returns what was released.
std::string run_filter(StopStringFilter& filter, const std::vector<std::string>& pieces, std::vector<std::string>* steps = nullptr) {
  std::string out;
  for (const auto& piece : pieces) {
    const std::string released = filter.append(piece);
    if (steps) steps->push_back(released);
    out += released;
  }
  return out;
}

TEST(StopStrings, HoldsBackAPossibleStartAndReleasesItWhenItDiverges) {
  StopStringFilter filter({"STOP"});
  std::vector<std::string> steps;
  const std::string out = run_filter(filter, {"ab", "cS", "T", "x", "yz"}, &steps);
  EXPECT_EQ(steps, (std::vector<std::string>{"ab", "c", "", "STx", "yz"}));
  EXPECT_EQ(out, "abcSTxyz");
  EXPECT_FALSE(filter.stopped());
  EXPECT_EQ(filter.flush(), "");
}

TEST(StopStrings, StopsAtTheEarliestMatchAcrossPiecesAndDropsTheRest) {
  StopStringFilter filter({"world", "lo w"});
  const std::string out = run_filter(filter, {"hel", "lo", " wor", "ld and more"});
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(filter.matched(), "lo w");
  EXPECT_EQ(out, "hel");
  EXPECT_EQ(filter.append("later"), "");
  EXPECT_EQ(filter.flush(), "");
}

TEST(StopStrings, FlushReleasesTheHeldTailWhenGenerationEndsOtherwise) {
  StopStringFilter filter({"</s>", "\n\n"});
  EXPECT_EQ(filter.append("answer</"), "answer");
  EXPECT_EQ(filter.append("\n"), "</");  // "</\n": the "</" prefix diverged, "\n" may start "\n\n"
  EXPECT_EQ(filter.flush(), "\n");
}

TEST(StopStrings, MatchInsideOnePieceAndEmptyStopsIgnored) {
  StopStringFilter filter({"", "cd"});
  EXPECT_EQ(filter.append("abcdef"), "ab");
  EXPECT_TRUE(filter.stopped());
  StopStringFilter none({});
  EXPECT_EQ(none.append("anything"), "anything");
}

TEST(StopStrings, RandomTextMatchesAPlainSearchOfTheWholeText) {
  // Reference: the output is the text up to the first occurrence of any stop string.
  std::mt19937 rng(11);
  const std::string alphabet = "ab";
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<std::string> stops;
    for (int s = 0; s < 1 + int(rng() % 3); ++s) {
      std::string stop;
      for (int c = 0; c < 1 + int(rng() % 4); ++c) stop += alphabet[rng() % 2];
      stops.push_back(stop);
    }
    std::string text;
    std::vector<std::string> pieces;
    for (int p = 0; p < 8; ++p) {
      std::string piece;
      for (int c = 0; c < int(rng() % 3); ++c) piece += alphabet[rng() % 2];
      pieces.push_back(piece);
      text += piece;
    }
    std::size_t first = std::string::npos;
    for (const auto& s : stops) first = std::min(first, text.find(s));
    StopStringFilter filter(stops);
    std::string out = run_filter(filter, pieces);
    if (!filter.stopped()) out += filter.flush();
    ASSERT_EQ(filter.stopped(), first != std::string::npos) << text;
    ASSERT_EQ(out, text.substr(0, first)) << text;
  }
}

TEST(Metrics, RendersPrometheusText) {
  MetricsRegistry registry;
  registry.counter("x_total", "Things", {{"kind", "a"}}).inc(3);
  registry.counter("x_total", "Things", {{"kind", "b\"q"}}).inc();
  registry.gauge("y", "Level").set(2.5);
  Histogram& h = registry.histogram("z_seconds", "Latency", {0.1, 1.0});
  h.observe(0.05);
  h.observe(0.1);
  h.observe(3.0);
  const std::string text = registry.render_prometheus();
  EXPECT_NE(text.find("# HELP x_total Things\n# TYPE x_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_total{kind=\"a\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_total{kind=\"b\\\"q\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE y gauge\ny 2.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("z_seconds_bucket{le=\"0.1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("z_seconds_bucket{le=\"1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("z_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos) << text;
  const std::size_t sum_at = text.find("z_seconds_sum ");
  ASSERT_NE(sum_at, std::string::npos) << text;
  EXPECT_NEAR(std::stod(text.substr(sum_at + 14)), 3.15, 1e-12);
  EXPECT_NE(text.find("z_seconds_count 3\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("# HELP x_total", text.find("# HELP x_total") + 1), std::string::npos) << "family repeated";
  EXPECT_THROW(registry.gauge("x_total", "Things"), Error);
}

}  // namespace
}  // namespace atom
