#pragma once
// A progress bar on stderr for long work (calibration, GPTQ, evaluation, benchmarks).
// Redraws at most ~10 times a second; prints a plain line per update when stderr is not a terminal.
#include <chrono>
#include <cstdint>
#include <string>

namespace atom {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, bool enabled = true);
  ~Progress();
  void update(std::int64_t done, const std::string& detail = "");
  void advance(std::int64_t n = 1, const std::string& detail = "") { update(done_ + n, detail); }
  void finish(const std::string& detail = "");
  double elapsed_seconds() const;

 private:
  void draw(bool final_line);
  std::string label_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  std::int64_t drawn_done_ = -1;  // done_ at the last draw (non-terminals print each state once)
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  std::string detail_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace atom
