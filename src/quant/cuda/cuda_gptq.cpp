#include "quant/cuda/cuda_gptq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cuda/calibration/calibration_kernels.h"
#include "common/error.h"

namespace atom::quant {

namespace {

using cuda::calib::DeviceContext;
using cuda::calib::StreamBuffer;
using cuda::calib::check_cublas;
using cuda::calib::check_cusolver;

bool factorization_ok(DeviceContext& ctx, const int* d_info) {
  int info = 0;
  ATOM_CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return info == 0;
}

// a <- the upper Cholesky factor U of (h + damp I)^-1 (= U^T U), column-major k x k, as the CPU's
// inverse_cholesky_upper: Cholesky (lower), inverse from it, mirrored, Cholesky (upper). False when a
// factorization finds the matrix not positive definite.
bool inverse_cholesky_upper(DeviceContext& ctx, const double* h, std::int64_t k, double damp, double* a) {
  cudaStream_t s = ctx.stream();
  const int n = static_cast<int>(k);
  ATOM_CUDA_CHECK(cudaMemcpyAsync(a, h, static_cast<std::size_t>(k * k) * sizeof(double), cudaMemcpyDeviceToDevice, s));
  cuda::calib::add_to_diagonal(a, k, damp, s);
  int lwork_lower = 0, lwork_inverse = 0, lwork_upper = 0;
  check_cusolver(cusolverDnDpotrf_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, a, n, &lwork_lower),
                 "cusolverDnDpotrf_bufferSize");
  check_cusolver(cusolverDnDpotri_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, a, n, &lwork_inverse),
                 "cusolverDnDpotri_bufferSize");
  check_cusolver(cusolverDnDpotrf_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_UPPER, n, a, n, &lwork_upper),
                 "cusolverDnDpotrf_bufferSize");
  const int lwork = std::max({lwork_lower, lwork_inverse, lwork_upper, 1});
  StreamBuffer<double> work(static_cast<std::size_t>(lwork), s);
  StreamBuffer<int> info(1, s);
  check_cusolver(cusolverDnDpotrf(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, a, n, work.get(), lwork, info.get()),
                 "cusolverDnDpotrf");
  if (!factorization_ok(ctx, info.get())) return false;
  check_cusolver(cusolverDnDpotri(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, a, n, work.get(), lwork, info.get()),
                 "cusolverDnDpotri");
  if (!factorization_ok(ctx, info.get())) return false;
  cuda::calib::mirror_lower_to_upper(a, k, s);
  check_cusolver(cusolverDnDpotrf(ctx.solver(), CUBLAS_FILL_MODE_UPPER, n, a, n, work.get(), lwork, info.get()),
                 "cusolverDnDpotrf");
  return factorization_ok(ctx, info.get());
}

template <typename T>
std::vector<T> download(const StreamBuffer<T>& d, std::size_t offset, std::size_t count, DeviceContext& ctx) {
  std::vector<T> host(count);
  if (count > 0) {
    ATOM_CUDA_CHECK(cudaMemcpyAsync(host.data(), d.get() + offset, count * sizeof(T), cudaMemcpyDeviceToHost,
                                    ctx.stream()));
  }
  ctx.synchronize();
  return host;
}

std::int64_t checked_width(std::int64_t k) {
  if (k <= 0 || k > cuda::calib::kMaxSquareSide) fail("CudaHessianAccumulator: bad width {}", k);
  return k;
}

}  // namespace

CudaHessianAccumulator::CudaHessianAccumulator(DeviceContext& ctx, std::int64_t k)
    : ctx_(ctx), k_(checked_width(k)), sum_(static_cast<std::size_t>(k * k), ctx.stream()),
      chunk_(sum_.size(), ctx.stream()) {
  sum_.zero();
}

void CudaHessianAccumulator::add(const float* x, std::int64_t m) {
  if (m <= 0) return;
  if (m > std::numeric_limits<int>::max()) fail("CudaHessianAccumulator: {} rows at once", m);
  const float one = 1.0f, zero = 0.0f;
  // Column-major: x is X^T (k x m, ld k), and SYRK's A A^T is X^T X.
  check_cublas(cublasSsyrk(ctx_.blas(), CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, static_cast<int>(k_), static_cast<int>(m),
                           &one, x, static_cast<int>(k_), &zero, chunk_.get(), static_cast<int>(k_)),
               "cublasSsyrk (Hessian)");
  cuda::calib::add_upper_triangle(chunk_.get(), k_, sum_.get(), ctx_.stream());
  samples_ += m;
}

StreamBuffer<double> CudaHessianAccumulator::take_hessian() {
  chunk_.reset();
  if (samples_ > 0) {
    cuda::calib::scale_and_symmetrize_upper(sum_.get(), k_, 2.0 / static_cast<double>(samples_), ctx_.stream());
  }
  return std::move(sum_);
}

