#!/usr/bin/env bash
# Command 2 of the README: install the test extra into .venv and run the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh test 2>&1 | { grep -v "^WARNING: Location" || true; }
# pytest-xdist: one test process per core, at most 4 (PYTEST_WORKERS overrides; "$@" may pass -n too); worksteal:
# a worker that runs out of tests takes queued ones from a busy worker, so the run does not end on one long queue
cores=$(nproc 2>/dev/null || echo 2)
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}" --dist worksteal "$@"
