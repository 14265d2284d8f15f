#!/usr/bin/env bash
# Install Cove and its dependencies into ./.venv (idempotent; safe to re-run).
# torch is pinned to the CPU build that lies on the build machines; llama-cpp-python compiles from
# source the first time (about 10 minutes on 2 cores) and pip caches the wheel for later installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} python -m pip install --quiet -e ".[test]"
echo "Cove installed in $(pwd)/.venv"
