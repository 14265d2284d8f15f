#!/usr/bin/env bash
# Install Cove and its dependencies into ./.venv, at the versions in constraints.txt (idempotent).
# torch is pinned to the CPU build that lies on the build machines; llama-cpp-python compiles from
# source the first time (about 10 minutes on 2 cores) and pip caches the wheel for later installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# constraints.txt holds the exact versions Cove is tested with: a fresh install gets those, not
# whatever was released since. EXTRAS=test,bench adds the benchmark's LangChain baseline.
python -m pip install --quiet -c constraints.txt "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  python -m pip install --quiet -c constraints.txt -e ".[${EXTRAS:-test}]"
echo "Cove installed in $(pwd)/.venv"
