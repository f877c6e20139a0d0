#pragma once
// Orthogonal Hadamard transforms of any size the constructions here reach (the rotations of QuaRot /
// SpinQuant-style quantization, src/quant/rotation.h).
//
// A size n = K * P with P a power of two is transformed as the Kronecker product H_K (x) W_P, normalized:
//   M = (H_K (x) W_P) D / sqrt(n),   y = M x,   y[a*P + b] = sum_{a', b'} H_K[a][a'] W_P[b][b'] d[a'P+b']
//   x[a'P+b'],
// W_P the Sylvester Walsh-Hadamard matrix in natural order (W_P[b][b'] = (-1)^popcount(b & b')), computed by
// the fast butterfly, and H_K a dense +-1 Hadamard matrix of order K (K = 1 for powers of two). D = diag(d)
// is a random sign diagonal (d_i = +-1 from a seed, the "randomized" Hadamard) or the identity. M is
// orthogonal: M^T M = I; the inverse is M^T.
//
// H_K comes from Paley's constructions over a finite field GF(q), q = p^e (e <= 3), generated in code:
//  - Paley I, q = 3 mod 4, K = q + 1: H = I + S, S = [[0, 1^T], [-1, Q]], Q[i][j] = chi(a_i - a_j);
//  - Paley II, q = 1 mod 4, K = 2(q + 1): C = [[0, 1^T], [1, Q]], H = C (x) [[1, 1], [1, -1]] + I (x) [[1,
//  -1],
//    [-1, -1]];
// chi the quadratic character of GF(q) and a_0 .. a_{q-1} its elements in the order of their base-p digit
// encoding (element i = sum_t digit_t(i) x^t modulo the first monic irreducible polynomial of degree e in
// that encoding order). For n = o * 2^m (o odd) the smallest K = o * 2^j (j <= m, K = 0 mod 4) that Paley I
// or II reaches is used: 576 = 36 x 16 (Paley II, q = 17), 1536 = 12 x 128 (Paley I, q = 11), 11008 = 344 x
// 32 (Paley I, q = 7^3), 14336 = 28 x 512 (Paley I, q = 27), 96 = 12 x 8, 24 = 12 x 2; powers of two use W_n
// alone. Every matrix is checked to satisfy H H^T = K I when built.
#include <cstdint>
#include <vector>

namespace atom::quant {

// The K of the decomposition n = K * P above (1 for powers of two); 0 when no construction here reaches n.
std::int64_t hadamard_base_size(std::int64_t n);
bool has_hadamard(std::int64_t n);

// The +-1 Hadamard matrix of order K (row-major K x K) from Paley I or II (K = 1, 2: Sylvester). Throws
// atom::Error naming K when neither construction reaches it.
std::vector<std::int8_t> paley_hadamard(std::int64_t k);

// Signs d_0 .. d_{n-1} of the randomized transform from `seed`: splitmix64 (state = seed; each step
// state += 0x9E3779B97F4A7C15, then the standard mix), d_i = -1 when the top bit of step i's output is set.
std::vector<std::int8_t> random_signs(std::int64_t n, std::uint64_t seed);

class HadamardTransform {
 public:
  // Throws atom::Error naming n when no construction reaches it. randomized: D from random_signs(n, seed).
  explicit HadamardTransform(std::int64_t n, bool randomized = false, std::uint64_t seed = 0);

  std::int64_t size() const { return n_; }
  std::int64_t base_size() const { return k_; }  // K
  bool randomized() const { return !signs_.empty(); }
  const std::vector<std::int8_t>& base_matrix() const { return base_; }  // H_K, row-major K x K
  const std::vector<std::int8_t>& signs() const { return signs_; }       // d_i; empty: D = I

  // x <- M x for `count` contiguous vectors of size() values (fp32 arithmetic; the online transforms).
  void apply(float* x, std::int64_t count) const;
  // The same in fp64 (offline folding into weights).
  void apply(double* x, std::int64_t count) const;
  // x <- M^T x (the inverse).
  void apply_transpose(double* x, std::int64_t count) const;
  // M as a dense row-major n x n matrix (tests).
  std::vector<double> matrix() const;

 private:
  template <typename T>
  void apply_one(T* x, bool transpose) const;

  std::int64_t n_, k_, p_;
  std::vector<std::int8_t> base_;   // H_K, K x K
  std::vector<std::int8_t> signs_;  // empty: D = I
};

}  // namespace atom::quant
