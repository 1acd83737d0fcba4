#!/usr/bin/env bash
# Command 1 of the README: install into .venv and run the end-to-end demo offline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh 2>&1 | { grep -v "^WARNING: Location" || true; }
exec .venv/bin/python -m litgpt_clone.demo "$@"
