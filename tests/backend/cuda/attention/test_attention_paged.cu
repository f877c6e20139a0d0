// Decode and prefill attention over random paged caches (fp16, UINT8, UINT4) vs an fp64 reference that
// decodes the cache with the format's rule (quant::dequantize_asymmetric_value). Pages are scattered
// through the pool; sequence lengths hit page boundaries, one token and zero tokens; GQA groups 1, 3,
// 4 and 8; forced and automatic splits. Outputs are poisoned with NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/attention/attention_kernels.h"
#include "backend/cuda/common/cuda_check.h"
#include "common/half.h"
#include "format/format.h"

namespace atom::cuda {
namespace {

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n, unsigned char fill = 0xFF) : n_(n) {
    ATOM_CUDA_CHECK(cudaMalloc(&ptr_, std::max<std::size_t>(n, 1) * sizeof(T)));
    ATOM_CUDA_CHECK(cudaMemset(ptr_, fill, std::max<std::size_t>(n, 1) * sizeof(T)));  // 0xFFFF: fp16 NaN
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    ATOM_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr_); }
  T* get() const { return ptr_; }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    ATOM_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  std::size_t n_;
};

// A random pool and sequences scattered over it; host copy for the reference.
struct RandomCache {
  PagedKvCache desc;
  std::vector<std::uint8_t> k_codes, v_codes;
  std::vector<std::uint32_t> k_params, v_params;
  int block_table_stride = 0;  // (declared before block_tables: make_tables sets it)
  std::vector<std::int32_t> kv_lens, block_tables;
  DeviceArray<std::uint8_t> d_k_codes, d_v_codes;
  DeviceArray<std::uint32_t> d_k_params, d_v_params;
  DeviceArray<std::int32_t> d_kv_lens, d_block_tables;

  static std::vector<std::uint8_t> random_codes(std::mt19937& rng, const PagedKvCache& c) {
    std::vector<std::uint8_t> codes(c.codes_bytes());
    if (c.dtype == KvDtype::kF16) {
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (std::size_t i = 0; i < codes.size(); i += 2) {
        const std::uint16_t h = fp32_to_fp16(normal(rng));
        std::memcpy(&codes[i], &h, 2);
      }
    } else {
      std::uniform_int_distribution<int> byte(0, 255);
      for (auto& b : codes) b = static_cast<std::uint8_t>(byte(rng));
    }
    return codes;
  }
  static std::vector<std::uint32_t> random_params(std::mt19937& rng, const PagedKvCache& c) {
    if (c.dtype == KvDtype::kF16) return {};
    const float qmax = c.dtype == KvDtype::kU4 ? 15.0f : 255.0f;
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    std::vector<std::uint32_t> params(c.rows() * static_cast<std::size_t>(c.groups()));  // random per group
    for (auto& p : params) {
      const std::uint16_t scale = fp32_to_fp16(u(rng) * 2.0f / qmax);
      const std::uint16_t lo = fp32_to_fp16(-fp16_to_fp32(scale) * qmax * 0.5f * u(rng));
      p = scale | (static_cast<std::uint32_t>(lo) << 16);
    }
    return params;
  }
  static int pages_for(const std::vector<int>& lens, int page_size) {
    int total = 0;
    for (int len : lens) total += (len + page_size - 1) / page_size;
    return std::max(total + 3, 1);  // a few pages nobody uses
  }
  static PagedKvCache make_desc(KvDtype dtype, int d, int hkv, int page_size, int pages, int group_size) {
    PagedKvCache c;
    c.dtype = dtype;
    c.group_size = group_size;
    c.head_dim = d;
    c.num_kv_heads = hkv;
    c.page_size = page_size;
    c.num_pages = pages;
    return c;
  }

  RandomCache(std::mt19937& rng, KvDtype dtype, int d, int hkv, int page_size, const std::vector<int>& lens,
              int group_size = 0)
      : desc(make_desc(dtype, d, hkv, page_size, pages_for(lens, page_size), group_size)),
        k_codes(random_codes(rng, desc)),
        v_codes(random_codes(rng, desc)),
        k_params(random_params(rng, desc)),
        v_params(random_params(rng, desc)),
        kv_lens(lens.begin(), lens.end()),
        block_tables(make_tables(rng, lens, page_size, desc.num_pages, block_table_stride)),
        d_k_codes(k_codes),
        d_v_codes(v_codes),
        d_k_params(k_params.empty() ? std::vector<std::uint32_t>{0} : k_params),
        d_v_params(v_params.empty() ? std::vector<std::uint32_t>{0} : v_params),
        d_kv_lens(kv_lens),
        d_block_tables(block_tables) {
    desc.k_codes = d_k_codes.get();
    desc.v_codes = d_v_codes.get();
    desc.k_params = dtype == KvDtype::kF16 ? nullptr : d_k_params.get();
    desc.v_params = dtype == KvDtype::kF16 ? nullptr : d_v_params.get();
  }

