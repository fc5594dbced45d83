#!/usr/bin/env bash
# CTest hf.reverse: adapters trained and saved by our library, loaded by real PEFT (the newest pinned
# one, and 0.13, the oldest we support). Needs the pinned Python environment (scripts/python_env.sh);
# without it the test reports skipped (exit 77), not passed.
#   hf_reverse.sh <peft_hf_tests binary> <repository root> <work dir>
set -euo pipefail
tests_bin=$1 root=$2 work=$3
. "$root/tests/venv.sh"
rm -rf "$work" && mkdir -p "$work"
PEFT_REVERSE_DIR="$work" "$tests_bin" "[.reverse]"
"$py" "$root/tests/hf_reverse.py" "$work"
if [ -d "$root/.venv/peft-0.13" ]; then
  PYTHONPATH="$root/.venv/peft-0.13" "$py" "$root/tests/hf_reverse.py" "$work"
else
  echo "no $root/.venv/peft-0.13: the oldest PEFT was not checked"
  exit 1
fi
