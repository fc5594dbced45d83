#!/usr/bin/env bash
# On a GPU machine with a CUDA PyTorch (no network, no apt): builds the library's tests, examples and
# benchmarks against that PyTorch's LibTorch with CUDA, then runs one phase. Logs and results go to $OUT
# (default: build-gpu/out).
#
#   scripts/gpu_check.sh test      the whole CTest suite, CUDA cases included
#   scripts/gpu_check.sh unit      the test binary's cases only (quicker: no consumers, fuzzer, examples)
#   scripts/gpu_check.sh bench     method_bench on CUDA: bert-base fp32 and bf16, llama-1b bf16
#   scripts/gpu_check.sh compare   benchmarks/compare_hf_peft.py --device cuda --dtype bfloat16, batch 1/8/32,
#                                  each cell also profiled on both sides (profile_summary_cuda_<gpu>.md)
#
# The header-only packages the build needs (nlohmann-json, CLI11, Catch2 v2, zlib's headers) and
# Fashion-MNIST come from a folder .devdeps/ made on a Debian machine that has them:
#   scripts/gpu_check.sh deps
set -uo pipefail
cd "$(dirname "$0")/.."
phases=("${@:?usage: gpu_check.sh deps|test|bench|compare ...}")
phase=$1
build=${PEFT_GPU_BUILD:-build-gpu}
out=${OUT:-$build/out}
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }

if [ "$phase" = deps ]; then
  rm -rf .devdeps && mkdir -p .devdeps/include .devdeps/share/cmake .devdeps/lib/cmake .devdeps/data
  cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/catch2 /usr/include/zlib.h /usr/include/zconf.h .devdeps/include/
  cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 .devdeps/share/cmake/
  cp -r /usr/lib/cmake/Catch2 .devdeps/lib/cmake/
  cp $(dpkg -L catch2 | grep "\.a$") .devdeps/lib/
  cp /usr/share/datasets/fashion-mnist/*.gz .devdeps/data/
  du -sh .devdeps
  exit 0
fi

deps=$PWD/.devdeps
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
export PEFT_FASHION_MNIST=$deps/data
zlib_args=()
if [ ! -f /usr/include/zlib.h ]; then
  lib=$(ls /usr/lib/x86_64-linux-gnu/libz.so* /lib/x86_64-linux-gnu/libz.so* 2>/dev/null | head -1)
  zlib_args=(-DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$lib")
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  stamp configure
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
  python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)' | tee -a "$out/gpu.txt"
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$deps;$torch_prefix" \
        -DCMAKE_CUDA_ARCHITECTURES=90 "${zlib_args[@]}" > "$out/configure.log" 2>&1 \
    || { tail -40 "$out/configure.log"; exit 1; }
fi

# Result files carry the GPU's short name: method_bench_bert-base_cuda_h100_float32.json, ...
gpu_tag=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o -i -E 'h100|h200|a100|l4|l40s' | head -1 | tr 'A-Z' 'a-z')
gpu_tag=${gpu_tag:-gpu}

status=0
for phase in "${phases[@]}"; do
case "$phase" in
  test | unit)
    # unit: the test binary's cases only (CUDA ones included), no consumer builds, fuzzer, examples or benchmarks.
    target=(); exclude=()
    [ "$phase" = unit ] && target=(--target peft_tests peft_hf_tests) && exclude=(-E 'consumer|fuzz|example|benchmark|cli')
    stamp build
    cmake --build "$build" -j "$(nproc)" "${target[@]}" > "$out/build.log" 2>&1 || { grep -E 'error|Error' "$out/build.log" | head -40; exit 1; }
    stamp ctest
    (cd "$build" && ctest --output-on-failure -j 8 --timeout 900 "${exclude[@]}") > "$out/ctest.log" 2>&1
    rc=$?
    grep -E 'tests passed|tests failed|Skipped|Failed|\*\*\*|Total Test' "$out/ctest.log" | tail -40
    stamp done
    [ $rc -eq 0 ] || status=$rc ;;  # the phases after it still run
  bench)
    stamp build
    cmake --build "$build" -j "$(nproc)" --target method_bench > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
    for run in "bert-base float32" "bert-base bfloat16" "llama-1b bfloat16"; do
      set -- $run
      stamp "method_bench $1 $2"
      "$build/benchmarks/method_bench" --config "$1" --device cuda --dtype "$2" --reps 15 --warmup 3 \
        --out "$out" --suffix "_${gpu_tag}_$2" 2>&1 | tee -a "$out/method_bench.log" | tail -20
    done
    stamp done ;;
  compare)
    stamp build
    cmake --build "$build" -j "$(nproc)" --target method_bench > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
    stamp compare
    PYTHONUNBUFFERED=1 python3 benchmarks/compare_hf_peft.py --bench "$build/benchmarks/method_bench" --device cuda \
      --dtype bfloat16 --configs bert-base llama-1b --batches 1 8 32 --seq 512 --warmup 3 --reps 10 \
      --out "$out/compare_hf_peft_cuda_${gpu_tag}" --profile "$build/profile" 2>&1 | tee "$out/compare.log"
    stamp "profile summary"
    python3 benchmarks/profile_summary.py "$build/profile" --out "$out/profile_summary_cuda_${gpu_tag}.md" > /dev/null
    stamp done ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
done
# The device tool brings back at most 8 files: pack the results into one archive beside the logs.
(cd "$out" && ls *.json *.md >/dev/null 2>&1 && tar czf results.tar.gz *.json *.md && rm -f *.json *.md)
exit $status
