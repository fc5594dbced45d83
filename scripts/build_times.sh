#!/usr/bin/env bash
# The build, measured: configures each LibTorch build afresh (Ninja, no compiler cache), builds it with
# every core, and prints each target's compile time (from .ninja_log), the sum and the wall time; with
# --trace also where a translation unit's time goes (clang's -ftime-trace on the umbrella header alone
# and on the largest test unit: phases, costliest headers, costliest templates; gcc's -ftime-report
# phases for the same header).
#   scripts/build_times.sh [--trace] [debian|venv ...]     default: both; results under build-times/
# Nothing else should run meanwhile: the times are wall-clock times of parallel compiles.
set -euo pipefail
cd "$(dirname "$0")/.."
trace=0
builds=()
for a in "$@"; do
  case "$a" in
    --trace) trace=1 ;;
    debian|venv) builds+=("$a") ;;
    *) echo "usage: $0 [--trace] [debian|venv ...]" >&2; exit 2 ;;
  esac
done
((${#builds[@]})) || builds=(debian venv)
command -v ninja >/dev/null || { echo "build_times.sh needs ninja (Debian: ninja-build)" >&2; exit 2; }
root=${PEFT_BUILD_TIMES_DIR:-build-times}
summary=$root/summary.md
mkdir -p "$root"
{
  echo "# Build times, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "$(c++ --version | head -1); $(cmake --version | head -1); ninja $(ninja --version)"
} > "$summary"
for b in "${builds[@]}"; do
  dir=$root/$b
  rm -rf "$dir"
  ./scripts/configure.sh "$b" "$dir" -DPEFT_CCACHE=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > "$root/$b.configure.log"
  torch=$(sed -n 's/^Torch_VERSION:[A-Z]*=//p; s/^Torch_DIR:PATH=//p' "$dir/CMakeCache.txt" | head -1)
  t0=$(date +%s.%N)
  ninja -C "$dir" -j "$(nproc)" > "$root/$b.build.log"
  wall=$(echo "$(date +%s.%N) - $t0" | bc)
  {
    echo
    echo "## $b build ($(grep -m1 -o 'Torch [0-9.]*\|Found Torch: [^ ]*' "$root/$b.configure.log" || echo "$torch"))"
    echo
    printf 'wall time: %.0f s (%s)\n\n' "$wall" "$(date -u -d@${wall%.*} +%M\ min\ %S\ s)"
    python3 scripts/python/build_times.py ninja "$dir"
  } | tee -a "$summary"
  if ((trace)) && command -v clang++ >/dev/null; then
    # The flags of the largest test unit, for clang (gcc-only flags dropped) and for gcc.
    unit=$(ls -S "$dir"/tests/CMakeFiles/peft_tests.dir/Unity/*.cxx | head -1)
    flags=$(python3 -c '
import json, shlex, sys
for c in json.load(open(sys.argv[1])):
    if c["file"].endswith(sys.argv[2]):
        a = shlex.split(c["command"])[1:]
        out, skip = [], False
        for x in a:
            if skip: skip = False; continue
            if x in ("-o", "-c", "-MT", "-MF", "-include"): skip = True; continue
            if x in ("-MD", "-Winvalid-pch") or x.endswith(".cxx"): continue
            out.append(x)
        print(" ".join(shlex.quote(x) for x in out)); break' "$dir/compile_commands.json" "$(basename "$unit")")
    echo '#include <peft/peft.hpp>' > "$root/$b.header_only.cpp"
    (
      echo; echo "### where the time goes ($b)"
      for src in "$root/$b.header_only.cpp" "$unit"; do
        stem=$(basename "${src%.*}")
        eval clang++ $flags -include catch2/catch.hpp -w -ftime-trace -ftime-trace-granularity=50 -c "$src" -o "$root/$b.$stem.o"
        echo; echo "clang -ftime-trace, $(basename "$src") ($(echo "$src" | grep -q header_only && echo 'the umbrella header alone' || echo 'a test unit: several test files'))"
        python3 scripts/python/build_times.py trace "$root/$b.$stem.json" 12
      done
      echo; echo "gcc -ftime-report, the umbrella header alone:"
      eval c++ $flags -ftime-report -c "$root/$b.header_only.cpp" -o /dev/null 2>&1 | grep -E "^ phase|TOTAL"
    ) | tee -a "$summary"
  fi
done
echo "written: $summary"
