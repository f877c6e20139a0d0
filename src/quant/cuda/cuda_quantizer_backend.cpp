#include "quant/cuda/cuda_quantizer_backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "backend/cpu/kernels.h"
#include "backend/cpu/online_transforms.h"
#include "backend/cuda/calibration/calibration_kernels.h"
#include "backend/cuda/calibration/device_context.h"
#include "common/error.h"
#include "quant/cuda/cuda_gptq.h"

namespace atom::quant {

namespace {

namespace calib = cuda::calib;
using calib::DeviceContext;
using calib::StreamBuffer;
using calib::check_cublas;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

template <typename T>
StreamBuffer<T> upload(std::span<const T> host, cudaStream_t stream) {
  StreamBuffer<T> d;
  d.upload(host, stream);
  return d;
}

// The device copies of a quantized linear's tensors, viewed as the kernels take them.
struct DeviceQuantizedLinear {
  StreamBuffer<std::uint8_t> packed;
  StreamBuffer<std::uint16_t> scales, outlier_scales;
  StreamBuffer<std::int8_t> outliers;
  StreamBuffer<float> fp16_outliers;
  calib::QuantizedLinearView view;

  DeviceQuantizedLinear(const QuantizedLinearWeights& q, std::span<const float> fp16_outlier_columns,
                        cudaStream_t s) {
    packed.upload(std::span<const std::uint8_t>(q.packed), s);
    scales.upload(std::span<const std::uint16_t>(q.scales), s);
    outliers.upload(std::span<const std::int8_t>(q.outliers), s);
    outlier_scales.upload(std::span<const std::uint16_t>(q.outlier_scales), s);
    fp16_outliers.upload(fp16_outlier_columns, s);
    view.packed = packed.get();
    view.scales = scales.get();
    view.outliers = outliers.get();
    view.outlier_scales = outlier_scales.get();
    view.fp16_outliers = fp16_outlier_columns.empty() ? nullptr : fp16_outliers.get();
    view.n = q.n;
    view.k_normal = q.k_normal;
    view.n_outliers = q.n_outliers;
    view.group = q.group;
    view.format = q.format;
  }
};

// FakeQuantLinear (backend/cpu/quantizer_ops.h) on the device: the dequantized weights (reordered order) in
// fp64, the input gathered by perm and fake-quantized per token, the product summed in fp64 (cublasDgemm:
// the products of dequantized values are exact there) and rounded once to fp32, then the bias.
class DeviceLinear {
 public:
  DeviceLinear(DeviceContext& ctx, const QuantizedLinear& linear, const QuantRecipe& recipe, const std::string& name)
      : ctx_(ctx), n_(linear.weights.n), k_(linear.weights.k()) {
    const QuantizedLinearWeights& q = linear.weights;
    validate(q, name.c_str());
    if (!linear.fp16_outlier_columns.empty() &&
        static_cast<std::int64_t>(linear.fp16_outlier_columns.size()) != q.n * q.n_outliers) {
      fail("{}: {} fp16 outlier weights for [{} x {}]", name, linear.fp16_outlier_columns.size(), q.n, q.n_outliers);
    }
    if (!linear.bias.empty() && static_cast<std::int64_t>(linear.bias.size()) != n_)
      fail("{}: bias has {} entries for {} outputs", name, linear.bias.size(), n_);
    cudaStream_t s = ctx.stream();
    act_ = device_act_params(activation_quant(recipe, q.k_normal, q.n_outliers));
    perm_.upload(std::span<const std::int32_t>(q.perm), s);
    bias_.upload(std::span<const float>(linear.bias), s);
    weight_.allocate(static_cast<std::size_t>(n_ * k_), s);
    const DeviceQuantizedLinear d(q, linear.fp16_outlier_columns, s);
    calib::dequantize_linear_f64(d.view, weight_.get(), s);
  }

  std::int64_t in_features() const { return k_; }
  std::int64_t out_features() const { return n_; }

