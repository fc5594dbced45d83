#!/usr/bin/env bash
# The build, measured: configures each LibTorch build afresh (Ninja, no compiler cache), builds it with
# every core, and prints each target's compile time (from .ninja_log), the sum and the wall time; with
# --trace also where a translation unit's time goes (clang's -ftime-trace on the umbrella header alone
# and on the largest test unit: phases, costliest headers, costliest templates; gcc's -ftime-report
# phases for the same header).
#   scripts/build_times.sh [--trace] [--no-build] [debian|venv ...]   default: both; results under build-times/
#   (--no-build: only the trace, of a folder the script built before)
# Nothing else should run meanwhile: the times are wall-clock times of parallel compiles.
set -euo pipefail
cd "$(dirname "$0")/.."
trace=0
build=1
builds=()
for a in "$@"; do
  case "$a" in
    --trace) trace=1 ;;
    --no-build) build=0 ;;
    debian|venv) builds+=("$a") ;;
    *) echo "usage: $0 [--trace] [--no-build] [debian|venv ...]" >&2; exit 2 ;;
  esac
done
((${#builds[@]})) || builds=(debian venv)
command -v ninja >/dev/null || { echo "build_times.sh needs ninja (Debian: ninja-build)" >&2; exit 2; }
root=${PEFT_BUILD_TIMES_DIR:-build-times}
summary=$root/summary.md
mkdir -p "$root"
((build)) || summary=$root/trace.md
{
  echo "# Build times, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "$(c++ --version | head -1); $(cmake --version | head -1); ninja $(ninja --version)"
} > "$summary"
for b in "${builds[@]}"; do
  dir=$root/$b
  if ((build)); then
    rm -rf "$dir"
    ./scripts/configure.sh "$b" "$dir" -DPEFT_CCACHE=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > "$root/$b.configure.log"
    case "$b" in
      debian) torch="Debian's LibTorch $(dpkg-query -W -f='${Version}' libtorch-dev 2>/dev/null || echo '?')" ;;
      venv) torch="the venv's LibTorch $(.venv/bin/python -c 'import torch; print(torch.__version__)')" ;;
    esac
    t0=$(date +%s)
    ninja -C "$dir" -j "$(nproc)" > "$root/$b.build.log"
    wall=$(($(date +%s) - t0))
    {
      echo
      echo "## $b build: $torch"
      echo
      echo "wall time: $wall s ($((wall / 60)) min $((wall % 60)) s)"
      echo
      python3 scripts/python/build_times.py ninja "$dir"
    } | tee -a "$summary"
  fi
  if ((trace)) && command -v clang++ >/dev/null; then
    # The flags of the slowest test unit (without its output, dependency and PCH flags), for clang and gcc.
    unit=$(python3 scripts/python/build_times.py longest "$dir" 'peft_tests.dir/Unity/')
    unit=$dir/${unit%.o}
    flags=$(python3 scripts/python/build_times.py flags "$dir" "$unit")
    echo '#include <peft/peft.hpp>' > "$root/$b.header_only.cpp"
    (
      echo; echo "### where the time goes ($b)"
      for src in "$root/$b.header_only.cpp" "$unit"; do
        stem=$(basename "${src%.*}")
        # the test units' precompiled header, included as a copy of its text (clang would take the .gch
        # beside it for its own PCH)
        prefix=()
        if [[ $src == *Unity* ]]; then
          cp "$dir/tests/CMakeFiles/peft_tests.dir/cmake_pch.hxx" "$root/$b.test_prefix.hpp"
          prefix=(-include "$root/$b.test_prefix.hpp")
        fi
        eval clang++ -std=gnu++17 $flags '"${prefix[@]}"' -w -ftime-trace -ftime-trace-granularity=50 -c "$src" -o "$root/$b.$stem.o"
        echo; echo "clang -ftime-trace, $(basename "$src") ($(echo "$src" | grep -q header_only && echo 'the umbrella header alone' || echo 'a test unit: several test files'))"
        python3 scripts/python/build_times.py trace "$root/$b.$stem.json" 12
      done
      echo; echo "gcc -ftime-report, the umbrella header alone:"
      eval c++ $flags -ftime-report -c "$root/$b.header_only.cpp" -o /dev/null 2>&1 | grep -E "^ phase|TOTAL"
    ) | tee -a "$summary"
  fi
done
echo "written: $summary"
