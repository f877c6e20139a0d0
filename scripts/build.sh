#!/usr/bin/env bash
# Configures and builds Atom into build/ (CUDA targets too when nvcc is found; CUDA archs from
# $ATOM_CUDA_ARCHS, default 90a). Usage: scripts/build.sh [extra cmake args]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${ATOM_BUILD_DIR:-$ROOT/build}
JOBS=${ATOM_JOBS:-$(nproc)}
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DATOM_CUDA_ARCHS="${ATOM_CUDA_ARCHS:-90a}" "$@" >/dev/null
cmake --build "$BUILD" -j "$JOBS"