  // y [m, n] = linear(x [m, k], original order), or y += that when accumulate.
  void forward(const float* x, std::int64_t m, float* y, bool accumulate) const {
    cudaStream_t s = ctx_.stream();
    StreamBuffer<double> xq(static_cast<std::size_t>(m * k_), s), yd(static_cast<std::size_t>(m * n_), s);
    calib::fake_quantize_to_reordered_f64(x, m, k_, perm_.get(), act_, xq.get(), s);
    const double one = 1.0, zero = 0.0;
    // Column-major: Y^T (n x m) = W (n x k; row-major [n, k] read transposed) * Xq^T (k x m).
    check_cublas(cublasDgemm(ctx_.blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_), static_cast<int>(m),
                             static_cast<int>(k_), &one, weight_.get(), static_cast<int>(k_), xq.get(),
                             static_cast<int>(k_), &zero, yd.get(), static_cast<int>(n_)),
                 "cublasDgemm (calibration linear)");
    calib::round_to_f32(yd.get(), m, n_, bias_.empty() ? nullptr : bias_.get(), accumulate, y, s);
  }

 private:
  DeviceContext& ctx_;
  std::int64_t n_, k_;
  calib::ActQuantParams act_;
  StreamBuffer<std::int32_t> perm_;
  StreamBuffer<float> bias_;
  StreamBuffer<double> weight_;  // [n, k] reordered order
};

// rows [count, size] <- rows * M^T for a dense transform M (size x size, row-major): x <- M x per row.
void transform_rows(DeviceContext& ctx, const StreamBuffer<float>& matrix, std::int64_t size, float* rows,
                    std::int64_t count) {
  cudaStream_t s = ctx.stream();
  StreamBuffer<float> out(static_cast<std::size_t>(count * size), s);
  const float one = 1.0f, zero = 0.0f;
  // Column-major: out (size x count) = M (row-major, read transposed) * rows (size x count).
  check_cublas(cublasSgemm(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(size), static_cast<int>(count),
                           static_cast<int>(size), &one, matrix.get(), static_cast<int>(size), rows,
                           static_cast<int>(size), &zero, out.get(), static_cast<int>(size)),
               "cublasSgemm (Hadamard transform)");
  ATOM_CUDA_CHECK(cudaMemcpyAsync(rows, out.get(), out.bytes(), cudaMemcpyDeviceToDevice, s));
}

// A Hadamard transform as its dense fp32 matrix on the device (null transform: empty).
StreamBuffer<float> transform_matrix(const std::shared_ptr<const HadamardTransform>& t, cudaStream_t s) {
  if (!t) return {};
  const std::vector<double> m = t->matrix();
  const std::vector<float> f(m.begin(), m.end());
  StreamBuffer<float> d = upload(std::span<const float>(f), s);
  ATOM_CUDA_CHECK(cudaStreamSynchronize(s));  // `f` dies here
  return d;
}

struct CudaMoments final : InputMoments {
  StreamBuffer<double> hessian;  // [k, k] original order; empty when not asked
  StreamBuffer<float> sample;    // [sample_rows, k] original order
  std::int64_t sample_rows = 0;
};

const CudaMoments& cuda_moments(const InputMoments& m) {
  const auto* p = dynamic_cast<const CudaMoments*>(&m);
  ATOM_CHECK(p != nullptr);
  return *p;
}

class CudaQuantizerBackend;

// The input of one linear for every window, on the device: kept between visits when allowed, recomputed
// otherwise (CpuCalibrationInput's rules).
class CudaCalibrationInput final : public CalibrationInput {
 public:
  using Producer = std::function<void(std::int64_t w, float* out)>;
  CudaCalibrationInput(CudaQuantizerBackend& backend, std::int64_t width, bool keep, Producer produce);
  std::int64_t width() const override { return width_; }
  ChannelStats channel_stats() override;
  std::unique_ptr<InputMoments> moments(std::span<const std::int32_t> perm, const ActivationQuant& act,
                                        bool need_hessian, bool need_sample) override;
  void add_projection(const QuantizedLinear& linear, const std::string& name) override;

 private:
  void visit(const std::function<void(std::int64_t w, const float* x)>& f);

