#!/usr/bin/env bash
# Install Cove, ingest papers, and show the library.
#   scripts/run.sh                         # the curated reading list (needs internet)
#   scripts/run.sh --from ../shared/corpus # local PDFs, fully offline
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
. .venv/bin/activate
status=0
cove ingest "$@" || status=$?
cove library
if [ "$status" -ne 0 ]; then
  echo "Some sources failed (see the reasons above); the others are in the library." >&2
fi
