#!/usr/bin/env bash
# Download, HERE (a machine with the package index), the wheels a bare GPU machine lacks for
# saevlm, for Python 3.12 on manylinux x86-64, into .whl/ (git-ignored). The GPU image already has
# torch, torchvision, transformers, timm, numpy, pandas, pyarrow, safetensors, huggingface-hub,
# pillow, pyyaml, jinja2, tqdm, einops, accelerate, regex, xxhash, fsspec, pydantic-free pytest;
# what it lacks is below (each pinned as in requirements.txt, and the pure-Python packages they
# import at import time). On the GPU machine (docs/install.md):
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_check.py --out "$OUT"
#
# Usage: bash scripts/device_wheels.sh [DEST] [PYTHON_VERSION]   (defaults: .whl 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYVER=${2:-3.12}
PY=${PYTHON:-python3}
WHEELS=(
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.14        # open_clip, and its tokenizer's text fixer
  dictionary-learning==0.1.0 nnsight==0.3.7                 # the SAE classes and trainers (nnsight on import)
  pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2  # nnsight's schema
  python-socketio==5.16.0 python-engineio==4.13.1 bidict==0.23.1 simple-websocket==1.1.0 wsproto==1.3.2  # nnsight
  datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18         # hub datasets (saevlm.data.hub)
)
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
du -sh "$DEST" | awk '{print "wheels: " $1 " in '"$DEST"' (a device call carries at most 64 MiB)"}'
ls "$DEST"
