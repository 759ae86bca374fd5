"""grpo.tracking: metrics.jsonl stays one curve across a crash and a resume."""
import json

from grpo.tracking import Tracker


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_drops_rows_logged_after_the_checkpoint_and_torn_lines(tmp_path):
    t = Tracker(tmp_path, is_main=True, total_steps=5, progress=False)
    t.log(1, {"loss": 0.5}, phase="warmstart_sft")
    for step in (1, 2, 3):
        t.log(step, {"loss": float(step)})
    t.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "pha')  # crash mid-write
    # the crashed run's last checkpoint was step 2: steps 3 and the torn line go, the warm start stays
    t = Tracker(tmp_path, is_main=True, total_steps=5, start_step=2, progress=False)
    t.log(3, {"loss": 30.0})
    t.close()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [(r["phase"], r["step"], r["loss"]) for r in rows] == [
        ("warmstart_sft", 1, 0.5), ("train", 1, 1.0), ("train", 2, 2.0), ("train", 3, 30.0)]


def test_non_main_rank_writes_nothing(tmp_path):
    t = Tracker(tmp_path, is_main=False, total_steps=1, progress=False)
    t.log(1, {"loss": 1.0})
    t.close()
    assert not (tmp_path / "metrics.jsonl").exists()
