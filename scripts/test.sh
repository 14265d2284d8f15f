#!/usr/bin/env bash
# Install everything, lint, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"
