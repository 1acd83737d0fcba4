#!/usr/bin/env bash
# On the lent GPU machine (the device tool's `run`, from the repo root, with `carry: ["gpu_wheels"]`): install the
# wheels made here by `benchmarks/gpu_wheels.py` (the machine has no network) and this repo, then run one GPU
# benchmark; its output also lands in $OUT/<script>.log, which the device tool brings back.
#   bash benchmarks/gpu_run.sh gpu_pretrain.py          # gpu_finetune.py QLoRA also needs bitsandbytes carried
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for wheels in gpu_wheels*/; do  # gpu_wheels/ (CLI, serve, lm-eval) and/or e.g. gpu_wheels_bnb/ (bitsandbytes, 43 MB)
  if [ -d "$wheels" ]; then python3 -m pip install -q --no-index --no-deps "$wheels"*.whl; fi
done
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
script="$1"; shift
mkdir -p "${OUT:-/tmp/gpu_out}"
python3 "benchmarks/$script" "$@" 2>&1 | tee "${OUT:-/tmp/gpu_out}/${script%.py}.log"
