#!/usr/bin/env bash
# End-to-end checks of the `atom` CLI: usage errors, info, generate, eval ppl --json, convert, tokenize.
# Usage: test_cli.sh ATOM_BINARY SOURCE_DIR
set -uo pipefail
ATOM=$1
SRC=$2
MODEL=$SRC/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=$SRC/.cache/corpora/kjv/test.txt
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then echo "ok   $name"; else echo "FAIL $name"; failures=$((failures + 1)); fi
}
expect_fail_with() {  # expect_fail_with PATTERN CMD...: non-zero exit and PATTERN in stderr+stdout
  local pattern=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  [[ $rc -ne 0 ]] && grep -q -- "$pattern" <<<"$out"
}

check "no subcommand -> usage error" expect_fail_with "subcommand" "$ATOM"
check "generate without --model" expect_fail_with "model" "$ATOM" generate --prompt hi
check "unknown option" expect_fail_with "not expected" "$ATOM" info "$MODEL" --bogus
check "missing checkpoint named" expect_fail_with "/nonexistent/model.gguf" "$ATOM" info /nonexistent/model.gguf
echo "not a model" > "$TMP/junk.bin"
check "junk file named" expect_fail_with "junk.bin" "$ATOM" info "$TMP/junk.bin"
check "bad temperature" expect_fail_with "temperature" "$ATOM" generate -m "$MODEL" -p hi --temperature -1
check "synthetic model on the cpu" expect_fail_with "device cuda only" "$ATOM" bench serve --model synthetic:llama-2-7b
check "--precision on a checkpoint" expect_fail_with "synthetic models" "$ATOM" bench serve -m "$MODEL" --precision fp16
# Without a usable GPU (or a CUDA build) the CUDA backend says so before loading anything.
check "--device cuda without a GPU" expect_fail_with "cuda" "$ATOM" bench serve --device cuda -m "$MODEL"
check "tokenize without a tokenizer" expect_fail_with "model PATH or --tokenizer" "$ATOM" tokenize
check "tokenize --model and --tokenizer" expect_fail_with "excludes" "$ATOM" tokenize -m "$MODEL" --tokenizer x.json
check "--gpu-memory-gb on the cpu" expect_fail_with "gpu-memory-gb" "$ATOM" bench serve -m "$MODEL" --gpu-memory-gb 24

check "unknown command named" expect_fail_with "unknown command 'bogus'" "$ATOM" bogus
# Bounds are named plainly (not as the largest double, 309 digits).
top_k=$("$ATOM" generate -m "$MODEL" -p hi --top-k -5 2>&1)
check "--top-k -5 names the bound" grep -q "must be >= 0, got -5" <<<"$top_k"
check "--top-k message is short" test "${#top_k}" -lt 300
mkdir -p "$TMP/adir"
check "--text directory named as such" expect_fail_with "is a directory" "$ATOM" eval ppl -m "$MODEL" --text "$TMP/adir"
check "--calib directory named as such" expect_fail_with "is a directory" "$ATOM" quantize -m "$MODEL" --calib "$TMP/adir" --out "$TMP/q-unused"
check "--kv-centering on an unquantized KV cache" expect_fail_with "kv_bits 16" \
  "$ATOM" quantize -m "$MODEL" --calib "$TEXT" --out "$TMP/q-unused" --kv-bits 16 --kv-centering keys
check "--kv-centering values is not offered" expect_fail_with "kv-centering" \
  "$ATOM" quantize -m "$MODEL" --calib "$TEXT" --out "$TMP/q-unused" --kv-centering values
check "--tensor-parallel on the GPU quantizer is refused" expect_fail_with "tensor-parallel layouts" \
  "$ATOM" quantize -m "$MODEL" --calib "$TEXT" --out "$TMP/q-unused" --tensor-parallel 3 --device cuda
# A model that cannot load ends `atom serve` (it used to hang waiting for a listener that never started).
serve_ok=1
for i in 1 2 3 4 5 6; do
  out=$(timeout 20 "$ATOM" serve --model /nonexistent.gguf --port 0 2>&1); rc=$?
  if [[ $rc -eq 124 || $rc -eq 0 ]] || ! grep -q "/nonexistent.gguf" <<<"$out"; then serve_ok=0; echo "  run $i: rc $rc: $out"; fi
done
check "serve with a missing model exits with an error" test $serve_ok -eq 1

if [[ ! -s $MODEL ]]; then
  if [[ ${ATOM_SKIP_MODEL_TESTS:-0} == 1 ]]; then echo "model absent: skipping model checks"; exit $((failures ? 1 : 77)); fi
  echo "FAIL: $MODEL is missing; run scripts/fetch_model.sh"; exit 1
fi
check "--tensor-parallel 2 of SmolLM2's 9 heads is refused by name" expect_fail_with "num_heads 9 is not divisible" \
  "$ATOM" quantize -m "$MODEL" --calib "$TEXT" --out "$TMP/q-unused" --tensor-parallel 2