  static std::vector<std::int32_t> make_tables(std::mt19937& rng, const std::vector<int>& lens, int page_size,
                                               int num_pages, int& stride) {
    std::vector<std::int32_t> pages(num_pages);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    stride = 1;
    for (int len : lens) stride = std::max(stride, (len + page_size - 1) / page_size + 1);
    std::vector<std::int32_t> tables(lens.size() * stride, 0);
    std::size_t next = 0;
    for (std::size_t b = 0; b < lens.size(); ++b) {
      for (int i = 0; i < (lens[b] + page_size - 1) / page_size; ++i) tables[b * stride + i] = pages[next++];
    }
    return tables;
  }

  // Decoded element i of token t of KV head h of sequence b.
  double value(bool is_v, int b, int t, int h, int i) const {
    const int page = block_tables[b * block_table_stride + t / desc.page_size];
    const std::size_t row = (static_cast<std::size_t>(page) * desc.num_kv_heads + h) * desc.page_size + t % desc.page_size;
    const auto& codes = is_v ? v_codes : k_codes;
    const int d = desc.head_dim;
    if (desc.dtype == KvDtype::kF16) {
      std::uint16_t bits;
      std::memcpy(&bits, &codes[(row * d + i) * 2], 2);
      return fp16_to_fp32(bits);
    }
    const int groups = desc.groups();
    const std::uint32_t p = (is_v ? v_params : k_params)[row * groups + i / (d / groups)];
    std::uint8_t code;
    if (desc.dtype == KvDtype::kU8) {
      code = codes[row * d + i];
    } else {
      const std::uint8_t byte = codes[row * (d / 2) + i / 2];
      code = i % 2 == 0 ? (byte & 0xF) : (byte >> 4);
    }
    return quant::dequantize_asymmetric_value(code, static_cast<std::uint16_t>(p & 0xFFFF), static_cast<std::uint16_t>(p >> 16));
  }

  // Sequence b's first n tokens of KV head h, decoded: [n, D].
  std::vector<double> dense(bool is_v, int b, int h, int n) const {
    const int d = desc.head_dim;
    std::vector<double> out(static_cast<std::size_t>(n) * d);
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < d; ++i) out[static_cast<std::size_t>(t) * d + i] = value(is_v, b, t, h, i);
    }
    return out;
  }
};

// fp64 attention of one query (fp16 bits) over the first n rows of dense K and V.
std::vector<double> attend(const std::uint16_t* q, const std::vector<double>& k, const std::vector<double>& v, int n,
                           int d, double sm_scale) {
  std::vector<double> out(d, 0.0);
  if (n == 0) return out;
  std::vector<double> s(n);
  double mx = -INFINITY;
  for (int t = 0; t < n; ++t) {
    double dot = 0;
    for (int i = 0; i < d; ++i) dot += fp16_to_fp32(q[i]) * k[static_cast<std::size_t>(t) * d + i];
    s[t] = dot * sm_scale;
    mx = std::max(mx, s[t]);
  }
  double l = 0;
  for (int t = 0; t < n; ++t) {
    s[t] = std::exp(s[t] - mx);
    l += s[t];
  }
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < d; ++i) out[i] += s[t] / l * v[static_cast<std::size_t>(t) * d + i];
  }
  return out;
}

