"""train.py and its run directory: an earlier run is refused unless --resume or --overwrite, every
setup check runs before the directory is touched, a resume trims heldout.jsonl like metrics.jsonl,
and the setup errors say what is wrong (bad samples, a refer-format root as training data)."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
SMALL = ["--model-path", "tiny", "--sam2", "", "--warmstart-sft-steps", "0", "--heldout-size", "2",
         "--num-synthetic", "8", "--max-new-tokens", "6", "--group-size", "2", "--prompts-per-step", "2",
         "--micro-batch-size", "2", "--progress", "false", "--export-hf", "false"]


def _run(args):
    res = subprocess.run([sys.executable, str(ROOT / "train.py")] + [str(a) for a in args], env=ENV, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _cli(argv, capsys):
    import train

    rc = train.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, err


def _earlier_run(run_dir: Path) -> dict:
    """What a finished run leaves (the files the trainer would replace or truncate); returns the
    contents to compare with afterwards."""
    (run_dir / "checkpoints" / "step_000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000002" / "COMPLETE").write_text("2\n")
    files = {"config.json": json.dumps({"train": {"max_steps": 2}}),
             "metrics.jsonl": "".join(json.dumps({"step": s, "phase": "train", "loss": 1.0}) + "\n" for s in (1, 2)),
             "heldout.jsonl": json.dumps({"title": "grpo end (step 2)", "step": 2}) + "\n",
             "notes.txt": "the user's own file"}
    for name, text in files.items():
        (run_dir / name).write_text(text)
    return files


def _unchanged(run_dir: Path, files: dict) -> bool:
    return all((run_dir / name).read_text() == text for name, text in files.items()) and \
        (run_dir / "checkpoints" / "step_000002" / "COMPLETE").is_file()


def test_an_earlier_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    files = _earlier_run(tmp_path)
    rc, err = _cli(SMALL + ["--output-dir", tmp_path], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --output-dir {str(tmp_path)!r} holds an earlier run (config.json, "
                          "metrics.jsonl, heldout.jsonl, checkpoints); pass --resume to continue it"), err
    assert "--overwrite to delete it" in err
    assert _unchanged(tmp_path, files)
    # a directory with other files only (e.g. an evaluation's) holds no run
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    import train

    train.check_run_dir(train.parse_args(["--output-dir", str(other)]))


def test_resume_and_overwrite_together_are_refused():
    from grpo.recipe import parse_args

    with pytest.raises(ValueError, match=r"config field overwrite=True \(--overwrite\): --resume continues the "
                                         r"run in output_dir and --overwrite deletes it: pass one of them"):
        parse_args(["--resume", "--overwrite"])


@pytest.mark.parametrize("mode", ["--overwrite", "--resume"])
def test_a_bad_val_path_fails_before_the_run_dir_is_touched(tmp_path, capsys, mode):
    # the validation set is opened after the data, before anything is written: the earlier run's
    # metrics are not truncated, its config not replaced, nothing deleted
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    files = _earlier_run(run_dir)
    rc, err = _cli(SMALL + ["--sam2", "toy", "--val-path", tmp_path / "no_such_val", "--output-dir", run_dir, mode],
                   capsys)
    assert rc == 2 and "no_such_val" in err and "Traceback" not in err, err
    assert _unchanged(run_dir, files)


def test_mistakes_found_before_the_run_dir_is_created(tmp_path, capsys):
    from helpers import make_refer_fixture

    refer = tmp_path / "refer"
    make_refer_fixture(refer)
    for args, expected in [(["--model-path", tmp_path / "no_such_model"], "no_such_model"),
                           (["--data-path", refer], "is a refer-format root")]:
        rc, err = _cli(SMALL + args + ["--output-dir", tmp_path / "run"], capsys)
        assert rc == 2 and expected in err, err
        assert not (tmp_path / "run").exists()


def test_a_refer_root_is_refused_as_training_data(tmp_path):
    import train
    from grpo.recipe import build_config
    from helpers import make_refer_fixture

    info = types.SimpleNamespace(world_size=1, rank=0)
    refer = tmp_path / "refer"
    make_refer_fixture(refer)  # refer/refcocog/instances.json: open_dataset would read its 'val' split
    for task in ("single", "multi"):
        with pytest.raises(ValueError, match=r"is a refer-format root \(instances.json \+ refs\): its reader would "
                                             r"train on the 'val' split; convert the train split .*"
                                             r"data.prepare_refcocog --refer-root .*--split train"):
            train.build_data(build_config({"data_path": str(refer), "task": task}), info)
    gref = tmp_path / "gref"
    gref.mkdir()
    (gref / "grefs(unc).json").write_text("[]")
    with pytest.raises(ValueError, match="is a gRefCOCO root: its reader would train on the 'val' split"):
        train.build_data(build_config({"data_path": str(gref), "task": "multi"}), info)


def test_too_many_bad_samples_say_why_the_last_was_bad():
    import train
    from data.types import BadSampleError

    class AllBad:
        def __len__(self):
            return 200

        def __getitem__(self, i):
            raise BadSampleError("unreadable", f"{i}.jpg", "cannot decode")

    class InOrder:
        def stream_index(self, position):
            return position

    with pytest.raises(ValueError, match=r"100 consecutive bad samples from stream position 5 on .*; the last, "
                                         r"index 104: .*cannot decode"):
        train.read_sample(AllBad(), InOrder(), 5)


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(tmp_path):
    run_dir = tmp_path / "run"
    _run(SMALL + ["--max-steps", "2", "--output-dir", run_dir])
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "hf_export.tmp").mkdir()  # debris of an earlier run counts as the run's
    _run(SMALL + ["--max-steps", "1", "--output-dir", run_dir, "--overwrite"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_000001"]
    assert json.loads((run_dir / "config.json").read_text())["train"]["max_steps"] == 1
    assert [json.loads(x)["step"] for x in (run_dir / "heldout.jsonl").read_text().splitlines()] == [0, 1]
    assert (run_dir / "notes.txt").read_text() == "mine" and not (run_dir / "hf_export.tmp").exists()


@pytest.mark.slow
def test_resume_drops_heldout_rows_logged_after_the_checkpoint(tmp_path):
    # a run that logged step 2 (and its end report) but crashed before step 2's checkpoint was kept
    _run(SMALL + ["--max-steps", "2", "--checkpoint-every", "1", "--output-dir", tmp_path])
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_000002")
    _run(SMALL + ["--max-steps", "2", "--checkpoint-every", "1", "--output-dir", tmp_path, "--resume"])
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert [(r["title"], r["step"]) for r in held] == [("grpo start (step 0)", 0), ("grpo start (step 1)", 1),
                                                       ("grpo end (step 2)", 2)]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "train"] == [1, 2]
    assert np.isfinite(rows[-1]["loss"])


def test_the_overwrite_help_names_every_file_it_deletes():
    import dataclasses

    import train
    from grpo.recipe import TrainConfig

    text = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}["overwrite"]
    for name in train.RUN_FILES:
        assert name in text, name
