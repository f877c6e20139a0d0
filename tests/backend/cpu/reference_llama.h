#pragma once
// Scalar fp64 reference of the Llama decoder (whole sequence at once, no cache) and random test weights.
// Deliberately naive: the fast path in backend/cpu is checked against it.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <vector>

#include "model/weights.h"

namespace atom::test {

inline std::vector<float> random_vector(std::mt19937_64& rng, std::size_t n, float scale, float offset = 0.0f) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = offset + scale * dist(rng);
  return v;
}

// Random weights scaled so that every block matters (unit-variance activations).
inline LlamaWeights random_llama_weights(const ModelConfig& c, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::size_t h = c.hidden_size, inter = c.intermediate_size, v = c.vocab_size;
  const std::size_t qd = std::size_t(c.num_heads) * c.head_dim, kvd = std::size_t(c.num_kv_heads) * c.head_dim;
  auto mat = [&](std::size_t out, std::size_t in) { return random_vector(rng, out * in, 1.0f / std::sqrt(float(in))); };
  LlamaWeights w;
  w.config = c;
  w.embed_tokens = random_vector(rng, v * h, 1.0f);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights l;
    l.input_norm = random_vector(rng, h, 0.2f, 1.0f);
    l.q_proj = mat(qd, h);
    l.k_proj = mat(kvd, h);
    l.v_proj = mat(kvd, h);
    if (c.attention_bias) {
      l.q_bias = random_vector(rng, qd, 0.3f);
      l.k_bias = random_vector(rng, kvd, 0.3f);
      l.v_bias = random_vector(rng, kvd, 0.3f);
    }
    l.o_proj = mat(h, qd);
    l.post_attention_norm = random_vector(rng, h, 0.2f, 1.0f);
    l.gate_proj = mat(inter, h);
    l.up_proj = mat(inter, h);
    l.down_proj = mat(h, inter);
    w.layers.push_back(std::move(l));
  }
  w.final_norm = random_vector(rng, h, 0.2f, 1.0f);
  if (!c.tie_word_embeddings) w.lm_head = mat(v, h);
  return w;
}

