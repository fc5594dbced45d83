#!/usr/bin/env bash
# The whole C++ test suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang 14, Debian's
# LibTorch 1.13), in build-asan/. Too slow for CI's budget beside the two regular builds, so it is a
# script: run it before a release, or after touching memory-sensitive code.
#   ./scripts/sanitize.sh            configure, build, run every test executable's cases
#   ./scripts/sanitize.sh -- '[io]'  pass Catch2 arguments through
# PEFT_JOBS sets the build parallelism (default: every core).
# Exit status 0 only with zero sanitizer findings and every case passing.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${PEFT_ASAN_DIR:-build-asan}
t0=$(date +%s)
phase() { echo "== [$(($(date +%s) - t0)) s] $*"; }
args=()
[ "${1:-}" = "--" ] && { shift; args=("$@"); }

phase "configure ($build: clang, -fsanitize=address,undefined)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DPEFT_BUILD_BENCHMARKS=OFF -DPEFT_BUILD_EXAMPLES=ON
phase "build"
cmake --build "$build" -j "${PEFT_JOBS:-$(nproc)}" --target peft_tests peft_hf_tests peft-cli
# LibTorch is not instrumented: its own allocations are not checked, and leak checking would report
# its process-lifetime caches, so it is off. Everything the library and the tests do is checked.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for exe in peft_tests peft_hf_tests; do
  phase "run $exe"
  set +e
  "$build/tests/$exe" "${args[@]}" > "$build/$exe.log" 2>&1
  rc=$?
  set -e
  tail -5 "$build/$exe.log"
  if [ $rc -ne 0 ]; then status=1; fi
  if grep -qE "ERROR: AddressSanitizer|runtime error:" "$build/$exe.log"; then
    echo "sanitizer findings in $exe (see $build/$exe.log)"; status=1
  fi
done
phase "done (status $status)"
exit $status
