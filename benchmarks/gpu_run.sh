#!/usr/bin/env bash
# On the lent GPU machine (the device tool's `run`, from the repo root, with `carry: ["gpu_wheels"]`): install the
# wheels made here by `benchmarks/gpu_wheels.py` (the machine has no network) and this repo once, then run GPU
# benchmarks one after another. Each job is "SECONDS:script.py [args]" (a script in benchmarks/) or "SECONDS:command
# [args]" (e.g. "120:python3 -m pytest -q -m gpu tests/"): it is stopped after SECONDS (0: no cap) and the next one
# runs anyway; its output also lands in $OUT/<script or command>.log, which the device tool brings back.
#   bash benchmarks/gpu_run.sh "0:gpu_pretrain.py"
#   bash benchmarks/gpu_run.sh "120:gpu_finetune.py --budget 110" "240:gpu_pretrain.py --budget 230" "100:gpu_serve.py"
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_out}"; mkdir -p "$out"
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for wheels in gpu_wheels*/; do  # gpu_wheels/ (CLI, serve, lm-eval, litgpt for the baselines, bitsandbytes)
  if [ -d "$wheels" ]; then python3 -m pip install -q --no-index --no-deps --no-compile "$wheels"*.whl || exit 1; fi
done
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
echo "installed in $((SECONDS - start))s"
for job in "$@"; do
  cap="${job%%:*}"; read -r -a cmd <<< "${job#*:}"
  script="${cmd[0]}"; began=$SECONDS
  if [[ "$script" == *.py ]]; then cmd=(python3 "benchmarks/$script" "${cmd[@]:1}"); fi  # else a command, e.g. "python3 -m pytest -m gpu"
  log="$out/$(basename "${script%.py}").log"
  echo "=== ${cmd[*]} (cap ${cap}s, at ${began}s)"
  if [ "$cap" -gt 0 ]; then
    timeout --kill-after=10 "$cap" "${cmd[@]}" 2>&1 | tee "$log"
  else
    "${cmd[@]}" 2>&1 | tee "$log"
  fi
  echo "=== $script: exit ${PIPESTATUS[0]} after $((SECONDS - began))s"
done
echo "all done in $((SECONDS - start))s"