  CudaQuantizerBackend& backend_;
  std::int64_t width_;
  bool keep_;
  Producer produce_;
  StreamBuffer<float> kept_;
};

class CudaQuantizerBackend final : public QuantizerBackend {
 public:
  CudaQuantizerBackend(const CalibrationSetup& setup, int device)
      : ctx_(device), config_(setup.config), recipe_(setup.recipe),
        windows_(static_cast<std::int64_t>(setup.window_starts.size())), length_(setup.window_length) {
    cudaStream_t s = ctx_.stream();
    if (windows_ == 0) return;
    qk_matrix_ = transform_matrix(qk_transform(config_, recipe_), s);
    down_matrix_ = transform_matrix(down_transform(config_, recipe_), s);
    const std::int64_t hidden = config_.hidden_size;
    hidden_.allocate(static_cast<std::size_t>(windows_ * length_ * hidden), s);
    std::vector<float> window(static_cast<std::size_t>(length_ * hidden));
    for (std::int64_t w = 0; w < windows_; ++w) {
      embed_window(config_, setup.embed_tokens, setup.tokens, w, setup.window_starts[static_cast<std::size_t>(w)],
                   length_, window.data());
      ATOM_CUDA_CHECK(cudaMemcpyAsync(hidden_state(w), window.data(), window.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, s));
      ctx_.synchronize();  // `window` is refilled next
    }
    const std::vector<float> inv_freq = cpu::rope_inv_freq(config_);
    std::vector<std::int64_t> positions(static_cast<std::size_t>(length_));
    std::iota(positions.begin(), positions.end(), std::int64_t{0});
    std::vector<float> cos(static_cast<std::size_t>(length_) * inv_freq.size()), sin(cos.size());
    cpu::rope_cos_sin(inv_freq, positions.data(), length_, cos.data(), sin.data());
    cos_ = upload(std::span<const float>(cos), s);
    sin_ = upload(std::span<const float>(sin), s);
    ctx_.synchronize();
  }

  DeviceContext& context() { return ctx_; }
  const QuantRecipe& recipe() const { return recipe_; }
  std::int64_t windows() const { return windows_; }
  std::int64_t rows() const { return length_; }
  std::int64_t hidden_size() const { return config_.hidden_size; }
  float* hidden_state(std::int64_t w) { return hidden_.get() + w * length_ * config_.hidden_size; }

  std::unique_ptr<CalibrationInput> normed_input(std::span<const float> norm_weight) override {
    return std::make_unique<CudaCalibrationInput>(*this, config_.hidden_size, false,
                                                  [this, norm_weight](std::int64_t w, float* out) {
                                                    rms_norm(w, norm_weight, out);
                                                  });
  }

  LayerKvCenters kv_centers(std::span<const float>, NamedLinear, NamedLinear) override {
    fail("KV centering is not calibrated on the GPU yet: quantize with --device cpu, or pass --kv-centering off");
  }

  std::unique_ptr<CalibrationInput> attention_input(std::span<const float> norm_weight, NamedLinear q,
                                                    NamedLinear k, NamedLinear v, bool keep,
                                                    KvErrorStats* kv_stats, std::span<const float> key_center,
                                                    std::span<const float> value_center) override {
    if (!key_center.empty() || !value_center.empty()) {
      fail("KV centering is not calibrated on the GPU yet: quantize with --device cpu, or pass --kv-centering off");
    }
    auto q_op = std::make_shared<const DeviceLinear>(ctx_, *q.linear, recipe_, q.name);
    auto k_op = std::make_shared<const DeviceLinear>(ctx_, *k.linear, recipe_, k.name);
    auto v_op = std::make_shared<const DeviceLinear>(ctx_, *v.linear, recipe_, v.name);
    return std::make_unique<CudaCalibrationInput>(
        *this, q_op->out_features(), keep, [this, norm_weight, q_op, k_op, v_op, kv_stats](std::int64_t w, float* out) {
          attention(w, norm_weight, *q_op, *k_op, *v_op, kv_stats, out);
        });
  }

  std::unique_ptr<CalibrationInput> down_proj_input(std::span<const float> norm_weight, NamedLinear gate,
                                                    NamedLinear up, bool keep) override {
    auto gate_op = std::make_shared<const DeviceLinear>(ctx_, *gate.linear, recipe_, gate.name);
    auto up_op = std::make_shared<const DeviceLinear>(ctx_, *up.linear, recipe_, up.name);
    return std::make_unique<CudaCalibrationInput>(
        *this, gate_op->out_features(), keep, [this, norm_weight, gate_op, up_op](std::int64_t w, float* out) {
          mlp_hidden(w, norm_weight, *gate_op, *up_op, out);
        });
  }

