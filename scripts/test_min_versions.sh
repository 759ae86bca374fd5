#!/usr/bin/env bash
# The test suite on the oldest releases the project supports, which are the GPU acceptance
# machine's: Python 3.12, torch 2.11.0, torchvision 0.26.0, transformers 5.17.0, in ./.venv-min.
#   bash scripts/test_min_versions.sh [pytest arguments]      # PYTHON=/path/to/python3.12 to choose
# setup.cfg's lower bounds are these versions; CI runs the newest pins (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.12} VENV=.venv-min TORCH_VERSION=2.11.0 TORCHVISION_VERSION=0.26.0 bash scripts/install.sh
.venv-min/bin/python -m pip install -q "transformers==5.17.0"
.venv-min/bin/python -c "import torch, transformers; print('min versions: torch', torch.__version__, '| transformers', transformers.__version__)"
.venv-min/bin/python -m pytest -q "$@"
