#!/usr/bin/env bash
# Command 2 of the README: install the test extra into .venv and run the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh test 2>&1 | { grep -v "^WARNING: Location" || true; }
exec .venv/bin/python -m pytest -q "$@"
