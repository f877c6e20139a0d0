#!/usr/bin/env bash
# Fresh machine -> all CPU tests: installs dependencies, builds, fetches the demo model, runs `ctest -L cpu`.
# GPU tests (label "cuda") run on a GPU machine with: ctest --test-dir build -L cuda
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/install_deps.sh"
bash "$ROOT/scripts/build.sh"
bash "$ROOT/scripts/fetch_model.sh" >/dev/null
bash "$ROOT/scripts/build_corpora.sh" >/dev/null
if [[ ! -d $ROOT/../shared/fixtures/tokenizers ]]; then
  echo "note: $ROOT/../shared/fixtures/tokenizers is missing: the tests of the shared tokenizer fixtures skip" >&2
fi
ctest --test-dir "${ATOM_BUILD_DIR:-$ROOT/build}" -L cpu --output-on-failure -j "$(nproc)"
