#!/usr/bin/env bash
# Create .venv (if missing) and install litgpt_clone into it. Sourced by demo.sh and test.sh.
# CPU machines: torch is pinned to the CPU build by constraints.txt (an unpinned torch pulls a multi-GB CUDA build).
# CUDA machines: set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) to install a CUDA torch first.
# The install needs the package index once: a stamp of what was installed (the project files, the extra, the torch
# index) lets later runs, offline ones included, skip it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRA="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=".venv/.installed-$(cat pyproject.toml constraints.txt | { cat; echo "${TORCH_INDEX_URL:-}"; } | sha256sum | cut -c1-16)"
grep -qxF "[$EXTRA]" "$STAMP" 2>/dev/null && exit 0  # (the stamp lists the extras installed: [] is the base)
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" torch --index-url "$TORCH_INDEX_URL"
  "${PIP[@]}" -e ".${EXTRA:+[$EXTRA]}"
else
  "${PIP[@]}" -c constraints.txt "torch==2.13.0"
  "${PIP[@]}" -c constraints.txt -e ".${EXTRA:+[$EXTRA]}"
fi
printf '[]\n[%s]\n' "$EXTRA" >> "$STAMP"