info=$("$ATOM" info "$MODEL" 2>&1)
check "info architecture" grep -q "architecture   llama" <<<"$info"
check "info layers" grep -q "layers         30" <<<"$info"

answer=$("$ATOM" generate -m "$MODEL" --chat --temperature 0 --max-tokens 24 -p "What is the capital of France?" 2>/dev/null)
echo "  answer: $answer"
check "generate answers Paris" grep -q "Paris" <<<"$answer"

if [[ -s $TEXT ]]; then
  last=$("$ATOM" eval ppl -m "$MODEL" --text "$TEXT" --ctx 128 --max-windows 2 --json 2>/dev/null | tail -n 1)
  check "eval ppl --json" python3 -c "import json,sys; j=json.loads(sys.argv[1]); assert 1 < j['ppl'] < 100 and j['tokens'] == 254 and j['seconds'] > 0" "$last"
fi

check "convert to HF directory" "$ATOM" convert "$MODEL" "$TMP/smollm2-hf" --dtype f32
check "convert refuses to overwrite" expect_fail_with "already exists" "$ATOM" convert "$MODEL" "$TMP/smollm2-hf"
dir_info=$("$ATOM" info "$TMP/smollm2-hf" 2>&1)
check "converted info" grep -q "heads          9 query, 3 key/value, head_dim 64" <<<"$dir_info"
answer_hf=$("$ATOM" generate -m "$TMP/smollm2-hf" --chat --temperature 0 --max-tokens 24 -p "What is the capital of France?" 2>/dev/null)
check "converted model generates the same text" test "$answer" == "$answer_hf"

# atom tokenize: the GGUF's tokenizer and the converted directory's tokenizer.json agree; ids go back to text.
ids=$(printf 'Hello, world! Caf\xc3\xa9.' | "$ATOM" tokenize -m "$MODEL" --no-special-tokens 2>&1)
echo "  ids: $ids"
check "tokenize prints ids" grep -Eq '^[0-9]+( [0-9]+)+$' <<<"$ids"
ids_json=$(printf 'Hello, world! Caf\xc3\xa9.' | "$ATOM" tokenize --tokenizer "$TMP/smollm2-hf/tokenizer.json" --no-special-tokens)
check "tokenize --tokenizer tokenizer.json agrees" test "$ids" == "$ids_json"
printf 'Hello, world! Caf\xc3\xa9.' > "$TMP/text.txt"
check "tokenize --file" test "$("$ATOM" tokenize -m "$MODEL" --no-special-tokens --file "$TMP/text.txt")" == "$ids"
back=$(echo "$ids" | "$ATOM" tokenize -m "$MODEL" --ids)
check "tokenize --ids round-trips" test "$back" == "$(cat "$TMP/text.txt")"
check "tokenize --ids takes a list" test "$(echo "[${ids// /, }]" | "$ATOM" tokenize -m "$MODEL" --ids)" == "$back"
check "tokenize --ids names a bad id" expect_fail_with "id 1 is 99999999, outside the vocabulary" \
  bash -c "echo '1 99999999' | '$ATOM' tokenize -m '$MODEL' --ids"
check "tokenize --ids names a non-integer" expect_fail_with "id 2 is 'x7', not an integer" \
  bash -c "echo '1,2,x7' | '$ATOM' tokenize -m '$MODEL' --ids"
check "tokenize names a missing file" expect_fail_with "/nonexistent.txt" "$ATOM" tokenize -m "$MODEL" --file /nonexistent.txt

# Trailing slash and --force: the output is replaced, not deleted (the staging directory is a sibling).
check "convert OUT/ --force replaces" "$ATOM" convert "$MODEL" "$TMP/smollm2-hf/" --force --dtype f16
check "convert OUT/ --force left a model" test -s "$TMP/smollm2-hf/model.safetensors"
check "convert OUT/ --force left no staging directory" test -z "$(ls -d "$TMP"/smollm2-hf.* 2>/dev/null)"
check "convert into a new OUT/" "$ATOM" convert "$MODEL" "$TMP/fresh-hf/" --dtype f16
check "convert into a new OUT/ wrote" test -s "$TMP/fresh-hf/config.json"
mkdir -p "$TMP/other.tmp-convert" && echo precious > "$TMP/other.tmp-convert/keep"
check "convert keeps a pre-existing OUT.tmp-convert" bash -c "'$ATOM' convert '$MODEL' '$TMP/other' --dtype f16 >/dev/null 2>&1 && test -s '$TMP/other.tmp-convert/keep'"

# One line of bad UTF-8 in `atom chat` is reported and dropped; the chat goes on.
chat_out=$(printf 'caf\xe9\nSay hi.\n' | "$ATOM" chat -m "$MODEL" --temperature 0 --max-tokens 4 2>&1); rc=$?
check "chat survives a non-UTF-8 line" test $rc -eq 0
check "chat names the bad line" grep -q "not valid UTF-8" <<<"$chat_out"

[[ $failures -eq 0 ]] || { echo "$failures check(s) failed"; exit 1; }
