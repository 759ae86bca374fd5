#!/usr/bin/env bash
# Install what is missing into ./.venv (fresh machine, Python 3.10+); a run that finds the venv
# up to date installs nothing and takes a second.
#   bash scripts/install.sh
# "Up to date" means: the venv exists, it was installed by this script for this checkout, these
# torch / torchvision versions and the current setup.cfg + pyproject.toml (a fingerprint kept in
# .venv/.seg-zero-install), and the packages import. Anything else runs the install, which pip
# makes incremental (what is already there is kept).
# torch and torchvision are installed together (a torchvision wheel only imports beside the torch
# build it was made for; override with TORCH_VERSION=... TORCHVISION_VERSION=...), with
# transformers (TRANSFORMERS_VERSION=...). sam2 is a source
# package: SAM2_BUILD_CUDA=0 skips its optional CUDA extension (it only speeds up a mask
# post-processing step). PYTHON picks the interpreter that creates the venv; VENV its folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH="torch==${TORCH_VERSION:-2.14.1}"
TORCHVISION="torchvision==${TORCHVISION_VERSION:-0.29.1}"
# transformers is pinned too: the toy checkpoints (models.toy) rebuild bit for bit only with the
# versions they were built with (their build.json records them)
TRANSFORMERS="transformers==${TRANSFORMERS_VERSION:-5.25.0}"
STAMP="$VENV/.seg-zero-install"
IMPORTS="import torch, torchvision, transformers, tokenizers, sam2, numpy, scipy, cv2, PIL, safetensors, tqdm, pycocotools, pyarrow, pytest, hypothesis"

fingerprint="$(pwd) $TORCH $TORCHVISION $TRANSFORMERS $(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] \
        && "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
    echo "install: $VENV is up to date, nothing to install"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"  # as activating the venv does, for build steps
rm -f "$STAMP"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q "$TORCH" "$TORCHVISION" "$TRANSFORMERS"
SAM2_BUILD_CUDA=0 "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[test]"
"$VENV/bin/python" -c "$IMPORTS; print('installed: torch', torch.__version__, '| transformers', transformers.__version__)"
echo "$fingerprint" > "$STAMP"
