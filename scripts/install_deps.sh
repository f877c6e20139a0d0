#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian 12 machine (idempotent).
set -euo pipefail
APT_PACKAGES=(
  build-essential cmake pkg-config
  libgtest-dev libgmock-dev       # tests
  nlohmann-json3-dev              # JSON
  libcli11-dev                    # CLI parsing
  libfmt-dev                      # formatting (GCC 12 has no <format>)
  libcpp-httplib-dev              # HTTP server
  libopenblas-dev                 # BLAS for the fp32 reference path
  libpcre2-dev                    # Unicode regexes of the tokenizer pre-splitters
  zlib1g-dev                      # gzip-compressed tokenizer.json files
  bible-kjv bible-kjv-text r-cran-janeaustenr  # public-domain corpora
  python3-pip unzip
  clang-14 libclang-rt-14-dev libomp-14-dev  # libFuzzer + ASan/UBSan runtimes (scripts/fuzz.sh)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Python client of the serving integration test (tests/integration/test_openai_server.py), pinned.
OPENAI_VERSION=3.51.0
if ! python3 -c "import sys, openai; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  python3 -m pip install -q "openai==$OPENAI_VERSION" ||
    python3 -m pip install -q --break-system-packages "openai==$OPENAI_VERSION"
fi
