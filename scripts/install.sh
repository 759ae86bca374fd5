#!/usr/bin/env bash
# Install everything into ./.venv (fresh machine, Python 3.11).
#   bash scripts/install.sh
# torch and torchvision are installed together (a torchvision wheel only imports beside the torch
# build it was made for). sam2 is a source package: SAM2_BUILD_CUDA=0 skips its optional CUDA
# extension (it only speeds up a mask post-processing step).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
SAM2_BUILD_CUDA=0 python -m pip install -q --no-build-isolation -e ".[test]"
python -c "import torch, torchvision, transformers, sam2; print('installed: torch', torch.__version__, '| transformers', transformers.__version__)"
