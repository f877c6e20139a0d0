#pragma once
// The quantizer's work on the CPU (quantizer_backend.h): the windows' hidden states in host memory, the
// calibration forward through the CPU backend's fake-quantized linears and KV stores, fp64 Hessians, GPTQ
// on OpenBLAS / LAPACK.
#include <memory>

#include "quant/quantizer_backend.h"

namespace atom::quant {

std::unique_ptr<QuantizerBackend> make_cpu_quantizer_backend(const CalibrationSetup& setup);

}  // namespace atom::quant
