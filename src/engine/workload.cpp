#include "engine/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_file.h"

namespace atom {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Uniform in (0, 1): 53 random bits, never 0.
double uniform_open(std::mt19937_64& rng) { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; }

double standard_normal(std::mt19937_64& rng) {  // Box-Muller, one value per call
  const double u1 = uniform_open(rng), u2 = uniform_open(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

// A log-normal length with the given mean: exp(mu + sigma z), mu = ln(mean) - sigma^2 / 2.
int lognormal_length(std::mt19937_64& rng, double mean, double sigma, int lo, int hi) {
  const double mu = std::log(mean) - 0.5 * sigma * sigma;
  const double x = std::exp(mu + sigma * standard_normal(rng));
  return static_cast<int>(std::clamp(std::llround(x), static_cast<long long>(lo), static_cast<long long>(hi)));
}

std::vector<std::int32_t> random_tokens(std::mt19937_64& rng, int n, int first_token, int vocab_size) {
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(n));
  const auto span = static_cast<std::uint64_t>(vocab_size - first_token);
  for (auto& t : tokens) t = static_cast<std::int32_t>(first_token + rng() % span);
  return tokens;
}

}  // namespace

std::vector<WorkloadRequest> synthetic_workload(const SyntheticWorkload& spec, int vocab_size, int first_token) {
  if (spec.num_requests < 1) fail("workload: number of requests must be at least 1, got {}", spec.num_requests);
  if (first_token < 0 || first_token >= vocab_size) {
    fail("workload: token ids from {} do not fit a vocabulary of {}", first_token, vocab_size);
  }
  if (spec.min_length < 1 || spec.max_prompt_length < spec.min_length || spec.max_output_length < spec.min_length) {
    fail("workload: lengths must satisfy 1 <= min ({}) <= max prompt ({}) and max output ({})", spec.min_length,
         spec.max_prompt_length, spec.max_output_length);
  }
  std::mt19937_64 rng(spec.seed);
  std::vector<WorkloadRequest> requests;
  for (int i = 0; i < spec.num_requests; ++i) {
    const int prompt_length =
        spec.fixed_prompt_length > 0
            ? spec.fixed_prompt_length
            : lognormal_length(rng, spec.prompt_mean, spec.prompt_log_sigma, spec.min_length, spec.max_prompt_length);
    const int output_length =
        spec.fixed_output_length > 0
            ? spec.fixed_output_length
            : lognormal_length(rng, spec.output_mean, spec.output_log_sigma, spec.min_length, spec.max_output_length);
    requests.push_back({random_tokens(rng, prompt_length, first_token, vocab_size), output_length});
  }
  if (spec.shared_prefix_length < 0) {
    fail("workload: shared prefix length must be >= 0, got {}", spec.shared_prefix_length);
  }
  add_shared_prefix(requests, spec.shared_prefix_length, vocab_size, spec.seed, first_token);
  return requests;
}

void add_shared_prefix(std::vector<WorkloadRequest>& requests, int length, int vocab_size, std::uint64_t seed,
                       int first_token) {
  if (length <= 0) return;
  if (first_token < 0 || first_token >= vocab_size) {
    fail("workload: token ids from {} do not fit a vocabulary of {}", first_token, vocab_size);
  }
  std::mt19937_64 rng(seed ^ 0x5eedc0ffee15badull);  // not the prompts' stream
  const std::vector<std::int32_t> prefix = random_tokens(rng, length, first_token, vocab_size);
  for (WorkloadRequest& r : requests) r.prompt.insert(r.prompt.begin(), prefix.begin(), prefix.end());
}

std::vector<WorkloadRequest> load_trace_workload(const std::string& path, const TextCodec& codec, int vocab_size,
                                                 int default_output, std::uint64_t seed, int max_prompt_length,
                                                 int max_output_length) {
  std::ifstream in(path);
  if (!in) fail("cannot open trace '{}'", path);
  std::mt19937_64 rng(seed);
  std::vector<WorkloadRequest> requests;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json entry = parse_json(line, fmt::format("trace '{}' line {}", path, line_number));
    if (!entry.is_object()) fail("trace '{}' line {}: expected an object", path, line_number);
    WorkloadRequest request;
    if (entry.contains("prompt")) {
      if (!entry["prompt"].is_string()) fail("trace '{}' line {}: 'prompt' must be a string", path, line_number);
      request.prompt = codec.encode(entry["prompt"].get<std::string>(), /*add_special=*/true);
    } else if (entry.contains("prompt_length")) {
      if (!entry["prompt_length"].is_number_integer() || entry["prompt_length"].get<std::int64_t>() < 1) {
        fail("trace '{}' line {}: 'prompt_length' must be an integer >= 1", path, line_number);
      }
      request.prompt = random_tokens(rng, entry["prompt_length"].get<int>(), 0, vocab_size);
    } else {
      fail("trace '{}' line {}: needs 'prompt' or 'prompt_length'", path, line_number);
    }
    request.output_length = default_output;
    if (entry.contains("output_length")) {
      if (!entry["output_length"].is_number_integer() || entry["output_length"].get<std::int64_t>() < 1) {
        fail("trace '{}' line {}: 'output_length' must be an integer >= 1", path, line_number);
      }
      request.output_length = entry["output_length"].get<int>();
    }
    if (request.prompt.empty()) fail("trace '{}' line {}: the prompt encodes to no tokens", path, line_number);
    if (max_prompt_length > 0 && static_cast<int>(request.prompt.size()) > max_prompt_length) {
      request.prompt.resize(static_cast<std::size_t>(max_prompt_length));
    }
    if (max_output_length > 0) request.output_length = std::min(request.output_length, max_output_length);
    requests.push_back(std::move(request));
  }
  if (requests.empty()) fail("trace '{}' holds no request", path);
  return requests;
}

}  // namespace atom