  QuantizedLinearWeights gptq(std::span<const float> w, std::int64_t n, const InputMoments& moments,
                              std::span<const std::int32_t> perm, const WeightQuantSpec& spec,
                              const GptqOptions& options, const char* what, GptqReport* report) override {
    const CudaMoments& m = cuda_moments(moments);
    if (m.hessian.empty()) fail("{}: GPTQ without a Hessian", what);
    return cuda_gptq_quantize(ctx_, w, n, m.hessian.get(), perm, spec, options, what, report);
  }

  // linear_output_mse on the sampled rows: fp32 products, as on the CPU.
  double output_mse(const InputMoments& moments, std::span<const float> w, const QuantizedLinearWeights& q,
                    const ActQuantSpec* act) override {
    validate(q, "linear_output_mse");
    const CudaMoments& m = cuda_moments(moments);
    const std::int64_t k = q.k(), n = q.n, rows = m.sample_rows;
    if (static_cast<std::int64_t>(w.size()) != n * k)
      fail("linear_output_mse: {} weights do not fit [{}, {}]", w.size(), n, k);
    if (rows == 0) return 0.0;
    cudaStream_t s = ctx_.stream();
    const StreamBuffer<float> d_w = upload(w, s);
    const StreamBuffer<std::int32_t> perm = upload(std::span<const std::int32_t>(q.perm), s);
    StreamBuffer<float> wq(static_cast<std::size_t>(n * k), s);
    {
      const DeviceQuantizedLinear d(q, {}, s);
      calib::dequantize_linear_f32(d.view, perm.get(), wq.get(), s);
    }
    StreamBuffer<float> xq;
    const float* x_quantized = m.sample.get();
    if (act) {
      calib::ActQuantParams p;
      p.format = act->format;
      p.group = act->group;
      p.n_outliers = act->n_outliers;
      p.clip = act->clip;
      xq.allocate(static_cast<std::size_t>(rows * k), s);
      calib::fake_quantize_to_original_f32(m.sample.get(), rows, k, perm.get(), p, xq.get(), s);
      x_quantized = xq.get();
    }
    StreamBuffer<float> y(static_cast<std::size_t>(rows * n), s), yq(y.size(), s);
    // Column-major: Y^T (n x rows) = W (row-major [n, k], read transposed) * X^T (k x rows).
    const auto product = [&](const float* x, const float* weight, float* out) {
      const float one = 1.0f, zero = 0.0f;
      check_cublas(cublasSgemm(ctx_.blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(rows),
                               static_cast<int>(k), &one, weight, static_cast<int>(k), x, static_cast<int>(k), &zero,
                               out, static_cast<int>(n)),
                   "cublasSgemm (clip search)");
    };
    product(m.sample.get(), d_w.get(), y.get());
    product(x_quantized, wq.get(), yq.get());
    StreamBuffer<double> sum(1, s);
    calib::squared_difference_sum(y.get(), yq.get(), rows * n, sum.get(), s);
    double host = 0.0;
    ATOM_CUDA_CHECK(cudaMemcpyAsync(&host, sum.get(), sizeof(double), cudaMemcpyDeviceToHost, s));
    ctx_.synchronize();
    return host / static_cast<double>(rows * n);
  }

  std::string status() const override {
    return fmt::format("GPU peak {:.2f} GiB", static_cast<double>(ctx_.peak_buffer_bytes()) / kGiB);
  }

 private:
  // RMSNorm of window w's hidden states: out [rows, hidden]. The weight is read from the host at each call:
  // SmoothQuant may rescale it between visits.
  void rms_norm(std::int64_t w, std::span<const float> norm_weight, float* out) {
    ATOM_CHECK(static_cast<std::int64_t>(norm_weight.size()) == config_.hidden_size);
    const StreamBuffer<float> weight = upload(norm_weight, ctx_.stream());
    calib::rms_norm_rows(hidden_state(w), length_, config_.hidden_size, weight.get(), config_.rms_norm_eps, out,
                         ctx_.stream());
  }

