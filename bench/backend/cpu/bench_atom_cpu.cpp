// CPU throughput of the quantized linears (backend/cpu/quant_linear.h) against OpenBLAS sgemm.
// Usage: bench_atom_cpu [M ...]   (default M = 1 16 256); shapes N = K = 4096 and SmolLM2's 1536 x 576.
// GOPS counts 2*M*N*K operations per forward (activation quantization included for the Atom/W8A8 ops).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include <omp.h>

#include "backend/cpu/linear.h"
#include "backend/cpu/quant_linear.h"

using namespace atom;
using namespace atom::cpu;

namespace {

double seconds_per_call(const LinearOp& op, const std::vector<float>& x, std::int64_t m, std::vector<float>& y) {
  op.forward(x.data(), m, y.data());  // warm-up
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    op.forward(x.data(), m, y.data());
    ++calls;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < 0.5);
  return elapsed / calls;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::int64_t> ms = {1, 16, 256};
  if (argc > 1) {
    ms.clear();
    for (int i = 1; i < argc; ++i) ms.push_back(std::atoll(argv[i]));
  }
  std::printf("threads %d\n", omp_get_max_threads());
  const std::pair<std::int64_t, std::int64_t> shapes[] = {{4096, 4096}, {1536, 576}};
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto [n, k] : shapes) {
    std::vector<float> w(static_cast<std::size_t>(n * k));
    for (auto& v : w) v = 0.02f * dist(rng);
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k)), identity(perm.size());
    std::iota(identity.begin(), identity.end(), 0);
    perm = identity;
    std::shuffle(perm.begin(), perm.end(), rng);
    const std::int64_t n_out = k >= 4096 ? 128 : 64;
    std::vector<std::pair<const char*, std::unique_ptr<LinearOp>>> ops;
    ops.emplace_back("fp32 sgemm", std::make_unique<DenseLinear>(std::make_shared<const std::vector<float>>(w), n, k));
    ops.emplace_back("atom w4a4 g128+int8 outl",
                     std::make_unique<AtomLinear>(quant::quantize_weights_rtn(w, n, perm, n_out, 128,
                                                                              quant::NumberFormat::kInt4, 0.85f),
                                                  0.9f, "atom"));
    ops.emplace_back("atom fp4 g128+int8 outl",
                     std::make_unique<AtomLinear>(quant::quantize_weights_rtn(w, n, perm, n_out, 128,
                                                                              quant::NumberFormat::kFp4, 0.85f),
                                                  0.9f, "atom-fp4"));
    ops.emplace_back("w8a8 per-channel", std::make_unique<AtomLinear>(
                                             quant::quantize_weights_rtn(w, n, identity, 0, k,
                                                                         quant::NumberFormat::kInt8, 1.0f),
                                             1.0f, "w8a8"));
    const std::int64_t wo_group = k % 128 == 0 ? 128 : 64;  // SmolLM2's 576 = 9 x 64
    ops.emplace_back("w4a16", std::make_unique<WeightOnlyLinear>(
                                       quant::quantize_weights_rtn(w, n, identity, 0, wo_group,
                                                                   quant::NumberFormat::kInt4, 1.0f),
                                       "w4a16"));
    for (std::int64_t m : ms) {
      std::vector<float> x(static_cast<std::size_t>(m * k)), y(static_cast<std::size_t>(m * n));
      for (auto& v : x) v = dist(rng);
      for (const auto& [name, op] : ops) {
        const double t = seconds_per_call(*op, x, m, y);
        std::printf("N=%5lld K=%5lld M=%4lld  %-26s %9.3f ms  %8.2f GOPS\n", (long long)n, (long long)k, (long long)m,
                    name, t * 1e3, 2.0 * m * n * k / t * 1e-9);
      }
    }
  }
  return 0;
}
