#!/usr/bin/env bash
# The engine and server tests under ThreadSanitizer (GCC): builds their two test executables into build-tsan/
# and runs `ctest -L '^(engine|server)$'` but CpuModelRunner.* (below): the engine thread, the client threads
# that submit and cancel, the HTTP transport's poller and workers. Any report fails the test that caused it
# (halt_on_error); scripts/tsan.supp holds the suppressions, each with its reason.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${ATOM_TSAN_BUILD_DIR:-$ROOT/build-tsan}
JOBS=${ATOM_JOBS:-$(nproc)}
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DATOM_TSAN=ON -DATOM_ENABLE_CUDA=OFF >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target test_engine test_server
# One OpenMP thread: libgomp is not built with TSan, so TSan cannot see the barrier that ends a parallel
# region and reports the region's shared variables against what the entering thread does next (first seen:
# TensorStore::load_f32's region and fix_up_f32 after it). With one thread a region runs on the thread that
# enters it, so every access of the engine, client and HTTP threads is still checked; races between the
# OpenMP threads of one region are not (TSan cannot check them against libgomp).
export OMP_NUM_THREADS=1
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/scripts/tsan.supp}
# Not CpuModelRunner.*: they step the engine on the test's own thread (no engine thread, no clients) through
# the demo model, so with one OpenMP thread TSan has nothing to compare in them, and they took ~400 s of the
# run's ~410 s on one core.
ctest --test-dir "$BUILD" -L '^(engine|server)$' -E '^CpuModelRunner\.' --output-on-failure -j "$JOBS"