// ||got - want|| / ||want||; NaN (unwritten) fails.
double rel_error(const std::uint16_t* got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = fp16_to_fp32(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - want[i]) * (g - want[i]);
    den += want[i] * want[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct Heads {
  int qo, kv;
};

std::vector<std::uint16_t> random_queries(std::mt19937& rng, std::size_t n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::uint16_t> q(n);
  for (auto& x : q) x = fp32_to_fp16(normal(rng));
  return q;
}

// group_size: channels per (scale, min) pair (0: the head). max_kv_len: 0 = the longest sequence; larger =
// what a captured graph passes (the whole context).
void run_decode(KvDtype dtype, int d, Heads heads, const std::vector<int>& lens, int num_splits, int page_size = 16,
                int group_size = 0, int max_kv_len = 0) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(std::string("dtype=") + kv_dtype_name(dtype) + " D=" + std::to_string(d) + " Hq=" +
               std::to_string(heads.qo) + " Hkv=" + std::to_string(heads.kv) + " splits=" +
               std::to_string(num_splits) + " page=" + std::to_string(page_size) + " group=" +
               std::to_string(group_size) + " max_kv_len=" + std::to_string(max_kv_len) + " seed=" +
               std::to_string(seed));
  std::mt19937 rng(seed);
  RandomCache cache(rng, dtype, d, heads.kv, page_size, lens, group_size);
  const int batch = static_cast<int>(lens.size());
  const auto q = random_queries(rng, static_cast<std::size_t>(batch) * heads.qo * d);
  DeviceArray<std::uint16_t> d_q(q), d_out(q.size());
  DecodeParams p;
  p.cache = cache.desc;
  p.batch = batch;
  p.num_qo_heads = heads.qo;
  p.q = d_q.get();
  p.q_token_stride = static_cast<std::int64_t>(heads.qo) * d;
  p.q_head_stride = d;
  p.out = d_out.get();
  p.out_token_stride = p.q_token_stride;
  p.out_head_stride = d;
  p.kv_lens = cache.d_kv_lens.get();
  p.block_tables = cache.d_block_tables.get();
  p.block_table_stride = cache.block_table_stride;
  p.max_kv_len = std::max(max_kv_len, *std::max_element(lens.begin(), lens.end()));
  p.sm_scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.num_splits = num_splits;
  DeviceArray<std::uint8_t> workspace(std::max<std::size_t>(decode_workspace_bytes(p), 1));
  p.workspace = workspace.get();
  p.workspace_bytes = decode_workspace_bytes(p);
  if (num_splits > 0) {
    EXPECT_LE(decode_num_splits(p), num_splits);
    EXPECT_GE(decode_num_splits(p), 1);
  }
  attention_decode(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto out = d_out.download();
  const int group = heads.qo / heads.kv;
  double worst = 0;
  for (int b = 0; b < batch; ++b) {
    for (int kvh = 0; kvh < heads.kv; ++kvh) {
      const auto k = cache.dense(false, b, kvh, lens[b]), v = cache.dense(true, b, kvh, lens[b]);
      for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        const std::size_t at = (static_cast<std::size_t>(b) * heads.qo + h) * d;
        worst = std::max(worst, rel_error(&out[at], attend(&q[at], k, v, lens[b], d, p.sm_scale)));
      }
    }
  }
  EXPECT_LT(worst, 2e-3) << "worst relative L2 error over (sequence, head)";
}

TEST(CudaAttentionDecode, MatchesReferenceAcrossFormatsAndGroups) {
  const std::vector<int> lens = {1, 15, 16, 17, 300, 0, 47};
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    for (int d : {64, 128}) {
      for (Heads heads : {Heads{4, 4}, Heads{8, 2}, Heads{9, 3}, Heads{8, 1}}) {
        for (int splits : {0, 1, 7}) run_decode(dtype, d, heads, lens, splits);
      }
    }
  }
}

// Caches with a params word per group of 32 or 64 channels (UINT4 on the CUDA-core kernel, whatever the page).
TEST(CudaAttentionDecode, GroupsOfChannels) {
  const std::vector<int> lens = {1, 15, 16, 17, 300, 0, 47};
  for (KvDtype dtype : {KvDtype::kU8, KvDtype::kU4}) {
    for (auto [d, group] : {std::pair{64, 32}, {128, 32}, {128, 64}, {64, 64}}) {
      for (Heads heads : {Heads{4, 4}, Heads{8, 2}, Heads{9, 3}, Heads{8, 1}}) {
        for (int splits : {0, 7}) run_decode(dtype, d, heads, lens, splits, 16, group);
      }
    }
    run_decode(dtype, 128, Heads{8, 2}, lens, 0, 8, 32);
    run_decode(dtype, 128, Heads{4, 1}, {4097}, 64, 16, 32);
  }
}

TEST(CudaAttentionDecode, LongContextSplits) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU4}) {
    run_decode(dtype, 128, Heads{2, 2}, {5000, 3}, 0);
    run_decode(dtype, 128, Heads{4, 1}, {4097}, 64);
  }
}

