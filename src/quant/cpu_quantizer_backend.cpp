#include "quant/cpu_quantizer_backend.h"
#include "quant/kv_centering.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "backend/cpu/online_transforms.h"
#include "backend/cpu/tensor_parallel_llama.h"
#include "common/error.h"

namespace atom::quant {

namespace {

void add_to_stats(ChannelStats& stats, const float* x, std::int64_t m) {
  const auto k = static_cast<std::int64_t>(stats.sum_sq.size());
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t j = 0; j < k; ++j) {
      const float v = x[r * k + j];
      stats.sum_sq[j] += static_cast<double>(v) * v;
      stats.absmax[j] = std::max(stats.absmax[j], std::fabs(v));
    }
  }
}

struct CpuMoments final : InputMoments {
  std::vector<double> hessian;  // [k, k] original order; empty when not asked
  std::vector<float> sample;    // [sample_rows, k] original order
  std::int64_t sample_rows = 0;
};

const CpuMoments& cpu_moments(const InputMoments& m) {
  const auto* p = dynamic_cast<const CpuMoments*>(&m);
  ATOM_CHECK(p != nullptr);
  return *p;
}

// The input of one linear for every window: kept between visits when allowed, recomputed otherwise.
class CpuCalibrationInput final : public CalibrationInput {
 public:
  using Producer = std::function<void(std::int64_t w, float* out)>;
  CpuCalibrationInput(CalibrationWindows& windows, const QuantRecipe& recipe, std::int64_t width, bool keep,
                      Producer produce)
      : windows_(windows), recipe_(recipe), width_(width), keep_(keep), produce_(std::move(produce)) {}

  std::int64_t width() const override { return width_; }

  ChannelStats channel_stats() override {
    ChannelStats stats{std::vector<double>(static_cast<std::size_t>(width_), 0.0),
                       std::vector<float>(static_cast<std::size_t>(width_), 0.0f)};
    visit([&](std::int64_t, const float* x) { add_to_stats(stats, x, rows()); });
    return stats;
  }

  std::unique_ptr<InputMoments> moments(std::span<const std::int32_t> perm, const ActivationQuant& act,
                                        bool need_hessian, bool need_sample) override {
    const std::int64_t k = width_;
    auto out = std::make_unique<CpuMoments>();
    std::optional<HessianAccumulator> hessian;
    if (need_hessian) hessian.emplace(k);
    const std::int64_t windows = windows_.windows();
    const std::int64_t per_window = std::max<std::int64_t>(1, (kClipSampleRows + windows - 1) / windows);
    const std::int64_t stride = std::max<std::int64_t>(1, rows() / per_window);
    std::vector<float> reordered(static_cast<std::size_t>(rows() * k)), quantized(reordered.size());
    visit([&](std::int64_t, const float* x) {
      if (need_sample) {
        for (std::int64_t r = 0; r < rows() && out->sample_rows < kClipSampleRows; r += stride) {
          out->sample.insert(out->sample.end(), x + r * k, x + (r + 1) * k);
          ++out->sample_rows;
        }
      }
      if (!need_hessian) return;
      // The Hessian sees the input as the activation quantizer leaves it (original channel order).
      for (std::int64_t r = 0; r < rows(); ++r) {
        for (std::int64_t j = 0; j < k; ++j) reordered[r * k + j] = x[r * k + perm[j]];
      }
      fake_quantize_reordered(reordered.data(), rows(), k, act, reordered.data());
      for (std::int64_t r = 0; r < rows(); ++r) {
        for (std::int64_t j = 0; j < k; ++j) quantized[r * k + perm[j]] = reordered[r * k + j];
      }
      hessian->add(quantized.data(), rows());
    });
    if (hessian) out->hessian = hessian->hessian();
    return out;
  }

  void add_projection(const QuantizedLinear& linear, const std::string& name) override {
    const auto op = make_linear_op(linear, recipe_, Execution::kFakeQuant, cpu::InputOrder::kOriginal, name);
    visit([&](std::int64_t w, const float* x) { windows_.add_projection(w, *op, x); });
  }

