#!/usr/bin/env bash
# Command 1 of the README: install into .venv (once) and run the end-to-end demo offline, from the current folder
# (its files land in ./demo_out unless --out_dir says otherwise).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/venv.sh" 2>&1 | { grep -v "^WARNING: Location" || true; }
exec "$ROOT/.venv/bin/python" -m litgpt_clone.demo "$@"
