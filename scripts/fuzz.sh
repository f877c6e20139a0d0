#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang-14, ASan + UBSan) into build-fuzz/ and runs each for
# SECONDS (default 60), one after another, on one core. Seeds: tests/fuzz/corpus/<target>/ (committed) plus,
# when present, inputs made from the demo model and the shared tokenizer fixtures. Each target keeps its
# growing corpus in build-fuzz/corpus/<target>/; crashes land in build-fuzz/findings/. Prints one line per
# target (executions, coverage, corpus size) and exits non-zero when any target found a crash.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_EACH=${1:-60}
shift || true
BUILD=${ATOM_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
ALL=(fuzz_gguf fuzz_safetensors fuzz_config_json fuzz_tokenizer_json fuzz_tokenizer_encode fuzz_atom_checkpoint
     fuzz_chat_template fuzz_openai_request)
[[ $# -gt 0 ]] && TARGETS=("$@") || TARGETS=("${ALL[@]}")

if [[ ! -f $BUILD/CMakeCache.txt ]]; then
  CC=clang-14 CXX=clang++-14 cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATOM_FUZZ=ON \
    -DATOM_ENABLE_CUDA=OFF -DATOM_BUILD_TESTS=OFF >/dev/null
fi
mkdir -p "$BUILD/logs"
if ! cmake --build "$BUILD" -j "${ATOM_JOBS:-$(nproc)}" --target "${TARGETS[@]}" >"$BUILD/logs/build.log" 2>&1; then
  tail -n 40 "$BUILD/logs/build.log" >&2
  exit 1
fi

# ---- seeds
MODEL=$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
GEN=$BUILD/generated-seeds
mkdir -p "$GEN"
if [[ -s $MODEL && ! -s $GEN/tokenizer.json ]]; then
  # A Hugging Face directory of the demo model: its tokenizer.json and config.json are seeds and the
  # tokenizer that fuzz_tokenizer_encode uses (made by the plain build's CLI, when built).
  rm -rf "$GEN/hf"
  [[ -x $ROOT/build/atom ]] && "$ROOT/build/atom" convert "$MODEL" "$GEN/hf" --dtype f16 >/dev/null 2>&1 || true
  [[ -s $GEN/hf/tokenizer.json ]] && cp "$GEN/hf/tokenizer.json" "$GEN/tokenizer.json"
  [[ -s $GEN/hf/config.json ]] && cp "$GEN/hf/config.json" "$GEN/config.json"
  rm -rf "$GEN/hf"
fi
TOKENIZER=${ATOM_FUZZ_TOKENIZER:-$GEN/tokenizer.json}
[[ -s $TOKENIZER ]] || TOKENIZER=$ROOT/tests/fuzz/corpus/fuzz_tokenizer_json/tiny.json
export ATOM_FUZZ_TOKENIZER=$TOKENIZER
# An Atom checkpoint seed: config.json + the safetensors header (data cut off) of the CI fixture, when built.
ATOM_CKPT=$ROOT/build/tests/smollm2-atom-w4a4
if [[ -s $ATOM_CKPT/config.json && ! -s $GEN/atom_checkpoint ]]; then
  python3 - "$ATOM_CKPT" "$GEN/atom_checkpoint" <<'PY'
import struct, sys
ckpt, out = sys.argv[1], sys.argv[2]
config = open(ckpt + "/config.json", "rb").read()
with open(ckpt + "/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    head = struct.pack("<Q", n) + f.read(n) + f.read(4096)
open(out, "wb").write(config + b"\n--ATOM-SAFETENSORS--\n" + head)
PY
fi

failed=0
mkdir -p "$BUILD/findings" "$BUILD/logs"
for t in "${TARGETS[@]}"; do
  corpus=$BUILD/corpus/$t
  mkdir -p "$corpus"
  seeds=("$ROOT/tests/fuzz/corpus/$t")
  [[ -d $ROOT/tests/fuzz/corpus/$t ]] || seeds=()
  case $t in
    fuzz_config_json) [[ -s $GEN/config.json ]] && cp "$GEN/config.json" "$corpus/smollm2_config.json" ;;
    fuzz_tokenizer_json)
      [[ -s $GEN/tokenizer.json ]] && cp "$GEN/tokenizer.json" "$corpus/smollm2_tokenizer.json"
      for f in "$ROOT"/../shared/fixtures/tokenizers/*/tokenizer.json.gz; do
        [[ -s $f ]] && gunzip -c "$f" > "$corpus/$(basename "$(dirname "$f")").json"
      done 2>/dev/null || true ;;
    fuzz_atom_checkpoint) [[ -s $GEN/atom_checkpoint ]] && cp "$GEN/atom_checkpoint" "$corpus/atom_checkpoint" ;;
  esac
  log=$BUILD/logs/$t.log
  set +e
  nice -n 10 "$BUILD/tests/fuzz/$t" "$corpus" "${seeds[@]}" -max_total_time="$SECONDS_EACH" -timeout=20 \
    -rss_limit_mb=3072 -max_len=1048576 -print_final_stats=1 -artifact_prefix="$BUILD/findings/$t-" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo "?")
  ft=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo "?")
  files=$(find "$corpus" -type f | wc -l)
  status=ok
  if [[ $rc -ne 0 ]]; then status="FINDING (rc $rc; see $log)"; failed=1; fi
  printf '%-24s %8s s  execs %10s  cov %6s  ft %6s  corpus %5s  %s\n' "$t" "$SECONDS_EACH" "$execs" "$cov" "$ft" "$files" "$status"
done
exit $failed