  std::unique_ptr<CalibrationInput> columns(std::int64_t begin, std::int64_t end) override {
    if (begin < 0 || begin >= end || end > width_)
      fail("calibration input: columns [{}, {}) outside [0, {})", begin, end, width_);
    // Reads the whole input's windows (kept, or recomputed per visit) and keeps nothing of its own.
    return std::make_unique<CpuCalibrationInput>(
        windows_, recipe_, end - begin, /*keep=*/false, [this, begin, end](std::int64_t w, float* out) {
          std::vector<float> buffer;
          const float* x = window(w, buffer);
          const std::int64_t k = end - begin;
          for (std::int64_t r = 0; r < rows(); ++r) std::copy_n(x + r * width_ + begin, k, out + r * k);
        });
  }

  void add_sharded_projection(std::span<const QuantizedLinear> shards, std::span<const float> bias,
                              const std::string& name) override {
    std::vector<std::unique_ptr<cpu::LinearOp>> ops;
    for (std::size_t r = 0; r < shards.size(); ++r) {
      ops.push_back(make_linear_op(shards[r], recipe_, Execution::kFakeQuant, cpu::InputOrder::kOriginal,
                                   fmt::format("{}.tp_shards.{}", name, r)));
    }
    const cpu::ShardedInputLinear op(std::move(ops), std::vector<float>(bias.begin(), bias.end()));
    visit([&](std::int64_t w, const float* x) { windows_.add_projection(w, op, x); });
  }

 private:
  // Window w of this input: from the kept windows, or produced into `buffer`.
  const float* window(std::int64_t w, std::vector<float>& buffer) {
    const std::int64_t size = rows() * width_;
    if (keep_) {
      if (kept_.empty()) {
        kept_.resize(static_cast<std::size_t>(windows_.windows() * size));
        for (std::int64_t i = 0; i < windows_.windows(); ++i) produce_(i, kept_.data() + i * size);
      }
      return kept_.data() + w * size;
    }
    buffer.resize(static_cast<std::size_t>(size));
    produce_(w, buffer.data());
    return buffer.data();
  }

  std::int64_t rows() const { return windows_.length(); }

  void visit(const std::function<void(std::int64_t w, const float* x)>& f) {
    std::vector<float> buffer;
    for (std::int64_t w = 0; w < windows_.windows(); ++w) f(w, window(w, buffer));
  }


  CalibrationWindows& windows_;
  const QuantRecipe& recipe_;
  std::int64_t width_;
  bool keep_;
  Producer produce_;
  std::vector<float> kept_;
};

class CpuQuantizerBackend final : public QuantizerBackend {
 public:
  explicit CpuQuantizerBackend(const CalibrationSetup& setup)
      : recipe_(setup.recipe), down_transform_(down_transform(setup.config, setup.recipe)) {
    if (setup.window_starts.empty()) return;
    windows_.emplace(setup.config, setup.embed_tokens, setup.tokens, setup.window_starts, setup.window_length);
    windows_->set_qk_transform(head_transform(qk_transform(setup.config, setup.recipe)));
  }

  std::unique_ptr<CalibrationInput> normed_input(std::span<const float> norm_weight) override {
    CalibrationWindows& cw = windows();
    return std::make_unique<CpuCalibrationInput>(
        cw, recipe_, cw.hidden_size(), false,
        [&cw, norm_weight](std::int64_t wi, float* out) { cw.rms_norm(wi, norm_weight, out); });
  }

  LayerKvCenters kv_centers(std::span<const float> norm_weight, NamedLinear k, NamedLinear v) override {
    CalibrationWindows& cw = windows();
    std::shared_ptr<const cpu::LinearOp> k_op = op(k), v_op = op(v);
    const std::int64_t width = k_op->out_features(), rows = cw.length();
    RowMeanAccumulator keys(width), values(width);
    std::vector<float> normed(static_cast<std::size_t>(rows * cw.hidden_size())),
        k_rows(static_cast<std::size_t>(rows * width)), v_rows(k_rows.size());
    for (std::int64_t wi = 0; wi < cw.windows(); ++wi) {
      cw.rms_norm(wi, norm_weight, normed.data());
      cw.keys_values(normed.data(), *k_op, *v_op, k_rows.data(), v_rows.data());
      keys.add(k_rows.data(), rows);
      values.add(v_rows.data(), rows);
    }
    return {keys.mean(), values.mean()};
  }

