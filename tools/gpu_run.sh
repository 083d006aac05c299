#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (tools/gpu_run.md says how to call it): install
# the wheels carried in .whl/ (tools/gpu_wheels.sh) into /tmp/site, record the device and the
# versions, then run bench/gpu_suite.py with its files written to $OUT (the device tool brings them
# back). Extra arguments go to the suite, e.g. `--parts train --budget-s 150` for a rerun.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/gpu-suite-out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "gpu_run.sh: installing the carried wheels failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  echo "gpu_run.sh: no wheels in .whl/ (run tools/gpu_wheels.sh where pip works, and carry .whl)" >&2
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cuda

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c 'import sys, torch, transformers, deepspeed, pydantic
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "deepspeed", deepspeed.__version__, "pydantic", pydantic.__version__)'
} 2>&1 | tee "$OUT_DIR/environment.txt"

"$PY" bench/gpu_suite.py --out "$OUT_DIR" "$@" 2>"$OUT_DIR/gpu_suite.err"
status=$?
tail -n 40 "$OUT_DIR/gpu_suite.err" >&2
exit $status