  // CalibrationWindows::attention on the device: q/k/v, RoPE, the Q/K transform, K and V through the KV
  // store's rule, causal attention (scores as cuBLAS products, one softmax kernel). out [rows, q_dim].
  void attention(std::int64_t w, std::span<const float> norm_weight, const DeviceLinear& q_proj,
                 const DeviceLinear& k_proj, const DeviceLinear& v_proj, KvErrorStats* kv_stats, float* out) {
    cudaStream_t s = ctx_.stream();
    const int heads = config_.num_heads, kv_heads = config_.num_kv_heads, head_dim = config_.head_dim;
    const int group = heads / kv_heads;
    const std::int64_t n = length_, q_dim = std::int64_t{heads} * head_dim, kv_dim = std::int64_t{kv_heads} * head_dim;
    StreamBuffer<float> normed(static_cast<std::size_t>(n * config_.hidden_size), s);
    StreamBuffer<float> q(static_cast<std::size_t>(n * q_dim), s), k(static_cast<std::size_t>(n * kv_dim), s),
        v(k.size(), s);
    rms_norm(w, norm_weight, normed.get());
    q_proj.forward(normed.get(), n, q.get(), false);
    k_proj.forward(normed.get(), n, k.get(), false);
    v_proj.forward(normed.get(), n, v.get(), false);
    normed.reset();
    calib::apply_rope_rows(q.get(), n, q_dim, heads, head_dim, cos_.get(), sin_.get(), s);
    calib::apply_rope_rows(k.get(), n, kv_dim, kv_heads, head_dim, cos_.get(), sin_.get(), s);
    if (!qk_matrix_.empty()) {
      transform_rows(ctx_, qk_matrix_, head_dim, q.get(), n * heads);
      transform_rows(ctx_, qk_matrix_, head_dim, k.get(), n * kv_heads);
    }
    if (recipe_.kv_bits != 16) store_kv(k.get(), v.get(), kv_stats);

    const std::int64_t nn = n * n;
    StreamBuffer<float> scores(static_cast<std::size_t>(heads * nn), s);
    const float one = 1.0f, zero = 0.0f;
    // Query head h = b * group + g reads KV head b. Per g, batched over b. Column-major scores of head h:
    // (keys x queries, ld n) = K_b^T (keys x head_dim) * Q_h (head_dim x queries): row-major [query][key].
    for (int g = 0; g < group; ++g) {
      check_cublas(cublasSgemmStridedBatched(ctx_.blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                                             static_cast<int>(n), head_dim, &one, k.get(), static_cast<int>(kv_dim),
                                             head_dim, q.get() + std::int64_t{g} * head_dim, static_cast<int>(q_dim),
                                             std::int64_t{group} * head_dim, &zero, scores.get() + g * nn,
                                             static_cast<int>(n), std::int64_t{group} * nn, kv_heads),
                   "cublasSgemmStridedBatched (attention scores)");
    }
    calib::causal_softmax(scores.get(), heads, n, 1.0f / std::sqrt(static_cast<float>(head_dim)),
                          config_.sliding_window, s);
    // out of head h (head_dim x queries, ld q_dim) = V_b (head_dim x keys, ld kv_dim) * P_h (keys x queries).
    for (int g = 0; g < group; ++g) {
      check_cublas(cublasSgemmStridedBatched(ctx_.blas(), CUBLAS_OP_N, CUBLAS_OP_N, head_dim, static_cast<int>(n),
                                             static_cast<int>(n), &one, v.get(), static_cast<int>(kv_dim), head_dim,
                                             scores.get() + g * nn, static_cast<int>(n), std::int64_t{group} * nn,
                                             &zero, out + std::int64_t{g} * head_dim, static_cast<int>(q_dim),
                                             std::int64_t{group} * head_dim, kv_heads),
                   "cublasSgemmStridedBatched (attention values)");
    }
  }

