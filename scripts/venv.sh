#!/usr/bin/env bash
# Create .venv (if missing) and install litgpt_clone into it. Sourced by demo.sh and test.sh.
# CPU machines: torch is pinned to the CPU build by constraints.txt (an unpinned torch pulls a multi-GB CUDA build).
# CUDA machines: set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) to install a CUDA torch first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRA="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" torch --index-url "$TORCH_INDEX_URL"
  "${PIP[@]}" -e ".${EXTRA:+[$EXTRA]}"
else
  "${PIP[@]}" -c constraints.txt "torch==2.13.0"
  "${PIP[@]}" -c constraints.txt -e ".${EXTRA:+[$EXTRA]}"
fi
