#!/usr/bin/env bash
# Fill .whl/ with the Python packages bench/gpu_suite.py needs that the lent H200 machine's image
# lacks (or has in a version too old), for tools/gpu_run.sh to install there without a network.
#
# The image has torch 2.11 (CUDA 13), transformers 5.17, numpy, h5py, pillow, safetensors,
# tokenizers, huggingface-hub, typer, rich, einops, msgpack, psutil, py-cpuinfo, ninja, pyyaml
# (/work/.library/device/KINDS.md). Missing: pydantic (+ pydantic-core, annotated-types,
# typing-inspection), submitit, deepspeed (+ hjson, dill); too old: transformers (LLaVA-NeXT takes
# `mm_encoder_outputs`, which mcmdpo's image features use, from 5.2x on). Versions are this
# project's pins as installed in .venv. deepspeed is published as a source archive only: it is built
# here into a pure-Python wheel (no compiled ops; the trainer uses torch's AdamW).
#
# Usage (in the repository root, where pip reaches PyPI): tools/gpu_wheels.sh     (~20 MB, ~1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DEST=.whl
mkdir -p "$DEST"

PURE=(
  transformers==5.24.0
  pydantic==2.14.4
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  submitit==1.5.4
  hjson==3.1.0
  dill==0.4.1
)
BINARY=(
  pydantic-core==2.50.5
  regex==2026.11.19
)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  PLATFORMS+=(--platform "$tag")
done

"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "${PURE[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
if ! ls "$DEST"/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" deepspeed==0.19.8
fi
ls -1 "$DEST"
du -sh "$DEST"
