"""--task multi end to end: evaluation numbers by hand (union IoU, no-target / target accuracy),
resume safety, models.infer, evaluate.py and a 2-rank train.py step on tiny models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import evaluate
import models.tiny
from data.types import Sample
from eval.multi_object import target_accuracies
from models import infer
from models.multi_object import MultiObjectPipeline
from models.policy import SegZeroPolicy
from rewards import matched_box_iou
from grpo.recipe import build_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


class ListSource:
    def __init__(self, items):
        self.items, self.ids = items, [s.id for s in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class ScriptedPolicy:
    task = "multi"

    def __init__(self, by_query):
        self.by_query = by_query

    def complete(self, images, queries, **kw):
        return [self.by_query[q] for q in queries]


class RowSegmenter:
    """Object k's mask = the pixels inside its (original-frame) box."""

    def segment_objects(self, images, boxes, points, mode):
        out = []
        for im, bxs in zip(images, boxes):
            m = np.zeros((len(bxs), *im.shape[:2]), dtype=bool)
            for k, (x1, y1, x2, y2) in enumerate(bxs):
                m[k, y1:y2 + 1, x1:x2 + 1] = True
            out.append(m)
        return out


def test_evaluation_by_hand(tmp_path):
    # 84 x 84 images: the 840 frame maps to pixels by / 10.
    img = np.zeros((84, 84, 3), np.uint8)
    two = np.zeros((84, 84), np.uint8)
    two[0:10, 0:10] = 1  # 100 px
    two[50:60, 50:60] = 1  # 100 px
    empty = np.zeros((84, 84), np.uint8)
    samples = [Sample("a", img, "both", mask=two), Sample("b", img, "none right", mask=empty),
               Sample("c", img, "none wrong", mask=empty), Sample("d", img, "one missed", mask=two),
               Sample("e", img, "garbled", mask=empty)]
    box = lambda x1, y1, x2, y2: {"bbox_2d": [x1, y1, x2, y2], "point_2d": [x1, y1]}  # noqa: E731
    completions = {
        # boxes [0,0,9,9] and [50,50,59,64]: union 100 + 150 px; I = 200, U = 250 -> IoU 0.8
        "both": "<think>t</think><answer>" + json.dumps([box(0, 0, 90, 90), box(500, 500, 590, 640)]) + "</answer>",
        "none right": "<think>t</think><answer>[]</answer>",  # empty on empty: IoU 1, no-target correct
        # 5 x 5 = 25 px predicted on an empty target: I = 0, U = 25 -> IoU 0, no-target wrong
        "none wrong": "<think>t</think><answer>" + json.dumps([box(0, 0, 40, 40)]) + "</answer>",
        "one missed": "<think>t</think><answer>[]</answer>",  # empty on a target: IoU 0, target wrong
        "garbled": "<think>t</think><answer>[{",  # no answer on an empty target: IoU 0, counted wrong
    }
    args = evaluate.parse_args(["--task", "multi", "--preset", "tiny", "--output-dir", str(tmp_path / "ev"),
                                "--batch-size", "2", "--device", "cpu"])
    pipe = MultiObjectPipeline(ScriptedPolicy(completions), RowSegmenter())
    table = evaluate.run(args, pipeline=pipe, source=ListSource(samples), log=lambda *a: None)
    row = table["all"]
    # gIoU = (0.8 + 1 + 0 + 0 + 0) / 5 = 36 %; cIoU = (200 + 0 + 0 + 0 + 0) / (250 + 0 + 25 + 200 + 0) = 42.1 %
    assert row["gIoU"] == pytest.approx(36.0)
    assert row["cIoU"] == pytest.approx(100 * 200 / 475)
    # 3 empty targets, 1 answered empty -> 33.3 %; 2 targets, 1 with a non-empty mask -> 50 %
    assert row["no_target_acc"] == pytest.approx(100 / 3) and row["num_empty_targets"] == 3
    assert row["target_acc"] == pytest.approx(50.0) and row["num_targets"] == 2
    assert row["parse_failure_rate"] == pytest.approx(20.0)
    recs = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").open()}
    assert recs["a"]["bbox"] == [[0, 0, 9, 9], [50, 50, 59, 64]] and recs["a"]["points"] == [[0, 0], [50, 50]]
    assert recs["a"]["bbox_840"] == [[0, 0, 90, 90], [500, 500, 590, 640]]
    assert recs["b"]["bbox"] == [] and recs["b"]["pred_area"] == 0 and recs["b"]["target_area"] == 0
    # --recompute reads the task from run_config.json and gives the same table
    assert evaluate.main(["--recompute", str(tmp_path / "ev")])["all"] == row
    # a resume with the other task is refused
    single = evaluate.parse_args(["--preset", "tiny", "--output-dir", str(tmp_path / "ev"), "--device", "cpu"])
    with pytest.raises(ValueError, match="task"):
        evaluate.run(single, pipeline=pipe, source=ListSource(samples), log=lambda *a: None)


