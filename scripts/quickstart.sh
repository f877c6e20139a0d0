#!/usr/bin/env bash
# Fresh machine -> SmolLM2 answering a prompt: installs dependencies, builds, fetches the model,
# converts it to a Hugging Face directory, and generates with the chat template.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/install_deps.sh"
bash "$ROOT/scripts/build.sh"
GGUF=$(bash "$ROOT/scripts/fetch_model.sh")
ATOM=${ATOM_BUILD_DIR:-$ROOT/build}/atom
"$ATOM" info "$GGUF"
"$ATOM" generate --model "$GGUF" --chat --max-tokens 96 --temperature 0 \
  --prompt "${1:-What is the capital of France? Answer in one sentence.}"
