"""eval.study: the statistics and verdicts by hand, and a sliver of the study end to end (two arms, two
steps, a few scenes), resumed."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.study import (ARMS, DOMAINS, Settings, StudyResult, aggregate, claim_verdicts, format_report, mean_std,
                        verdict)

ROOT = Path(__file__).resolve().parents[1]


def test_mean_std_by_hand():
    assert mean_std([1.0, 2.0, 6.0]) == (3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    m, sd = mean_std([4.0])
    assert m == 4.0 and math.isnan(sd)


def test_verdict_compares_the_mean_paired_gap_with_its_spread():
    # gaps 2, 4, 6: mean 4, sd 2 -> agrees
    assert verdict([12.0, 14.0, 16.0], [10.0, 10.0, 10.0]) == ("agrees", 4.0, 2.0)
    # gaps -2, -4, -6 -> disagrees
    assert verdict([10.0, 10.0, 10.0], [12.0, 14.0, 16.0]) == ("disagrees", -4.0, 2.0)
    # gaps 1, -1, 3: mean 1, sd 2 -> the spread is larger than the gap
    v, m, sd = verdict([11.0, 9.0, 13.0], [10.0, 10.0, 10.0])
    assert (v, m, sd) == ("inconclusive", 1.0, 2.0)
    # the pairing matters: equal means per arm can still agree when every seed favours one side
    assert verdict([10.0, 20.0, 30.0], [9.0, 19.0, 29.0])[0] == "agrees"
    assert verdict([5.0], [1.0])[0] == "inconclusive (one seed)"
    with pytest.raises(ValueError, match="same seeds"):
        verdict([1.0, 2.0], [1.0])


def _cell(giou):
    return {d: {"giou": giou + (10.0 if d == "reasoning" else 0.0), "ciou": giou, "parse_fail": 0.0,
                "response_tokens": 50.0, "n": 4} for d in DOMAINS}


def test_aggregate_rows_and_claims_from_per_seed_results():
    per_seed = {}
    for seed, base in enumerate((20.0, 22.0)):
        per_seed[seed] = {"grpo": {"eval": {"box+points": _cell(base + 5), "box": _cell(base + 1),
                                            "points": _cell(base - 10)}},
                          "sft": {"eval": {"box+points": _cell(base + 1)}}}
        per_seed[seed]["sft"]["eval"]["box+points"]["reasoning"]["giou"] = base - 3  # SFT loses out of domain
    rows = aggregate(per_seed, [0, 1])
    assert set(rows) == {"grpo", "grpo@box", "grpo@points", "sft"}
    assert rows["grpo"]["referring"]["giou"] == {"mean": 26.0, "std": math.sqrt(2.0), "values": [25.0, 27.0]}
    verdicts = {v["claim"]: v for v in claim_verdicts(rows)}
    rl = verdicts["1. RL beats SFT on the same data"]
    assert rl["referring"] == {"verdict": "agrees", "gap": 4.0, "sd": 0.0}
    assert rl["reasoning"] == {"verdict": "agrees", "gap": 18.0, "sd": 0.0}  # (25 + 10) - (20 - 3), per seed
    assert rl["larger_out_of_domain"] == {"verdict": "grows out of domain", "gap": 14.0, "sd": 0.0}
    assert verdicts["3. SAM2 box + points over points only"]["referring"]["gap"] == 15.0
    assert "2. reasoning (think block) helps" not in verdicts  # its arm was not run
    report = format_report(StudyResult(settings={**Settings().__dict__}, seeds=[0, 1], rows=rows,
                                       verdicts=list(verdicts.values())), figures=[])
    assert "| GRPO (recipe) | 26.0 ± 1.4 |" in report
    assert "| GRPO (recipe), SAM2 points only |" in report
    assert "agrees (+4.0 ± 0.0)" in report
    assert "pip install -e .[plots]" in report


def test_every_arm_starts_from_a_warm_start_of_its_own_format():
    names = {a.name: a for a in ARMS}
    for arm in ARMS:
        if arm.start != "toy":
            assert names[arm.start].start == "toy" and names[arm.start].think == arm.think, arm.name
    assert {a.name for a in ARMS if a.start == "toy"} == {"warmstart", "warmstart_nothink"}


def _study(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "eval.study", "--out", str(out), "--arms", "warmstart,sft", "--steps", "2",
           "--warmstart-steps", "2", "--eval-every", "2", "--val-scenes", "2", "--eval-scenes", "3",
           "--train-scenes", "32", "--nproc", "1", "--seeds", "1", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_sliver_of_the_study_runs_and_resumes(tmp_path):
    out = tmp_path / "study"
    res = _study(out)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"warmstart", "sft"}
    for row in results["rows"].values():
        for domain in DOMAINS:
            cell = row[domain]
            assert 0.0 <= cell["giou"]["mean"] <= 100.0 and len(cell["giou"]["values"]) == 1
            assert cell["response_tokens"]["mean"] > 0
    sft = json.loads((out / "seed0" / "sft" / "result.json").read_text())
    assert sft["eval"]["box+points"]["referring"]["n"] == 3
    assert sorted(sft["curves"]["val"]) == ["0", "2"] and sorted(sft["curves"]["train"]) == ["1", "2"]
    # the figures come back from the predictions: recompute one cell from its files
    from eval.results import table_from_predictions

    table = table_from_predictions(str(out / "seed0" / "sft" / "eval_reasoning_box_points"))
    assert table["all"]["gIoU"] == sft["eval"]["box+points"]["reasoning"]["giou"]
    assert [v["claim"] for v in results["verdicts"]] == ["1. SFT improves on its warm start"]
    assert results["verdicts"][0]["referring"]["verdict"] == "inconclusive (one seed)"
    report = (out / "report.md").read_text()
    assert "| SFT |" in report and "| warm start (no RL) |" in report
    assert "| SFT |" in res.stdout

    # resume: finished arms are not rerun; an arm whose training finished is only evaluated again
    export = out / "seed0" / "sft" / "train" / "hf_export" / "model.safetensors"
    stamp = export.stat().st_mtime_ns
    (out / "seed0" / "sft" / "result.json").unlink()
    res = _study(out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "seed 0 warmstart: done before" in res.stdout
    assert export.stat().st_mtime_ns == stamp
    assert json.loads((out / "seed0" / "sft" / "result.json").read_text())["eval"] == sft["eval"]

    # other settings in the same folder are refused, with the reason
    res = _study(out, "--eval-scenes", "5")
    assert res.returncode == 2 and "other settings (eval_scenes)" in res.stderr