// Every token of a sequence lies in exactly one split, splits are whole 16-token tiles of at least min_chunk
// tokens (except a sequence's last), and a sequence uses all splits once its length allows.
TEST(CudaAttentionDecode, SplitRangesCoverEachSequenceOnce) {
  for (int splits : {1, 2, 7, 64}) {
    for (int min_chunk : {16, 256}) {
      for (int len = 0; len <= 5000; len += len < 64 ? 1 : 37) {
        int next = 0, used = 0;
        for (int s = 0; s < splits; ++s) {
          const DecodeSplitRange r = decode_split_range(len, splits, min_chunk, s);
          ASSERT_EQ(r.begin, next) << "len " << len << " splits " << splits << " split " << s;
          ASSERT_LE(r.begin, r.end);
          ASSERT_EQ(r.begin % 16 == 0 || r.begin == len, true);
          if (r.end < len) ASSERT_GE(r.end - r.begin, min_chunk);
          used += r.end > r.begin;
          next = r.end;
        }
        ASSERT_EQ(next, len) << "len " << len << " splits " << splits;
        if (len >= splits * std::max(min_chunk, 16)) EXPECT_EQ(used, splits) << "len " << len;
      }
    }
  }
}

// A captured decode graph passes the whole context as max_kv_len: the split count follows it, and each
// sequence splits its own length (the short ones use fewer splits, the rest are empty).
TEST(CudaAttentionDecode, SplitsFollowEachSequenceUnderALooseBound) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    run_decode(dtype, 128, Heads{32, 8}, {700, 3000, 16, 0, 257}, 0, 16, 0, 8192);
    run_decode(dtype, 64, Heads{8, 2}, {1, 513, 4096}, 0, 16, 0, 16384);
    run_decode(dtype, 128, Heads{4, 4}, {33, 1000}, 9, 16, 0, 4096);
  }
}

// One block walks the whole sequence: long accumulations in one warp (the tensor-core UINT4 path lost
// precision there when fed offset codes).
TEST(CudaAttentionDecode, LongContextWithoutSplit) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    run_decode(dtype, 128, Heads{2, 2}, {4096, 1500}, 1);
    run_decode(dtype, 64, Heads{8, 1}, {3000}, 1);
  }
}

// Page size 8 takes the CUDA-core UINT4 kernel (16-token tiles would straddle pages); 32 and 64 the MMA one.
TEST(CudaAttentionDecode, PageSizes) {
  const std::vector<int> lens = {1, 31, 32, 33, 250, 0};
  for (int page : {8, 32, 64}) {
    for (KvDtype dtype : {KvDtype::kU4, KvDtype::kF16}) {
      run_decode(dtype, 128, Heads{8, 2}, lens, 0, page);
      run_decode(dtype, 64, Heads{3, 3}, lens, 5, page);
    }
  }
}

TEST(CudaAttentionDecode, RejectsBadParams) {
  std::mt19937 rng(1);
  RandomCache cache(rng, KvDtype::kU4, 128, 2, 16, {20});
  DeviceArray<std::uint16_t> q(4 * 128), out(4 * 128);
  DecodeParams p;
  p.cache = cache.desc;
  p.batch = 1;
  p.num_qo_heads = 4;
  p.q = q.get();
  p.q_token_stride = 4 * 128;
  p.q_head_stride = 128;
  p.out = out.get();
  p.out_token_stride = 4 * 128;
  p.out_head_stride = 128;
  p.kv_lens = cache.d_kv_lens.get();
  p.block_tables = cache.d_block_tables.get();
  p.block_table_stride = cache.block_table_stride;
  p.max_kv_len = 20;
  p.sm_scale = 0.088f;
  p.num_splits = 1;
  EXPECT_NO_THROW(attention_decode(p, nullptr));
  auto bad = p;
  bad.num_qo_heads = 5;
  EXPECT_THROW(attention_decode(bad, nullptr), std::exception);
  bad = p;
  bad.num_splits = 2;  // needs a workspace
  EXPECT_THROW(attention_decode(bad, nullptr), std::exception);
  bad = p;
  bad.num_qo_heads = 18;  // 9 query heads per KV head
  EXPECT_THROW(attention_decode(bad, nullptr), std::exception);
  bad = p;
  bad.cache.v_params = p.cache.v_params + 1;  // copied in 16-byte chunks
  EXPECT_THROW(attention_decode(bad, nullptr), std::exception);
  bad = p;
  bad.cache.group_size = 16;  // a decode lane's dims would span two groups
  EXPECT_THROW(attention_decode(bad, nullptr), std::exception);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
}

struct Span {
  int q_len, kv_len;
};

