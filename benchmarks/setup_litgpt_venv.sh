#!/usr/bin/env bash
# Install the real LitGPT 0.5.13 (CPU torch) in its own virtual environment, beside the repo, for
# side-by-side benchmarks (benchmarks/forward_backward.py --litgpt-python <venv>/bin/python).
# It pins older huggingface-hub/transformers/datasets/jsonargparse than litgpt_clone wants, hence its own venv.
# Steps follow ../shared/anchors/README.md: torch first, then litgpt with the CPU constraints, then drop
# torchvision (PyPI's 0.28.0 is a CUDA build whose import breaks lightning). About 1.5-4 min, 2.2 GB.
#
# usage: benchmarks/setup_litgpt_venv.sh [VENV_DIR]   (default: ../litgpt-venv relative to the repo root)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO_ROOT/../litgpt-venv}"
CONSTRAINTS="${LITGPT_CONSTRAINTS:-$REPO_ROOT/../shared/anchors/litgpt-cpu-constraints.txt}"
PYTHON="${PYTHON:-python3}"

if [ ! -f "$CONSTRAINTS" ]; then
    echo "constraints file not found: $CONSTRAINTS (set LITGPT_CONSTRAINTS=/path/to/litgpt-cpu-constraints.txt)" >&2
    exit 1
fi

# litdata and lightning query the package index at import (one with no timeout): switch that off.
export LITDATA_DISABLE_VERSION_CHECK=1 LIGHTNING_DISABLE_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install "torch==2.13.0"
"$VENV/bin/pip" install -c "$CONSTRAINTS" "litgpt[extra]==0.5.13"
"$VENV/bin/pip" uninstall -y torchvision

"$VENV/bin/python" -c "from litgpt.model import GPT, Config; import litgpt, torch; from importlib.metadata import version; print('litgpt', version('litgpt'), 'torch', torch.__version__, 'OK')"
echo "LitGPT venv ready: $VENV (benchmarks/forward_backward.py --litgpt-python $VENV/bin/python)"