  // K and V [rows, kv_dim] replaced by what the recipe's KV store holds; the store's error joins kv_stats.
  void store_kv(float* k, float* v, KvErrorStats* kv_stats) {
    cudaStream_t s = ctx_.stream();
    const int head_dim = config_.head_dim;
    const std::int64_t kv_dim = std::int64_t{config_.num_kv_heads} * head_dim;
    StreamBuffer<double> sums(4, s), key_channel_sq(static_cast<std::size_t>(head_dim), s);
    sums.zero();
    key_channel_sq.zero();
    if (kv_stats) {  // key energy per head channel, over heads and tokens, before the store
      calib::channel_stats_accumulate(k, length_ * config_.num_kv_heads, head_dim, key_channel_sq.get(), nullptr, s);
    }
    // The store's rule per group of kv_group_size channels (head_dim unless the recipe groups finer).
    const int kv_group = static_cast<int>(recipe_.kv_group_for(head_dim));
    calib::kv_fake_quantize_rows(k, length_, kv_dim, kv_group, recipe_.kv_bits, kv_stats ? sums.get() : nullptr, s);
    calib::kv_fake_quantize_rows(v, length_, kv_dim, kv_group, recipe_.kv_bits, kv_stats ? sums.get() + 2 : nullptr,
                                 s);
    if (!kv_stats) return;
    double host[4];
    std::vector<double> channels(static_cast<std::size_t>(head_dim));
    ATOM_CUDA_CHECK(cudaMemcpyAsync(host, sums.get(), sizeof(host), cudaMemcpyDeviceToHost, s));
    ATOM_CUDA_CHECK(cudaMemcpyAsync(channels.data(), key_channel_sq.get(), channels.size() * sizeof(double),
                                    cudaMemcpyDeviceToHost, s));
    ctx_.synchronize();
    kv_stats->key_sq += host[0];
    kv_stats->key_err_sq += host[1];
    kv_stats->value_sq += host[2];
    kv_stats->value_err_sq += host[3];
    kv_stats->key_channel_sq.resize(channels.size(), 0.0);
    for (std::size_t i = 0; i < channels.size(); ++i) kv_stats->key_channel_sq[i] += channels[i];
  }

  // SiLU(gate(normed)) * up(normed), then the recipe's Hadamard (R4): out [rows, intermediate].
  void mlp_hidden(std::int64_t w, std::span<const float> norm_weight, const DeviceLinear& gate_proj,
                  const DeviceLinear& up_proj, float* out) {
    cudaStream_t s = ctx_.stream();
    const std::int64_t n = length_, inter = config_.intermediate_size;
    StreamBuffer<float> normed(static_cast<std::size_t>(n * config_.hidden_size), s);
    StreamBuffer<float> up(static_cast<std::size_t>(n * inter), s);
    rms_norm(w, norm_weight, normed.get());
    gate_proj.forward(normed.get(), n, out, false);
    up_proj.forward(normed.get(), n, up.get(), false);
    calib::silu_mul(out, up.get(), n * inter, out, s);
    if (!down_matrix_.empty()) transform_rows(ctx_, down_matrix_, inter, out, n);
  }

