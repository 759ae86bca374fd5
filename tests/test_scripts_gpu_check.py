"""scripts/gpu_check.sh --cpu --tiny: the GPU acceptance run's plumbing, end to end on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_tiny_run_executes_every_step_and_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu", "--tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = result["steps"]
    assert list(steps) == ["env", "bench", "checkpoint", "train", "sam2", "evaluate", "load7b"]
    assert {name: s["status"] for name, s in steps.items()} == {name: "ok" for name in steps}, \
        {name: s.get("tail") for name, s in steps.items()}
    assert result["mode"] == "cpu-tiny"
    assert steps["env"]["attn_implementation"] == "sdpa"
    bench = steps["bench"]
    assert bench["shape"] == "tiny" and bench["rollout_tokens_per_s"] > 0 and bench["train_tokens_per_s"] > 0
    assert bench["plain_fwd_bwd_s"] > 0 and bench["shared_prefix_fwd_bwd_s"] > 0
    assert "decode, 8 tokens" in Path(bench["profile"]).read_text()
    # 2 GRPO steps, a checkpoint, then --resume for the third: metrics of steps 1, 2, 3, once each
    assert [row["step"] for row in steps["train"]["steps"]] == [1, 2, 3]
    assert steps["train"]["resume_run"]["status"] == "ok"
    assert steps["sam2"]["images"] == 2 and steps["sam2"]["seconds_per_image"] > 0
    table = steps["evaluate"]["metrics"]
    assert table is not None
    load = steps["load7b"]
    assert load["params"] == 207_584 and load["logp_finite"] is True
    # CPU figures are not compared with the GPU targets
    assert all(t["met"] is None for t in result["targets"].values())
    assert "gpu_check cpu-tiny" in proc.stdout and "targets:" in proc.stdout
