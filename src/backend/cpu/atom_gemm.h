#pragma once
// AVX2 integer kernels of an Atom linear layer (docs/FORMAT.md): dynamic per-token activation
// quantization fused with the channel reorder, and the grouped INT4/INT3/FP4 (or INT8) x same-format
// product with INT8 outliers, accumulated in int32 per group and scaled in fp32 exactly as
// quant::atom_linear_reference does (bit-exact).
//
// Kernel layout. Weights stay in the canonical packed rows ([N, K_n/2], two nibbles per byte). The
// activations are quantized into an unpacked "split" layout: each chunk of C reordered channels
// (C = 64 when the group size allows, else 32) stores its C/2 even channels, then its C/2 odd channels,
// as unsigned bytes code + offset (8 for INT3/INT4, 12 for FP4's doubled codes). A chunk of C/2 packed
// weight bytes then lines up with it: low nibbles <-> even half, high nibbles <-> odd half, and
// _mm256_maddubs_epi16(unsigned activation, signed weight) multiplies matching channels. The offset adds
// offset * sum(w) per group, which is subtracted (prepared per weight row and group).
// INT8 normal parts (W8A8) and the outliers are plain int8 rows multiplied after widening to int16.
//
// With AVX-512 VNNI (cpu_features.h), INT4 / INT3 weights in groups of 128k use chunk 128 and signed
// activation codes (offset 0) instead, and their codes are stored tile-interleaved (AtomPreparedWeights):
// VPDPBUSD multiplies the weight nibbles XOR 8 (code + 8, unsigned) by the activations, and 8 x the group's
// activation sum is subtracted. Both paths give the same int32 group sums and so the same bits.
#include <cstdint>
#include <span>
#include <vector>

#include "format/format.h"

namespace atom::cpu {

struct AtomPreparedWeights {
  quant::QuantizedLinearWeights q;    // canonical tensors (but q.packed of packed formats: tiled_codes)
  std::int64_t n_pad = 0;             // N rounded up to the tile width (8)
  std::int64_t chunk = 0;             // split-layout chunk (64 or 32) for packed formats; 0 for INT8
  std::int64_t n_out_pad = 0;         // outliers padded with zeros to a multiple of 32
  std::int32_t act_offset = 0;        // added to activation codes in the split layout
  std::vector<float> scales_t;        // [groups, n_pad] weight scales, fp32
  std::vector<std::int32_t> offset_wsum_t;  // [groups, n_pad] act_offset * sum of the group's weight codes
  std::vector<std::int8_t> outliers;        // [n_pad, n_out_pad]
  std::vector<float> outlier_scales;        // [n_pad]
  // Packed formats keep their codes tile-interleaved instead of q.packed (then empty): for each tile of 8
  // outputs, their chunk / 2 byte pieces one after the other, [tile][k_normal / chunk][8][chunk / 2]; the
  // VNNI layout (chunk 128) keeps its scales so too, [tile][groups][8], instead of scales_t (and no offset
  // sums). A tile then reads its weights in one sequential sweep: rows read side by side at their own strides
  // got half the memory bandwidth.
  std::vector<std::uint8_t> tiled_codes;
  std::vector<float> tiled_scales;
  std::vector<std::int32_t> gather;   // [k_normal + n_out_pad]: input channel read at each layout position
                                      // (-1: zero padding of the outliers)
  std::int64_t groups() const { return q.k_normal / q.group; }
};

// Where the layer's input comes from: in the original channel order (the kernel gathers by q.perm), or
// already reordered by the producer (perm fused into the preceding RMSNorm; the kernel reads in order).
enum class InputOrder : std::uint8_t { kOriginal, kReordered };

// Validates q (atom::Error naming `what`) and builds the kernel-side tables. The CPU kernels need the
// group size to be a multiple of 32.
AtomPreparedWeights prepare_atom_weights(quant::QuantizedLinearWeights q, const char* what,
                                         InputOrder order = InputOrder::kOriginal);

// Reordered channel held at position p of the split layout with chunk C (0: natural order).
std::int64_t split_layout_channel(std::int64_t p, std::int64_t chunk);

// Quantized activations in the kernel layout (reusable buffer).
struct AtomActivations {
  std::int64_t m = 0;
  std::vector<std::uint8_t> codes;       // [m, k_normal] split layout (packed formats) or int8 (INT8)
  std::vector<float> scales;             // [m, groups] (fp16 values)
  std::vector<std::int8_t> outliers;     // [m, n_out_pad]
  std::vector<float> outlier_scales;     // [m]
  std::vector<std::int32_t> group_sums;  // [m, groups]: sum of each group's codes (VNNI layout only)
};

// x [m, K] in the original channel order -> a (per token: normal groups with clip ratio `clip`, outliers
// INT8 without clipping). OpenMP over rows.
void quantize_activations_avx2(const float* x, std::int64_t m, const AtomPreparedWeights& w, float clip,
                               AtomActivations& a);

// y [m, N] = the Atom product of a and w. OpenMP over output-channel tiles.
void atom_gemm_avx2(const AtomActivations& a, const AtomPreparedWeights& w, float* y);
// ys[i] = the product of a with ws[i] (at most kMaxSharedProducts of them), for weights that quantize their
// input alike (same_activation_layout): one activation quantization and one OpenMP loop over all their tiles.
// Each y has the bits its product alone gives.
inline constexpr std::size_t kMaxSharedProducts = 4;
void atom_gemm_avx2(const AtomActivations& a, std::span<const AtomPreparedWeights* const> ws,
                    std::span<float* const> ys);

// Whether activations quantized for `a` are also those of `b` (format, group, channel gather, outliers).
bool same_activation_layout(const AtomPreparedWeights& a, const AtomPreparedWeights& b);

// The canonical (FORMAT.md) form of kernel-layout activations, for bit-exact comparison with
// quant::quantize_activations.
quant::QuantizedActivations to_canonical(const AtomActivations& a, const AtomPreparedWeights& w);

}  // namespace atom::cpu
