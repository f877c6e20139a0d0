#include "backend/cpu/hadamard.h"

#include <cmath>

#include "common/error.h"

namespace atom::quant {

namespace {

bool is_power_of_two(std::int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// GF(q), q = p^e (e <= 3), elements encoded as integers whose base-p digits are polynomial coefficients.
class FiniteField {
 public:
  FiniteField(std::int64_t p, int e) : p_(p), e_(e) {
    q_ = 1;
    for (int i = 0; i < e; ++i) q_ *= p;
    // The first monic polynomial of degree e (lower coefficients in encoding order) without a root in GF(p):
    // irreducible, since e <= 3.
    for (std::int64_t low = 0; low < q_; ++low) {
      std::vector<std::int64_t> f = digits(low);
      f.push_back(1);
      bool root = false;
      for (std::int64_t x = 0; x < p_ && !root; ++x) {
        std::int64_t v = 0;
        for (int t = e_; t >= 0; --t) v = (v * x + f[static_cast<std::size_t>(t)]) % p_;
        root = v == 0;
      }
      if (!root || e_ == 1) {
        modulus_ = f;
        break;
      }
    }
    squares_.assign(static_cast<std::size_t>(q_), false);
    for (std::int64_t x = 1; x < q_; ++x) squares_[static_cast<std::size_t>(mul(x, x))] = true;
  }
  std::int64_t size() const { return q_; }
  std::int64_t sub(std::int64_t a, std::int64_t b) const {
    const std::vector<std::int64_t> da = digits(a), db = digits(b);
    std::vector<std::int64_t> r(da.size());
    for (std::size_t t = 0; t < r.size(); ++t) r[t] = ((da[t] - db[t]) % p_ + p_) % p_;
    return encode(r);
  }
  std::int64_t mul(std::int64_t a, std::int64_t b) const {
    const std::vector<std::int64_t> da = digits(a), db = digits(b);
    std::vector<std::int64_t> prod(static_cast<std::size_t>(2 * e_ - 1), 0);
    for (int i = 0; i < e_; ++i) {
      for (int j = 0; j < e_; ++j) prod[static_cast<std::size_t>(i + j)] += da[i] * db[j];
    }
    for (int d = 2 * e_ - 2; d >= e_; --d) {  // reduce by the monic modulus
      const std::int64_t c = prod[static_cast<std::size_t>(d)] % p_;
      prod[static_cast<std::size_t>(d)] = 0;
      for (int t = 0; t < e_; ++t) prod[static_cast<std::size_t>(d - e_ + t)] -= c * modulus_[t];
    }
    prod.resize(static_cast<std::size_t>(e_));
    for (auto& v : prod) v = ((v % p_) + p_) % p_;
    return encode(prod);
  }
  int chi(std::int64_t a) const { return a == 0 ? 0 : (squares_[static_cast<std::size_t>(a)] ? 1 : -1); }

 private:
  std::vector<std::int64_t> digits(std::int64_t a) const {
    std::vector<std::int64_t> d(static_cast<std::size_t>(e_));
    for (int t = 0; t < e_; ++t, a /= p_) d[static_cast<std::size_t>(t)] = a % p_;
    return d;
  }
  std::int64_t encode(const std::vector<std::int64_t>& d) const {
    std::int64_t a = 0;
    for (int t = e_ - 1; t >= 0; --t) a = a * p_ + d[static_cast<std::size_t>(t)];
    return a;
  }
  std::int64_t p_, q_;
  int e_;
  std::vector<std::int64_t> modulus_;
  std::vector<bool> squares_;
};

// q = p^e with e <= 3: {p, e}; {0, 0} otherwise.
std::pair<std::int64_t, int> prime_power(std::int64_t q) {
  if (q < 2) return {0, 0};
  std::int64_t p = 2;
  while (p * p <= q && q % p != 0) ++p;
  if (q % p != 0) p = q;
  int e = 0;
  std::int64_t r = q;
  while (r % p == 0) {
    r /= p;
    ++e;
  }
  if (r != 1 || e > 3) return {0, 0};
  return {p, e};
}

// 1: Paley I (q = k - 1 = 3 mod 4), 2: Paley II (q = k/2 - 1 = 1 mod 4), 0: neither.
int paley_kind(std::int64_t k) {
  if (k % 4 != 0) return 0;
  if ((k - 1) % 4 == 3 && prime_power(k - 1).first != 0) return 1;
  if ((k / 2 - 1) % 4 == 1 && prime_power(k / 2 - 1).first != 0) return 2;
  return 0;
}

template <typename T>
void fwht(T* x, std::int64_t n) {
  for (std::int64_t h = 1; h < n; h *= 2) {
    for (std::int64_t i = 0; i < n; i += 2 * h) {
      for (std::int64_t j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

}  // namespace

std::int64_t hadamard_base_size(std::int64_t n) {
  if (n <= 0) return 0;
  if (is_power_of_two(n)) return 1;
  std::int64_t odd = n, two = 1;
  while (odd % 2 == 0) {
    odd /= 2;
    two *= 2;
  }
  for (std::int64_t j = 1; j <= two; j *= 2) {
    if (paley_kind(odd * j) != 0) return odd * j;
  }
  return 0;
}

bool has_hadamard(std::int64_t n) { return hadamard_base_size(n) != 0; }

std::vector<std::int8_t> paley_hadamard(std::int64_t k) {
  if (k == 1) return {1};
  if (k == 2) return {1, 1, 1, -1};
  const int kind = paley_kind(k);
  if (kind == 0)
    fail("Hadamard matrix of order {}: neither Paley construction reaches it (q = p^e, e <= 3)", k);
  const std::int64_t q = kind == 1 ? k - 1 : k / 2 - 1;
  const auto [p, e] = prime_power(q);
  const FiniteField field(p, e);
  std::vector<std::int8_t> h(static_cast<std::size_t>(k * k));
  const auto at = [&](std::int64_t i, std::int64_t j) -> std::int8_t& {
    return h[static_cast<std::size_t>(i * k + j)];
  };
  // Jacobsthal-bordered matrix of size q + 1: entry (0, 0) 0, border +-1, Q[i][j] = chi(a_i - a_j).
  const auto core = [&](std::int64_t i, std::int64_t j, int border_sign) -> int {
    if (i == 0 && j == 0) return 0;
    if (i == 0) return 1;
    if (j == 0) return border_sign;
    return field.chi(field.sub(i - 1, j - 1));
  };
  if (kind == 1) {
    for (std::int64_t i = 0; i <= q; ++i) {
      for (std::int64_t j = 0; j <= q; ++j)
        at(i, j) = static_cast<std::int8_t>((i == j ? 1 : 0) + core(i, j, -1));
    }
  } else {
    for (std::int64_t i = 0; i <= q; ++i) {
      for (std::int64_t j = 0; j <= q; ++j) {
        const int c = core(i, j, 1);
        const int block[2][2] = {{c == 0 ? 1 : c, c == 0 ? -1 : c}, {c == 0 ? -1 : c, c == 0 ? -1 : -c}};
        for (int a = 0; a < 2; ++a) {
          for (int b = 0; b < 2; ++b) at(2 * i + a, 2 * j + b) = static_cast<std::int8_t>(block[a][b]);
        }
      }
    }
  }
  // H H^T = k I, exactly, or the construction is wrong.
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = i; j < k; ++j) {
      std::int64_t dot = 0;
      for (std::int64_t t = 0; t < k; ++t) dot += at(i, t) * at(j, t);
      if (dot != (i == j ? k : 0))
        fail("Hadamard matrix of order {} (Paley {}): rows {} and {} have dot product {}", k, kind, i, j,
             dot);
    }
  }
  return h;
}

std::vector<std::int8_t> random_signs(std::int64_t n, std::uint64_t seed) {
  std::vector<std::int8_t> d(static_cast<std::size_t>(n));
  std::uint64_t state = seed;
  for (auto& s : d) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    s = (z >> 63) != 0 ? -1 : 1;
  }
  return d;
}

HadamardTransform::HadamardTransform(std::int64_t n, bool randomized, std::uint64_t seed) : n_(n) {
  k_ = hadamard_base_size(n);
  if (k_ == 0) {
    fail(
        "Hadamard transform of size {}: no construction here reaches it (n = K * 2^m with K from Paley I or "
        "II over "
        "GF(p^e), e <= 3)",
        n);
  }
  p_ = n / k_;
  base_ = paley_hadamard(k_);
  if (randomized) signs_ = random_signs(n, seed);
}

template <typename T>
void HadamardTransform::apply_one(T* x, bool transpose) const {
  if (!transpose && !signs_.empty()) {
    for (std::int64_t i = 0; i < n_; ++i) x[i] *= static_cast<T>(signs_[static_cast<std::size_t>(i)]);
  }
  for (std::int64_t a = 0; a < k_; ++a) fwht(x + a * p_, p_);
  if (k_ > 1) {
    std::vector<T> in(static_cast<std::size_t>(k_)), out(in.size());
    for (std::int64_t b = 0; b < p_; ++b) {
      for (std::int64_t a = 0; a < k_; ++a) in[static_cast<std::size_t>(a)] = x[a * p_ + b];
      for (std::int64_t a = 0; a < k_; ++a) {
        T sum = 0;
        for (std::int64_t c = 0; c < k_; ++c) {
          const std::int8_t h = transpose ? base_[static_cast<std::size_t>(c * k_ + a)]
                                          : base_[static_cast<std::size_t>(a * k_ + c)];
          sum += h > 0 ? in[static_cast<std::size_t>(c)] : -in[static_cast<std::size_t>(c)];
        }
        out[static_cast<std::size_t>(a)] = sum;
      }
      for (std::int64_t a = 0; a < k_; ++a) x[a * p_ + b] = out[static_cast<std::size_t>(a)];
    }
  }
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(n_)));
  for (std::int64_t i = 0; i < n_; ++i) x[i] *= scale;
  if (transpose && !signs_.empty()) {
    for (std::int64_t i = 0; i < n_; ++i) x[i] *= static_cast<T>(signs_[static_cast<std::size_t>(i)]);
  }
}

void HadamardTransform::apply(float* x, std::int64_t count) const {
#pragma omp parallel for schedule(static) if (count > 8)
  for (std::int64_t r = 0; r < count; ++r) apply_one(x + r * n_, false);
}

void HadamardTransform::apply(double* x, std::int64_t count) const {
#pragma omp parallel for schedule(static) if (count > 8)
  for (std::int64_t r = 0; r < count; ++r) apply_one(x + r * n_, false);
}

void HadamardTransform::apply_transpose(double* x, std::int64_t count) const {
#pragma omp parallel for schedule(static) if (count > 8)
  for (std::int64_t r = 0; r < count; ++r) apply_one(x + r * n_, true);
}

std::vector<double> HadamardTransform::matrix() const {
  // Column j of M is M e_j; apply to the identity's rows and transpose.
  std::vector<double> cols(static_cast<std::size_t>(n_ * n_), 0.0);
  for (std::int64_t j = 0; j < n_; ++j) cols[static_cast<std::size_t>(j * n_ + j)] = 1.0;
  apply(cols.data(), n_);
  std::vector<double> m(cols.size());
  for (std::int64_t i = 0; i < n_; ++i) {
    for (std::int64_t j = 0; j < n_; ++j)
      m[static_cast<std::size_t>(i * n_ + j)] = cols[static_cast<std::size_t>(j * n_ + i)];
  }
  return m;
}

}  // namespace atom::quant
