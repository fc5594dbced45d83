#!/usr/bin/env bash
# The README's two commands. As root on Debian bookworm:
#   ./scripts/run.sh example   installs what is missing, builds in Release, runs the main example
#   ./scripts/run.sh test      installs what is missing, builds, runs the whole test suite (CTest)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
t0=$(date +%s)
phase() { echo "== [$(($(date +%s) - t0)) s] $*"; }
case "$what" in example|test) ;; *) echo "usage: $0 example|test" >&2; exit 2 ;; esac

packages=(cmake make g++ libtorch-dev libopenblas0-openmp catch2 nlohmann-json3-dev libfmt-dev libgloo-dev libcli11-dev
          zlib1g-dev dataset-fashion-mnist clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
phase "packages"
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt_get() { if [ "$(id -u)" -eq 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
  apt_get update -qq
  DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

build=${PEFT_BUILD_DIR:-build}
phase "configure"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
jobs=$(nproc)
if [ "$what" = example ]; then
  phase "build"
  cmake --build "$build" -j "$jobs" --target fashion_mnist
  phase "run the example"
  "$build/examples/fashion_mnist" --out "$build/fashion_lora_adapter"
else
  phase "build"
  cmake --build "$build" -j "$jobs"
  phase "test"
  ctest --test-dir "$build" --output-on-failure -j 1
fi
phase "done"