def test_target_accuracies_skip_records_without_areas():
    from eval.results import PredictionRecord

    recs = [PredictionRecord(0, "a", "q", "ok", target_area=0, pred_area=0),
            PredictionRecord(1, "b", "q", "ok"),  # written without the areas: left out
            PredictionRecord(2, "c", "q", "bad_sample", target_area=None)]
    acc = target_accuracies(recs)
    assert acc["no_target_acc"] == 100.0 and acc["num_empty_targets"] == 1 and np.isnan(acc["target_acc"])


def test_matched_box_iou_proxy():
    gt = [{"bbox_2d": [0, 0, 99, 99], "point_2d": [50, 50]}]
    half = '<answer>[{"bbox_2d": [0, 0, 99, 49], "point_2d": [5, 5]}]</answer>'
    assert matched_box_iou(half, gt) == pytest.approx(0.5)  # 5000 / 10000
    assert matched_box_iou("<answer>[]</answer>", []) == 1.0
    assert matched_box_iou("<answer>[]</answer>", gt) == 0.0 and matched_box_iou("x", gt) == 0.0


def test_multi_object_query_families():
    from data import open_multi_object_dataset
    from train import heldout_synthetic

    present = open_multi_object_dataset("synthetic:40:present", seed=1)
    mixed = open_multi_object_dataset("synthetic:40", seed=1)
    assert all(present[i].solution for i in range(40))  # every query refers to one shape or more
    assert sum(not mixed[i].solution for i in range(40)) >= 4  # about 20 % refer to nothing
    with pytest.raises(ValueError, match="'referring' is a single-object query family"):
        open_multi_object_dataset("synthetic:4:referring")
    # train.py: the training, held-out and validation scenes follow the data_path's family
    held = heldout_synthetic(build_config({"task": "multi", "data_path": "synthetic:64:present"}))(40, 1)
    assert [held[i].query for i in range(40)] == [present[i].query for i in range(40)]
    with pytest.raises(ValueError, match="not a multi-object"):
        heldout_synthetic(build_config({"task": "multi", "data_path": "synthetic::reasoning"}))
    with pytest.raises(ValueError, match="not a single-object"):
        heldout_synthetic(build_config({"data_path": "synthetic:8:present"}))


def test_option_mistakes():
    with pytest.raises(ValueError, match="single-object options"):
        evaluate.parse_args(["--task", "multi", "--preset", "tiny", "--output-dir", "x", "--think", "false"])
    with pytest.raises(ValueError, match="think=false"):
        build_config({"task": "multi", "think": "false"})
    cfg = build_config(preset="visionreasoner_7b", overrides={"model_path": "m", "data_path": "d"})
    assert (cfg.train.task, cfg.rollout.max_new_tokens, cfg.grpo.micro_batch_size, cfg.optim.lr,
            cfg.grpo.kl_coef, cfg.grpo.kl_estimator, cfg.train.prompts_per_step, cfg.rollout.group_size) == \
        ("multi", 2000, 16, 1e-6, 5e-3, "k3", 16, 8)


# ---------------------------------------------------------------------------------------- infer

@pytest.fixture
def image_path(tmp_path):
    image = np.random.RandomState(0).randint(0, 256, (72, 96, 3), dtype=np.uint8)  # H = 72, W = 96
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), image[..., ::-1])
    return str(path)


