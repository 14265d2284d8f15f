#!/usr/bin/env bash
# Install Cove, ingest papers, show the library, then start the chat app on http://127.0.0.1:8501.
#   scripts/run.sh                         # the curated reading list (needs internet)
#   scripts/run.sh --from ../shared/corpus # local PDFs, fully offline
# COVE_APP__PORT=8600 scripts/run.sh ...   # another port
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
exec cove chat
