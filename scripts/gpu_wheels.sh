#!/usr/bin/env bash
# Wheels that the GPU acceptance machine lacks, for Python 3.12 x86-64, written to ./.whl (ignored).
#   bash scripts/gpu_wheels.sh            # needs the registry; run on this side, not on the GPU machine
#
# The GPU machine has no network. It ships Python 3.12 with torch, transformers, torchvision,
# numpy, scipy, opencv, safetensors, tqdm, pyarrow, pytest, PyYAML, portalocker and packaging, but
# not sam2 (and its hydra-core / omegaconf / antlr4 / iopath) nor pycocotools. scripts/gpu_check.sh
# installs every wheel found in .whl with --no-deps before it runs.
#
# sam2, antlr4-python3-runtime and iopath are source-only on the registry: they are built here
# into pure-Python wheels (sam2 with SAM2_BUILD_CUDA=0: its optional CUDA extension only speeds
# up a mask post-processing step). pycocotools is a binary wheel for CPython 3.12 (abi3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "gpu_wheels.sh: $PY not found; run bash scripts/install.sh first (or set PYTHON)" >&2; exit 2; }
OUT=.whl
rm -rf "$OUT" && mkdir -p "$OUT"

# pure-Python wheels built from source here (the build needs torch for sam2's setup.py)
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" \
    "sam2==1.1.0" "antlr4-python3-runtime==4.9.3" "iopath==0.1.10"
# binary / universal wheels for the GPU machine's interpreter
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "hydra-core==1.3.8" "omegaconf==2.3.1" "pycocotools==2.0.11"

for w in "$OUT"/*.whl; do
    case "$(basename "$w")" in
        *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*.whl) ;;
        *) echo "gpu_wheels.sh: $(basename "$w") is not for CPython 3.12 x86-64" >&2; exit 1 ;;
    esac
done
ls -1 "$OUT"
du -sh "$OUT"