def test_infer_multi_prints_and_writes_every_object(tmp_path, image_path, capsys, monkeypatch, tiny_qwen):
    monkeypatch.setattr(models.tiny, "build_tiny_qwen", lambda seed=0, **kwargs: tiny_qwen)
    completion = ('<think> two cats </think><answer>[{"bbox_2d": [105, 70, 420, 630], "point_2d": [210, 350]}, '
                  '{"bbox_2d": [525, 70, 735, 280], "point_2d": [630, 140]}]</answer>')
    monkeypatch.setattr(SegZeroPolicy, "complete", lambda self, images, queries, **kw: [completion])
    out_dir = tmp_path / "out"
    assert infer.main(["--task", "multi", "--image", image_path, "--query", "the cats", "--output-dir", str(out_dir),
                       "--model-path", "tiny", "--sam2", "toy", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    record = json.loads((out_dir / "prediction.json").read_text())
    # x factor 96 / 840 = 4/35, y factor 72 / 840 = 3/35: 105 -> 12, 70 -> 6, 420 -> 48, 630 -> 54,
    # 210 -> 24, 350 -> 30; 525 -> 60, 735 -> 84, 280 -> 24, 140 -> 12
    assert record["bbox"] == [[12, 6, 48, 54], [60, 6, 84, 24]] and record["points"] == [[24, 30], [72, 12]]
    assert record["task"] == "multi" and record["status"] == "ok"
    assert "object 0" in out and "object 1" in out and "[60, 6, 84, 24]" in out
    mask = cv2.imread(str(out_dir / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert (mask == 255).sum() == record["mask_area"]


def test_infer_multi_option_mistake(tmp_path, image_path, capsys):
    assert infer.main(["--task", "multi", "--think", "false", "--image", image_path, "--query", "q",
                       "--output-dir", str(tmp_path), "--model-path", "tiny", "--sam2", "toy"]) == 2
    assert "single-object options" in capsys.readouterr().err


@pytest.mark.slow
def test_infer_multi_tiny_end_to_end(tmp_path, image_path):
    res = subprocess.run([sys.executable, "-m", "models.infer", "--task", "multi", "--model-path", "tiny",
                          "--sam2", "toy", "--image", image_path, "--query", "all the cups",
                          "--output-dir", str(tmp_path / "o"), "--max-new-tokens", "8",
                          "--device", "cpu"], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "o" / "prediction.json").read_text())["task"] == "multi"


# ------------------------------------------------------------------------------------- commands

@pytest.mark.slow
def test_evaluate_multi_tiny_end_to_end(tmp_path):
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "--task", "multi", "--preset", "tiny", "--data-path", "synthetic:3",
           "--max-new-tokens", "8", "--batch-size", "3", "--device", "cpu", "--output-dir", str(tmp_path / "ev")]
    res = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no-target accuracy" in res.stdout
    config = json.loads((tmp_path / "ev" / "run_config.json").read_text())
    assert config["task"] == "multi"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["table"]["all"]["num_samples"] == 3 and "no_target_acc" in metrics["table"]["all"]


@pytest.mark.slow
@pytest.mark.dist
def test_train_multi_two_ranks_one_step(tmp_path):
    args = ["--task", "multi", "--warmstart-sft-steps", "1", "--heldout-size", "2", "--max-new-tokens", "6",
            "--group-size", "2", "--prompts-per-step", "2", "--micro-batch-size", "2", "--max-steps", "1",
            "--progress", "false", "--output-dir", str(tmp_path / "run")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(ROOT / "train.py")]
    res = subprocess.run(cmd + args, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in metrics if row.get("phase") == "train" and "loss" in row]  # not report / val rows
    assert [row["step"] for row in steps] == [1], metrics
    last = steps[-1]
    for name in ("multi_object_format", "multi_object_accuracy", "non_repeat"):
        assert f"reward/{name}" in last
    assert last["reward/total"] == pytest.approx(
        last["reward/multi_object_format"] + last["reward/multi_object_accuracy"] + last["reward/non_repeat"])
    assert last["num_seqs"] == 4 and json.loads((tmp_path / "run" / "config.json").read_text())["train"]["task"] == "multi"
    heldout = [json.loads(x) for x in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    assert "reward/multi_object_accuracy" in heldout[-1]
    # validated through the toy SAM2 on the union masks (eval.validate with task multi)
    assert {"giou", "ciou", "iou_proxy"} <= set(heldout[-1]) and 0.0 <= heldout[-1]["giou"] <= 100.0
    assert (tmp_path / "run" / "val" / "step_000001" / "predictions.jsonl").exists()
