#pragma once
// The quantizer's work on a GPU (quantizer_backend.h): the windows' hidden states and the linear inputs kept
// between visits live in GPU memory; the calibration forward runs the CPU backend's computation there
// (fake-quantized inputs with the format's codes, fp64 products on cuBLAS, fp32 RMSNorm / RoPE / KV store /
// attention), Hessians are fp32 SYRKs joined in fp64, and GPTQ is cuda_gptq.h. The model's weights stay on
// the host and arrive one linear at a time, so GPU memory holds about one layer's working set plus the
// calibration activations.
#include <cstdint>

#include "backend/cuda/calibration/calibration_kernels.h"
#include "quant/quantizer_backend.h"

namespace atom::quant {

// A factory for quantize_model (QuantizeOptions::backend) on CUDA device `device`. The backend throws
// atom::Error when the device does not exist.
QuantizerBackendFactory cuda_quantizer_backend(int device = 0);

// The calibration kernels' description of an activation quantizer (the one conversion, for the backend and its
// tests).
cuda::calib::ActQuantParams device_act_params(const ActivationQuant& a);

// How many bytes of linear inputs the GPU run may keep between visits (QuantizeOptions::
// activation_budget_bytes): 16 GiB, or half the device's memory when that is less. Throws atom::Error when
// there is no CUDA device: the check `--device cuda` runs first.
std::int64_t cuda_activation_budget_bytes(int device = 0);

}  // namespace atom::quant
