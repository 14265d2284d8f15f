#!/usr/bin/env bash
# Install Cove and its dependencies into ./.venv, at the versions in constraints.txt (idempotent).
# torch is pinned to the CPU build that lies on the build machines. llama-cpp-python is compiled
# for this machine's CPU by scripts/llama-build.sh (about 10 minutes on 2 cores the first time; the
# wheel is cached per flag set, never in pip's cache, which ignores CMAKE_ARGS).
#   scripts/install.sh --rebuild-llama                         # rebuild llama.cpp for this CPU
#   COVE_LLAMA_CPU=portable scripts/install.sh --rebuild-llama # the AVX2 set only, no AVX-512/AMX
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# constraints.txt holds the exact versions Cove is tested with: a fresh install gets those, not
# whatever was released since. EXTRAS=test,bench adds the benchmark's LangChain baseline.
python -m pip install --quiet -c constraints.txt "torch==2.13.0"
# The llama.cpp build: reinstalled whenever the wheel for this machine's flags is not the one in the
# venv (a venv copied from another machine, a changed flag set, --rebuild-llama).
rebuild=""
[ "${1:-}" = "--rebuild-llama" ] && rebuild="--rebuild"
wheel=$(PYTHON=python scripts/llama-build.sh $rebuild)
stamp=.venv/cove-llama-build.txt
if [ -n "$rebuild" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wheel" ] || ! python -c "import llama_cpp" 2>/dev/null; then
  python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "$wheel"
  cp "$(dirname "$wheel")/cmake-args.txt" .venv/cove-llama-cmake-args.txt
  echo "$wheel" >"$stamp"
fi
python -m pip install --quiet -c constraints.txt -e ".[${EXTRAS:-test}]"
echo "Cove installed in $(pwd)/.venv"