QuantizedLinearWeights cuda_gptq_quantize(DeviceContext& ctx, std::span<const float> w, std::int64_t n,
                                          const double* hessian, std::span<const std::int32_t> perm,
                                          const WeightQuantSpec& spec, const GptqOptions& options, const char* what,
                                          GptqReport* report) {
  const auto K = static_cast<std::int64_t>(perm.size());
  check_gptq_arguments(w, n, K * K, perm, spec, options, what);
  if (K > cuda::calib::kMaxSquareSide || n > std::numeric_limits<int>::max())
    fail("{}: [{} x {}] is too large for the GPU quantizer (at most {} inputs)", what, n, K, cuda::calib::kMaxSquareSide);
  const std::int64_t Kn = K - spec.n_outliers, G = spec.group, groups = Kn / G, B = options.block;
  cudaStream_t s = ctx.stream();
  GptqReport rep;

  // Columns in the reordered order, one after the other (wt[j, r]), and H in that order.
  StreamBuffer<std::int32_t> d_perm;
  d_perm.upload(perm, s);
  StreamBuffer<float> wt(static_cast<std::size_t>(K * n), s);
  {
    StreamBuffer<float> d_w;
    d_w.upload(w, s);
    cuda::calib::gather_columns(d_w.get(), n, K, d_perm.get(), wt.get(), s);
  }
  StreamBuffer<double> h(static_cast<std::size_t>(K * K), s);
  cuda::calib::gather_symmetric(hessian, K, d_perm.get(), h.get(), s);
  std::vector<double> diag(static_cast<std::size_t>(K));
  ATOM_CUDA_CHECK(cudaMemcpy2DAsync(diag.data(), sizeof(double), h.get(), static_cast<std::size_t>(K + 1) * sizeof(double),
                                    sizeof(double), static_cast<std::size_t>(K), cudaMemcpyDeviceToHost, s));
  ctx.synchronize();
  static const double kOne = 1.0;
  double diag_sum = 0.0;
  for (std::int64_t i = 0; i < K; ++i) {
    if (!std::isfinite(diag[i])) fail("{}: Hessian diagonal entry {} is not finite", what, perm[i]);
    if (diag[i] == 0.0) {  // channel never active: any weight works; zero it as the reference does
      diag[i] = 1.0;
      ATOM_CUDA_CHECK(cudaMemcpyAsync(h.get() + i * K + i, &kOne, sizeof(double), cudaMemcpyHostToDevice, s));
      ATOM_CUDA_CHECK(cudaMemsetAsync(wt.get() + i * n, 0, static_cast<std::size_t>(n) * sizeof(float), s));
      ++rep.dead_columns;
    }
    diag_sum += diag[i];
  }

  StreamBuffer<float> u(static_cast<std::size_t>(K * K), s);
  {
    StreamBuffer<double> a(static_cast<std::size_t>(K * K), s);
    double damp = options.percdamp * diag_sum / static_cast<double>(K);
    for (;;) {
      if (inverse_cholesky_upper(ctx, h.get(), K, damp, a.get())) break;
      if (rep.retries == options.damp_retries) fail_not_positive_definite(what, damp, options, rep.retries);
      ++rep.retries;
      damp *= 10.0;
    }
    rep.damp = damp;
    h.reset();
    cuda::calib::upper_to_row_major_f32(a.get(), K, u.get(), s);
  }

  StreamBuffer<std::int8_t> codes(static_cast<std::size_t>(Kn * n), s);
  StreamBuffer<std::uint16_t> scales(static_cast<std::size_t>(n * groups), s);
  StreamBuffer<float> err(static_cast<std::size_t>(B * n), s);
  StreamBuffer<double> loss(static_cast<std::size_t>(n), s);
  loss.zero();
  cuda::calib::GptqBlockArgs args;
  args.wt = wt.get();
  args.n = n;
  args.k = K;
  args.u = u.get();
  args.group = G;
  args.groups = groups;
  args.static_groups = options.static_groups;
  args.format = spec.format;
  args.clip = spec.clip;
  args.scales = scales.get();
  args.codes = codes.get();
  args.err = err.get();
  args.loss = loss.get();
  if (options.static_groups) cuda::calib::gptq_group_scales(args, Kn, s);
  const float minus_one = -1.0f, one = 1.0f;
  for (std::int64_t i1 = 0; i1 < Kn; i1 += B) {
    const std::int64_t i2 = std::min(i1 + B, Kn);
    args.begin = i1;
    args.end = i2;
    cuda::calib::gptq_quantize_block(args, s);
    if (i2 < K) {
      // Lazy update of every later column, outliers included: wt[i2:, :] -= U[i1:i2, i2:]^T err. Column-major:
      // W (n x (K - i2), ld n) -= E (n x b, ld n) * U[i1:i2, i2:], the latter the transpose of the
      // ((K - i2) x b, ld K) column-major block at u + i1 * K + i2.
      check_cublas(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(n), static_cast<int>(K - i2),
                               static_cast<int>(i2 - i1), &minus_one, err.get(), static_cast<int>(n),
                               u.get() + i1 * K + i2, static_cast<int>(K), &one, wt.get() + i2 * n,
                               static_cast<int>(n)),
                   "cublasSgemm (GPTQ lazy update)");
    }
  }

  QuantizedLinearWeights q;
  q.n = n;
  q.k_normal = Kn;
  q.n_outliers = spec.n_outliers;
  q.group = G;
  q.format = spec.format;
  const bool packed = format_is_packed(spec.format);
  StreamBuffer<std::uint8_t> rows(static_cast<std::size_t>(n * format_row_bytes(spec.format, Kn)), s);
  cuda::calib::pack_code_rows(codes.get(), n, Kn, packed, rows.get(), s);
  q.packed = download(rows, 0, rows.size(), ctx);
  q.scales = download(scales, 0, scales.size(), ctx);
  const std::vector<double> row_loss = download(loss, 0, loss.size(), ctx);
  for (const double l : row_loss) rep.loss += l;
  const std::vector<float> outlier_columns =
      download(wt, static_cast<std::size_t>(Kn * n), static_cast<std::size_t>(spec.n_outliers * n), ctx);
  set_outlier_codes(outlier_columns.data(), q);
  q.perm.assign(perm.begin(), perm.end());
  if (report) *report = rep;
  return q;
}

}  // namespace atom::quant
