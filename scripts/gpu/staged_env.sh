# Sourced by the scripts/gpu/*_run.sh scripts on the GPU machine: the repository root as working directory,
# STAGE (binaries staged by scripts/gpu/stage_all.sh) with its libraries on the loader path, and OUT created
# (default: the caller's DEFAULT_OUT).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
STAGE=.devbuild/all
OUT=${OUT:-$DEFAULT_OUT}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$STAGE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