void run_prefill(KvDtype dtype, int d, Heads heads, const std::vector<Span>& spans, bool causal, int page_size = 16,
                 int group_size = 0) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(std::string("dtype=") + kv_dtype_name(dtype) + " D=" + std::to_string(d) + " Hq=" +
               std::to_string(heads.qo) + " Hkv=" + std::to_string(heads.kv) + " causal=" +
               std::to_string(causal) + " page=" + std::to_string(page_size) + " group=" +
               std::to_string(group_size) + " seed=" + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<int> lens;
  std::vector<std::int32_t> indptr = {0};
  int max_q = 0;
  for (const Span& s : spans) {
    lens.push_back(s.kv_len);
    indptr.push_back(indptr.back() + s.q_len);
    max_q = std::max(max_q, s.q_len);
  }
  RandomCache cache(rng, dtype, d, heads.kv, page_size, lens, group_size);
  const int total_q = indptr.back();
  const auto q = random_queries(rng, static_cast<std::size_t>(total_q) * heads.qo * d);
  DeviceArray<std::uint16_t> d_q(q), d_out(q.size());
  DeviceArray<std::int32_t> d_indptr(indptr);
  PrefillParams p;
  p.cache = cache.desc;
  p.batch = static_cast<int>(spans.size());
  p.num_qo_heads = heads.qo;
  p.max_q_len = max_q;
  p.q = d_q.get();
  p.q_token_stride = static_cast<std::int64_t>(heads.qo) * d;
  p.q_head_stride = d;
  p.out = d_out.get();
  p.out_token_stride = p.q_token_stride;
  p.out_head_stride = d;
  p.qo_indptr = d_indptr.get();
  p.kv_lens = cache.d_kv_lens.get();
  p.block_tables = cache.d_block_tables.get();
  p.block_table_stride = cache.block_table_stride;
  p.sm_scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.causal = causal;
  attention_prefill(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto out = d_out.download();
  const int group = heads.qo / heads.kv;
  double worst = 0;
  for (std::size_t b = 0; b < spans.size(); ++b) {
    for (int kvh = 0; kvh < heads.kv; ++kvh) {
      const int n = spans[b].kv_len;
      const auto k = cache.dense(false, static_cast<int>(b), kvh, n), v = cache.dense(true, static_cast<int>(b), kvh, n);
      for (int i = 0; i < spans[b].q_len; ++i) {
        const int visible = causal ? n - spans[b].q_len + i + 1 : n;
        for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
          const std::size_t at = (static_cast<std::size_t>(indptr[b] + i) * heads.qo + h) * d;
          worst = std::max(worst, rel_error(&out[at], attend(&q[at], k, v, visible, d, p.sm_scale)));
        }
      }
    }
  }
  // fp16 operands (dequantized K/V, probabilities) on the tensor cores: a few 1e-3.
  EXPECT_LT(worst, 6e-3) << "worst relative L2 error over (query, head)";
}

TEST(CudaAttentionPrefill, CausalRaggedBatch) {
  const std::vector<Span> spans = {{1, 1}, {37, 37}, {69, 100}, {130, 130}, {5, 200}};
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    for (int d : {64, 128}) {
      for (Heads heads : {Heads{4, 4}, Heads{8, 2}, Heads{9, 3}}) run_prefill(dtype, d, heads, spans, true);
    }
  }
}

TEST(CudaAttentionPrefill, PageSizes) {
  run_prefill(KvDtype::kU4, 128, Heads{8, 2}, {{37, 37}, {69, 100}}, true, 8);
  run_prefill(KvDtype::kU8, 64, Heads{4, 4}, {{70, 70}, {5, 130}}, true, 64);
}

TEST(CudaAttentionPrefill, GroupsOfChannels) {
  const std::vector<Span> spans = {{1, 1}, {37, 37}, {69, 100}, {130, 130}, {5, 200}};
  for (KvDtype dtype : {KvDtype::kU8, KvDtype::kU4}) {
    for (auto [d, group] : {std::pair{64, 32}, {128, 32}, {128, 64}}) {
      for (Heads heads : {Heads{4, 4}, Heads{8, 2}, Heads{9, 3}}) run_prefill(dtype, d, heads, spans, true, 16, group);
    }
    run_prefill(dtype, 128, Heads{4, 2}, {{20, 20}, {70, 90}}, false, 8, 32);
  }
}

TEST(CudaAttentionPrefill, NonCausal) {
  run_prefill(KvDtype::kU4, 128, Heads{4, 2}, {{20, 20}, {70, 90}}, false);
  run_prefill(KvDtype::kF16, 64, Heads{2, 2}, {{65, 65}}, false);
}

}  // namespace
}  // namespace atom::cuda