  std::unique_ptr<CalibrationInput> attention_input(std::span<const float> norm_weight, NamedLinear q,
                                                    NamedLinear k, NamedLinear v, bool keep,
                                                    KvErrorStats* kv_stats, std::span<const float> key_center,
                                                    std::span<const float> value_center) override {
    CalibrationWindows& cw = windows();
    std::shared_ptr<const cpu::LinearOp> q_op = op(q), k_op = op(k), v_op = op(v);
    const cpu::KvRowStoreFactory kv = kv_store_factory(recipe_.kv_bits, recipe_.kv_group_size);
    return std::make_unique<CpuCalibrationInput>(
        cw, recipe_, q_op->out_features(), keep,
        [&cw, norm_weight, q_op, k_op, v_op, kv, kv_stats, key_center, value_center](std::int64_t wi, float* out) {
          std::vector<float> normed(static_cast<std::size_t>(cw.length() * cw.hidden_size()));
          cw.rms_norm(wi, norm_weight, normed.data());
          cw.attention(normed.data(), *q_op, *k_op, *v_op, kv, out, kv_stats, key_center, value_center);
        });
  }

  std::unique_ptr<CalibrationInput> down_proj_input(std::span<const float> norm_weight, NamedLinear gate,
                                                    NamedLinear up, bool keep) override {
    CalibrationWindows& cw = windows();
    std::shared_ptr<const cpu::LinearOp> gate_op = op(gate), up_op = op(up);
    std::shared_ptr<const HadamardTransform> transform = down_transform_;
    return std::make_unique<CpuCalibrationInput>(
        cw, recipe_, gate_op->out_features(), keep,
        [&cw, norm_weight, gate_op, up_op, transform](std::int64_t wi, float* out) {
          std::vector<float> normed(static_cast<std::size_t>(cw.length() * cw.hidden_size()));
          cw.rms_norm(wi, norm_weight, normed.data());
          cw.mlp_hidden(normed.data(), *gate_op, *up_op, out);
          if (transform) transform->apply(out, cw.length());  // R4: down_proj reads M4 x
        });
  }

  QuantizedLinearWeights gptq(std::span<const float> w, std::int64_t n, const InputMoments& moments,
                              std::span<const std::int32_t> perm, const WeightQuantSpec& spec,
                              const GptqOptions& options, const char* what, GptqReport* report) override {
    return gptq_quantize(w, n, cpu_moments(moments).hessian, perm, spec, options, what, report);
  }

  double output_mse(const InputMoments& moments, std::span<const float> w, const QuantizedLinearWeights& q,
                    const ActQuantSpec* act) override {
    const CpuMoments& m = cpu_moments(moments);
    return linear_output_mse(m.sample, m.sample_rows, w, q, act);
  }

 private:
  CalibrationWindows& windows() {
    ATOM_CHECK(windows_.has_value());
    return *windows_;
  }
  std::shared_ptr<const cpu::LinearOp> op(const NamedLinear& l) const {
    return make_linear_op(*l.linear, recipe_, Execution::kFakeQuant, cpu::InputOrder::kOriginal, l.name);
  }

  QuantRecipe recipe_;
  std::optional<CalibrationWindows> windows_;
  std::shared_ptr<const HadamardTransform> down_transform_;  // R4, null when off
};

}  // namespace

std::unique_ptr<QuantizerBackend> make_cpu_quantizer_backend(const CalibrationSetup& setup) {
  return std::make_unique<CpuQuantizerBackend>(setup);
}

}  // namespace atom::quant
