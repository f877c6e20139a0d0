#!/usr/bin/env bash
# Fresh machine -> all CPU tests: installs dependencies, builds, fetches the demo model, runs `ctest -L cpu`.
# GPU tests (label "cuda") run on a GPU machine with: ctest --test-dir build -L cuda
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/install_deps.sh"
bash "$ROOT/scripts/build.sh"
bash "$ROOT/scripts/fetch_model.sh" >/dev/null
bash "$ROOT/scripts/build_corpora.sh" >/dev/null
ctest --test-dir "${ATOM_BUILD_DIR:-$ROOT/build}" -L cpu --output-on-failure -j "$(nproc)"
