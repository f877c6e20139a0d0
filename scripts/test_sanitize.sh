#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer (GCC): builds the CPU test executables
# into build-asan/ and runs `ctest -L cpu` except the end-to-end tests that drive the CLI and server binaries
# (cli, integration_*, the checkpoint fixture), which the plain build runs. Any sanitizer report fails the test
# that caused it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${ATOM_SANITIZE_BUILD_DIR:-$ROOT/build-asan}
JOBS=${ATOM_JOBS:-$(nproc)}
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DATOM_SANITIZE=ON -DATOM_ENABLE_CUDA=OFF >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target atom_cpu_tests
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/scripts/lsan.supp}
ctest --test-dir "$BUILD" -L cpu -E '^(cli|integration_.*|atom_checkpoint_for_serving)$' --output-on-failure -j "$JOBS"
