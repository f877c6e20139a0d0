#include "engine/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "common/error.h"

namespace atom {
namespace {

void atomic_add(std::atomic<double>& target, double amount) { target.fetch_add(amount, std::memory_order_relaxed); }

std::string escape_label_value(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string render_labels(const MetricLabels& labels) {
  std::string out;
  for (const auto& [key, value] : labels) {
    if (!out.empty()) out += ',';
    out += fmt::format("{}=\"{}\"", key, escape_label_value(value));
  }
  return out;
}

// Prometheus float text: integers without a fraction, others with enough digits to round-trip.
std::string number(double v) {
  if (v == static_cast<double>(static_cast<std::int64_t>(v)) && std::abs(v) < 1e15) {
    return fmt::format("{}", static_cast<std::int64_t>(v));
  }
  return fmt::format("{}", v);
}

std::string braces(const std::string& labels, const std::string& extra = "") {
  std::string inner = labels;
  if (!extra.empty()) inner = inner.empty() ? extra : inner + "," + extra;
  return inner.empty() ? "" : "{" + inner + "}";
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds) : upper_bounds_(std::move(upper_bounds)) {
  for (std::size_t i = 1; i < upper_bounds_.size(); ++i) {
    if (!(upper_bounds_[i] > upper_bounds_[i - 1])) fail("histogram bounds must increase (bound {})", i);
  }
  buckets_ = std::make_unique<std::atomic<std::uint64_t>[]>(upper_bounds_.size() + 1);
  for (std::size_t i = 0; i <= upper_bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::observe(double value) {
  const auto it = std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value);  // le semantics
  buckets_[it - upper_bounds_.begin()].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, value);
  count_.fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds = upper_bounds_;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= upper_bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  s.count = running;  // consistent with the buckets even while observations race
  return s;
}

MetricsRegistry::Series& MetricsRegistry::series(const std::string& name, const std::string& help, Kind kind,
                                                 const MetricLabels& labels) {
  std::lock_guard lock(mutex_);
  Family* family = nullptr;
  for (auto& f : families_) {
    if (f->name == name) family = f.get();
  }
  if (!family) {
    families_.push_back(std::make_unique<Family>(Family{name, help, kind, {}}));
    family = families_.back().get();
  }
  if (family->kind != kind) fail("metric {} registered twice with different types", name);
  const std::string rendered = render_labels(labels);
  for (auto& s : family->series) {
    if (s->labels == rendered) return *s;
  }
  family->series.push_back(std::make_unique<Series>());
  family->series.back()->labels = rendered;
  return *family->series.back();
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help, const MetricLabels& labels) {
  Series& s = series(name, help, Kind::counter, labels);
  std::lock_guard lock(mutex_);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help, const MetricLabels& labels) {
  Series& s = series(name, help, Kind::gauge, labels);
  std::lock_guard lock(mutex_);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      std::vector<double> upper_bounds, const MetricLabels& labels) {
  Series& s = series(name, help, Kind::histogram, labels);
  std::lock_guard lock(mutex_);
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  return *s.histogram;
}

std::string MetricsRegistry::render_prometheus() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& family : families_) {
    const char* type = family->kind == Kind::counter ? "counter" : family->kind == Kind::gauge ? "gauge" : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", family->name, family->help, family->name, type);
    for (const auto& s : family->series) {
      if (s->counter) out += fmt::format("{}{} {}\n", family->name, braces(s->labels), number(s->counter->value()));
      if (s->gauge) out += fmt::format("{}{} {}\n", family->name, braces(s->labels), number(s->gauge->value()));
      if (s->histogram) {
        const Histogram::Snapshot snap = s->histogram->snapshot();
        for (std::size_t i = 0; i < snap.upper_bounds.size(); ++i) {
          out += fmt::format("{}_bucket{} {}\n", family->name,
                             braces(s->labels, fmt::format("le=\"{}\"", number(snap.upper_bounds[i]))),
                             snap.cumulative[i]);
        }
        out += fmt::format("{}_bucket{} {}\n", family->name, braces(s->labels, "le=\"+Inf\""), snap.count);
        out += fmt::format("{}_sum{} {}\n", family->name, braces(s->labels), number(snap.sum));
        out += fmt::format("{}_count{} {}\n", family->name, braces(s->labels), snap.count);
      }
    }
  }
  return out;
}

std::vector<double> latency_buckets_seconds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
          0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

}  // namespace atom
