# Sourced by the CTest scripts that need real transformers and peft: sets $py to the pinned venv's
# Python, or reports the test skipped (exit 77, not passed) when that environment is absent.
#   . "$root/tests/venv.sh"
py="$root/.venv/bin/python"
if [ ! -x "$py" ] || ! "$py" -c "import peft, transformers" 2>/dev/null; then
  echo "PEFT_SKIPPED: no Python environment with peft at $root/.venv (run ./scripts/python_env.sh)"
  exit 77
fi
