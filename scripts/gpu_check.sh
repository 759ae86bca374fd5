#!/usr/bin/env bash
# The GPU acceptance run: one command, one JSON, one table (scripts/gpu_check.py says what it runs).
#
#   bash scripts/gpu_check.sh --out gpu_check.json              # on a GPU machine (<= 8 minutes on one H200)
#   bash scripts/gpu_check.sh --cpu --tiny --out cpu_check.json # the same plumbing on CPU, tiny shapes
#
# On a machine without the network (the borrowed GPU machine), the wheels that
# scripts/gpu_wheels.sh wrote to .whl are installed first into a private folder (never into the
# system's site-packages), unless sam2 is importable already. Python: $PYTHON, else .venv/bin/python
# when it exists, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
if ! "$PY" -c "import sam2, pycocotools" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: sam2 / pycocotools are not importable and .whl has no wheels;" \
             "run bash scripts/gpu_wheels.sh where the registry is reachable" >&2
        exit 2
    fi
    SITE=${GPU_CHECK_SITE:-/tmp/seg_zero_gpu_site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
