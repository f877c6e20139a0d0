#include "common/progress.h"

#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>

namespace atom {

Progress::Progress(std::string label, std::int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_) finish();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(std::int64_t done, const std::string& detail) {
  done_ = done;
  if (!detail.empty()) detail_ = detail;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since < (tty_ ? 0.1 : 5.0) && done_ < total_) return;
  last_draw_ = now;
  draw(false);
}

void Progress::finish(const std::string& detail) {
  if (finished_) return;
  finished_ = true;
  if (!detail.empty()) detail_ = detail;
  if (!tty_ && drawn_done_ == done_ && detail.empty()) return;  // that line is already out
  draw(true);
}

void Progress::draw(bool final_line) {
  if (!enabled_) return;
  drawn_done_ = done_;
  const double secs = elapsed_seconds();
  const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  std::string line;
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth + 0.5);
    line = fmt::format("\r{} [{}{}] {}/{} {:.1f}s", label_, std::string(filled, '#'),
                       std::string(kWidth - filled, '.'), done_, total_, secs);
  } else {
    line = fmt::format("{} {}/{} {:.1f}s", label_, done_, total_, secs);
  }
  if (frac > 0 && frac < 1 && !final_line) line += fmt::format(" eta {:.0f}s", secs / frac * (1 - frac));
  if (!detail_.empty()) line += "  " + detail_;
  if (tty_) line += "\x1b[K";
  if (final_line || !tty_) line += "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace atom