// RoPE inverse frequencies in fp64 (default or llama3, from the formulas of the Llama 3.1 reference code).
inline std::vector<double> reference_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(double(c.rope_theta), 2.0 * i / c.head_dim);
  if (c.rope_scaling.type == "llama3") {
    const auto& rs = c.rope_scaling;
    const double low_wavelen = rs.original_max_position_embeddings / double(rs.low_freq_factor);
    const double high_wavelen = rs.original_max_position_embeddings / double(rs.high_freq_factor);
    for (double& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else {
        const double smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) /
                              (double(rs.high_freq_factor) - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
  }
  return inv;
}

// Logits [n, vocab] of tokens at positions 0..n-1.
inline std::vector<double> reference_forward(const LlamaWeights& w, const std::vector<std::int32_t>& tokens) {
  const ModelConfig& c = w.config;
  const int n = int(tokens.size()), H = c.hidden_size, I = c.intermediate_size, d = c.head_dim;
  const int nh = c.num_heads, nkv = c.num_kv_heads, qd = nh * d, kvd = nkv * d;
  auto matvec = [](const std::vector<float>& W, const std::vector<float>& b, const double* x, int out, int in,
                   double* y) {
    for (int o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int i = 0; i < in; ++i) s += double(W[std::size_t(o) * in + i]) * x[i];
      y[o] = s;
    }
  };
  auto norm = [&](const double* x, const std::vector<float>& wt, double* y) {
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += x[i] * x[i];
    const double r = 1.0 / std::sqrt(ss / H + double(c.rms_norm_eps));
    for (int i = 0; i < H; ++i) y[i] = x[i] * r * wt[i];
  };
  const std::vector<double> inv = reference_inv_freq(c);
  auto rope = [&](double* head, int pos) {
    for (int i = 0; i < d / 2; ++i) {
      const double a = pos * inv[i], x1 = head[i], x2 = head[i + d / 2];
      head[i] = x1 * std::cos(a) - x2 * std::sin(a);
      head[i + d / 2] = x2 * std::cos(a) + x1 * std::sin(a);
    }
  };
  std::vector<double> x(std::size_t(n) * H);
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < H; ++i) x[std::size_t(t) * H + i] = w.embed_tokens[std::size_t(tokens[t]) * H + i];
  std::vector<double> xn(H), q(std::size_t(n) * qd), k(std::size_t(n) * kvd), v(std::size_t(n) * kvd);
  std::vector<double> att(qd), tmp(H), g(I), u(I), p(n);
  for (const LayerWeights& l : w.layers) {
    for (int t = 0; t < n; ++t) {
      norm(&x[std::size_t(t) * H], l.input_norm, xn.data());
      matvec(l.q_proj, l.q_bias, xn.data(), qd, H, &q[std::size_t(t) * qd]);
      matvec(l.k_proj, l.k_bias, xn.data(), kvd, H, &k[std::size_t(t) * kvd]);
      matvec(l.v_proj, l.v_bias, xn.data(), kvd, H, &v[std::size_t(t) * kvd]);
      for (int h = 0; h < nh; ++h) rope(&q[std::size_t(t) * qd + h * d], t);
      for (int h = 0; h < nkv; ++h) rope(&k[std::size_t(t) * kvd + h * d], t);
    }
    std::vector<double> x_next = x;
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < nh; ++h) {
        const int kh = h / (nh / nkv);
        const int first = c.sliding_window > 0 ? std::max(0, t - c.sliding_window + 1) : 0;
        double mx = -1e300;
        for (int j = first; j <= t; ++j) {
          double s = 0;
          for (int i = 0; i < d; ++i) s += q[std::size_t(t) * qd + h * d + i] * k[std::size_t(j) * kvd + kh * d + i];
          p[j] = s / std::sqrt(double(d));
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int j = first; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
        for (int i = 0; i < d; ++i) {
          double s = 0;
          for (int j = first; j <= t; ++j) s += p[j] / sum * v[std::size_t(j) * kvd + kh * d + i];
          att[h * d + i] = s;
        }
      }
      matvec(l.o_proj, l.o_bias, att.data(), H, qd, tmp.data());
      for (int i = 0; i < H; ++i) x_next[std::size_t(t) * H + i] += tmp[i];
    }
    x = x_next;
    for (int t = 0; t < n; ++t) {
      norm(&x[std::size_t(t) * H], l.post_attention_norm, xn.data());
      matvec(l.gate_proj, {}, xn.data(), I, H, g.data());
      matvec(l.up_proj, {}, xn.data(), I, H, u.data());
      for (int i = 0; i < I; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      matvec(l.down_proj, {}, g.data(), H, I, tmp.data());
      for (int i = 0; i < H; ++i) x[std::size_t(t) * H + i] += tmp[i];
    }
  }
  const std::vector<float>& out = w.output_weight();
  std::vector<double> logits(std::size_t(n) * c.vocab_size);
  for (int t = 0; t < n; ++t) {
    norm(&x[std::size_t(t) * H], w.final_norm, xn.data());
    matvec(out, {}, xn.data(), c.vocab_size, H, &logits[std::size_t(t) * c.vocab_size]);
  }
  return logits;
}

// max over rows of ||a - b|| / ||b|| (rows of `width`).
template <class A, class B>
double max_row_relative_error(const A& a, const B& b, std::size_t width) {
  double worst = 0;
  for (std::size_t r = 0; r * width < b.size(); ++r) {
    double num = 0, den = 0;
    for (std::size_t i = r * width; i < (r + 1) * width; ++i) {
      num += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
      den += double(b[i]) * double(b[i]);
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-300)));
  }
  return worst;
}

}  // namespace atom::test