  DeviceContext ctx_;
  ModelConfig config_;
  QuantRecipe recipe_;
  std::int64_t windows_, length_;
  StreamBuffer<float> hidden_;              // [windows, rows, hidden]
  StreamBuffer<float> cos_, sin_;           // RoPE tables of positions 0 .. rows - 1
  StreamBuffer<float> qk_matrix_, down_matrix_;  // the online transforms as dense matrices; empty when off
};

CudaCalibrationInput::CudaCalibrationInput(CudaQuantizerBackend& backend, std::int64_t width, bool keep,
                                           Producer produce)
    : backend_(backend), width_(width), keep_(keep), produce_(std::move(produce)) {}

void CudaCalibrationInput::visit(const std::function<void(std::int64_t w, const float* x)>& f) {
  cudaStream_t s = backend_.context().stream();
  const std::int64_t windows = backend_.windows(), size = backend_.rows() * width_;
  if (keep_) {
    if (kept_.empty()) {
      kept_.allocate(static_cast<std::size_t>(windows * size), s);
      for (std::int64_t w = 0; w < windows; ++w) produce_(w, kept_.get() + w * size);
    }
    for (std::int64_t w = 0; w < windows; ++w) f(w, kept_.get() + w * size);
    return;
  }
  StreamBuffer<float> buffer(static_cast<std::size_t>(size), s);
  for (std::int64_t w = 0; w < windows; ++w) {
    produce_(w, buffer.get());
    f(w, buffer.get());
  }
}

ChannelStats CudaCalibrationInput::channel_stats() {
  DeviceContext& ctx = backend_.context();
  cudaStream_t s = ctx.stream();
  StreamBuffer<double> sum_sq(static_cast<std::size_t>(width_), s);
  StreamBuffer<float> absmax(static_cast<std::size_t>(width_), s);
  sum_sq.zero();
  absmax.zero();
  visit([&](std::int64_t, const float* x) {
    calib::channel_stats_accumulate(x, backend_.rows(), width_, sum_sq.get(), absmax.get(), s);
  });
  ChannelStats stats{std::vector<double>(sum_sq.size()), std::vector<float>(absmax.size())};
  ATOM_CUDA_CHECK(cudaMemcpyAsync(stats.sum_sq.data(), sum_sq.get(), sum_sq.bytes(), cudaMemcpyDeviceToHost, s));
  ATOM_CUDA_CHECK(cudaMemcpyAsync(stats.absmax.data(), absmax.get(), absmax.bytes(), cudaMemcpyDeviceToHost, s));
  ctx.synchronize();
  return stats;
}

std::unique_ptr<InputMoments> CudaCalibrationInput::moments(std::span<const std::int32_t> perm,
                                                            const ActivationQuant& act, bool need_hessian,
                                                            bool need_sample) {
  DeviceContext& ctx = backend_.context();
  cudaStream_t s = ctx.stream();
  const std::int64_t k = width_, rows = backend_.rows(), windows = backend_.windows();
  if (static_cast<std::int64_t>(perm.size()) != k) fail("calibration: permutation of {} for an input of {}", perm.size(), k);
  auto out = std::make_unique<CudaMoments>();
  const StreamBuffer<std::int32_t> d_perm = upload(perm, s);
  const calib::ActQuantParams params = device_act_params(act);
  StreamBuffer<float> quantized;
  std::optional<CudaHessianAccumulator> hessian;
  if (need_hessian) {
    hessian.emplace(ctx, k);
    quantized.allocate(static_cast<std::size_t>(rows * k), s);
  }
  // The CPU's sample: every stride-th row of each window until kClipSampleRows rows.
  const std::int64_t per_window = std::max<std::int64_t>(1, (kClipSampleRows + windows - 1) / windows);
  const std::int64_t stride = std::max<std::int64_t>(1, rows / per_window);
  if (need_sample) out->sample.allocate(static_cast<std::size_t>(kClipSampleRows * k), s);
  visit([&](std::int64_t, const float* x) {
    if (need_sample && out->sample_rows < kClipSampleRows) {
      const std::int64_t count = std::min((rows + stride - 1) / stride, kClipSampleRows - out->sample_rows);
      ATOM_CUDA_CHECK(cudaMemcpy2DAsync(out->sample.get() + out->sample_rows * k, k * sizeof(float), x,
                                        stride * k * sizeof(float), k * sizeof(float), count,
                                        cudaMemcpyDeviceToDevice, s));
      out->sample_rows += count;
    }
    if (!need_hessian) return;
    // The Hessian sees the input as the activation quantizer leaves it (original channel order).
    calib::fake_quantize_to_original_f32(x, rows, k, d_perm.get(), params, quantized.get(), s);
    hessian->add(quantized.get(), rows);
  });
  if (hessian) out->hessian = hessian->take_hessian();
  ctx.synchronize();
  return out;
}

void CudaCalibrationInput::add_projection(const QuantizedLinear& linear, const std::string& name) {
  const DeviceLinear op(backend_.context(), linear, backend_.recipe(), name);
  ATOM_CHECK(op.in_features() == width_ && op.out_features() == backend_.hidden_size());
  visit([&](std::int64_t w, const float* x) { op.forward(x, backend_.rows(), backend_.hidden_state(w), true); });
  backend_.context().synchronize();
}

}  // namespace

QuantizerBackendFactory cuda_quantizer_backend(int device) {
  return [device](const CalibrationSetup& setup) -> std::unique_ptr<QuantizerBackend> {
    return std::make_unique<CudaQuantizerBackend>(setup, device);
  };
}

std::int64_t cuda_activation_budget_bytes(int device) {
  const DeviceContext ctx(device);
  std::size_t free = 0, total = 0;
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return std::min<std::int64_t>(std::int64_t{16} << 30, static_cast<std::int64_t>(total / 2));
}

cuda::calib::ActQuantParams device_act_params(const ActivationQuant& a) {
  calib::ActQuantParams p;
  p.enabled = a.enabled;
  p.format = a.format;
  p.group = a.group;
  p.n_outliers = a.n_outliers;
  p.int8_outliers = a.outlier_precision == OutlierPrecision::kInt8;
  p.clip = a.clip;
  return p;
}

}  // namespace atom::quant
