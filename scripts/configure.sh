#!/usr/bin/env bash
# Configures one of the project's two builds (shared by run.sh and build_times.sh):
#   scripts/configure.sh debian BUILD_DIR [cmake args...]   Debian's LibTorch 1.13: everything
#   scripts/configure.sh venv   BUILD_DIR [cmake args...]   the pinned venv's LibTorch 2.x (CUDA-enabled
#       wheel: also the CUDA compile): what must be tested on 2.x, the library's tests, the Hugging Face
#       conformance tests, peft-cli and the benchmarks (2.x-only ones and CUDA statistics among them);
#       the examples are built once, in the Debian build.
# Ninja when it is installed (a folder configured before with another generator keeps its own).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:?usage: configure.sh debian|venv BUILD_DIR [cmake args...]}
dir=${2:?usage: configure.sh debian|venv BUILD_DIR [cmake args...]}
shift 2
args=(-DCMAKE_BUILD_TYPE=Release)
if command -v ninja >/dev/null && [ ! -f "$dir/CMakeCache.txt" ]; then
  args+=(-G Ninja)
fi
case "$which" in
  debian) ;;
  venv)
    py=.venv/bin/python
    torch_cmake=$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
    torch_root=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
    args+=(-DCMAKE_PREFIX_PATH="$torch_root;$torch_cmake" -DTorch_DIR="$torch_cmake/Torch"
           -DCaffe2_DIR="$torch_cmake/Caffe2" -DPEFT_BUILD_EXAMPLES=OFF)
    if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
      args+=(-DCMAKE_CUDA_ARCHITECTURES=90)  # no GPU to detect here: H100's sm_90
      export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    fi
    ;;
  *) echo "configure.sh: expected debian or venv, got '$which'" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${args[@]}" "$@"
