#!/usr/bin/env bash
# Server soak test on the loopback (scripts/soak.py says what it checks). Bounded: SOAK_SECONDS (default 120)
# of load by SOAK_CLIENTS (default 200) clients, at most SOAK_MAX_REQUESTS (default 100000) requests.
# Extra `atom serve` arguments follow the model, e.g. on a GPU machine:
#   scripts/soak.sh [MODEL] --device cuda
# The default pool is small (SOAK_KV_BLOCKS=16 blocks of SOAK_BLOCK_SIZE=8 tokens) so that preemption happens.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
shift || true
ATOM=${ATOM_BIN:-${ATOM_BUILD_DIR:-$ROOT/build}/atom}
[[ -x $ATOM ]] || { echo "soak: $ATOM is missing; run scripts/build.sh" >&2; exit 1; }
[[ -e $MODEL ]] || { echo "soak: $MODEL is missing; run scripts/fetch_model.sh" >&2; exit 1; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
exec python3 "$ROOT/scripts/soak.py" --atom "$ATOM" --model "$MODEL" --duration "${SOAK_SECONDS:-120}" \
  --clients "${SOAK_CLIENTS:-200}" --max-requests "${SOAK_MAX_REQUESTS:-100000}" ${SOAK_JSON:+--json "$SOAK_JSON"} \
  -- --kv-blocks "${SOAK_KV_BLOCKS:-16}" --block-size "${SOAK_BLOCK_SIZE:-8}" --max-batch 32 --http-threads 512 --max-context 512 "$@"
