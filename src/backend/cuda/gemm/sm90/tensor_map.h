#pragma once
// Tensor maps (TMA descriptors) for the sm_90 GEMM kernels, encoded on the host through the driver entry point.
#include <cuda.h>

namespace atom::cuda::detail {

// A row-major uint8 matrix [rows, row_bytes] read in boxes of box_bytes x box_rows; rows past `rows` read as
// zero. swizzle_128b stores each box row's 16-byte unit u at u ^ (row % 8) (box_bytes == 128, destination
// 1024-byte aligned): the layout wgmma's 128-byte-swizzle descriptors read. Throws atom::Error on failure.
CUtensorMap make_u8_tensor_map(const void* base, int row_bytes, int rows, int box_bytes, int box_rows,
                               bool swizzle_128b = false);

}  // namespace atom::cuda::detail
