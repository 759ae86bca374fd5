"""evaluate.py refuses bad input with one "error: ..." line (exit code 2) before any model loads:
an image folder that does not exist or differs from the run being resumed, a corrupt run_config.json
or prediction record, a --recompute directory without predictions, a training parquet (no masks),
a dataset whose ids repeat."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import evaluate
from data import SyntheticDataset, write_authors_train_parquet
from data.multi_object import MultiObjectSynthetic, write_multi_object_parquet
from data.types import Sample
from helpers import make_refer_fixture


def mask_pipeline(images, queries):
    """Predicts the whole image (status ok), no model needed."""
    return [SimpleNamespace(status="ok", mask=np.ones(im.shape[:2], bool), completion="", reasoning=None,
                            bbox_840=None, points_840=None, bbox=None, points=None) for im in images]


@pytest.fixture
def no_models(monkeypatch):
    """evaluate.build_pipeline fails the test: the error must come before the models load."""
    def build_pipeline(args, device):
        raise AssertionError("models loaded before the input was checked")

    monkeypatch.setattr(evaluate, "build_pipeline", build_pipeline)


def cli_error(argv, capsys) -> str:
    assert evaluate.cli(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def synthetic_run(out, n=4):
    base = ["--model-path", "m", "--data-path", f"synthetic:{n}", "--device", "cpu", "--output-dir", str(out)]
    evaluate.run(evaluate.parse_args(base), pipeline=mask_pipeline, log=lambda s: None)
    return base


# ------------------------------------------------------------------------------- image folder

def test_missing_image_dir_is_an_error_before_the_models(tmp_path, capsys, no_models):
    img_dir = make_refer_fixture(tmp_path / "refer")
    argv = ["--model-path", "m", "--data-path", str(tmp_path / "refer"), "--split", "train", "--device", "cpu",
            "--output-dir", str(tmp_path / "out")]
    err = cli_error(argv + ["--image-dir", str(tmp_path / "nowhere")], capsys)
    assert "nowhere (--image-dir) does not exist" in err
    img_dir.rename(tmp_path / "coco")  # the refer root has no images/ folder any more
    assert "no image folder under" in cli_error(argv, capsys)
    assert not os.path.exists(tmp_path / "out" / "predictions.jsonl")


def test_resume_with_another_image_dir_is_refused(tmp_path):
    img_dir = make_refer_fixture(tmp_path / "refer")
    (tmp_path / "wrong").mkdir()  # exists, but holds none of the images: every sample is bad
    out = str(tmp_path / "out")
    base = ["--model-path", "m", "--data-path", str(tmp_path / "refer"), "--split", "train", "--device", "cpu",
            "--output-dir", out]
    table = evaluate.run(evaluate.parse_args(base + ["--image-dir", str(tmp_path / "wrong")]),
                         pipeline=mask_pipeline, log=lambda s: None)
    assert table["all"]["num_bad"] == 4 and table["all"]["num_samples"] == 0
    assert json.load(open(os.path.join(out, "run_config.json")))["image_dir"] == str(tmp_path / "wrong")
    # the bad samples count as done: the right folder must not resume into this directory
    with pytest.raises(ValueError, match="image_dir"):
        evaluate.run(evaluate.parse_args(base + ["--image-dir", str(img_dir)]), pipeline=mask_pipeline,
                     log=lambda s: None)
    table = evaluate.run(evaluate.parse_args(base[:-1] + [str(tmp_path / "out2"), "--image-dir", str(img_dir)]),
                         pipeline=mask_pipeline, log=lambda s: None)
    assert (table["all"]["num_samples"], table["all"]["num_bad"]) == (4, 0)


def test_run_config_without_image_dir_resumes_a_run_without_it(tmp_path):
    out = tmp_path / "out"
    base = synthetic_run(out)
    config = json.loads((out / "run_config.json").read_text())
    del config["image_dir"]  # as a run config written before the key existed
    (out / "run_config.json").write_text(json.dumps(config))
    table = evaluate.run(evaluate.parse_args(base), pipeline=mask_pipeline, log=lambda s: None)
    assert table["all"]["num_samples"] == 4


# ---------------------------------------------------------------------------- run_config.json

def test_corrupt_run_config_names_the_file(tmp_path, capsys, no_models):
    out = tmp_path / "out"
    base = synthetic_run(out)
    path = out / "run_config.json"
    path.write_text('{"task": "sin')
    err = cli_error(base, capsys)
    assert f"{path}: not a readable run config" in err
    path.write_text("[1, 2]")
    err = cli_error(base, capsys)
    assert f"{path}: expected a JSON object" in err and "got list" in err
    assert "run_config.json: expected a JSON object" in cli_error(["--recompute", str(out)], capsys)


# --------------------------------------------------------------------- prediction records

@pytest.mark.parametrize("field,value,message", [
    ("intersection", "abc", "field 'intersection' is 'abc', expected a non-negative integer or null"),
    ("union", None, "record 'synthetic-0-1' with status 'ok' lacks ['union']"),
    ("index", "1", "field 'index' is '1', expected a non-negative integer"),
    ("id", 123, "field 'id' is 123, expected a string"),
])
def test_corrupt_prediction_record_fails_before_the_models(tmp_path, capsys, no_models, field, value, message):
    out = tmp_path / "out"
    base = synthetic_run(out)
    path = out / "predictions.jsonl"
    lines = path.read_text().splitlines(True)
    record = json.loads(lines[1])
    record[field] = value
    lines[1] = json.dumps(record) + "\n"
    path.write_text("".join(lines))
    err = cli_error(base, capsys)
    assert f"{path}, line 2: corrupt prediction record: {message}" in err
    err = cli_error(["--recompute", str(out)], capsys)
    assert f"{path}, line 2" in err and message in err


# ------------------------------------------------------------------------------- --recompute

def test_recompute_without_predictions_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = cli_error(["--recompute", str(tmp_path / "empty")], capsys)
    assert f"no prediction records in {tmp_path / 'empty'}" in err
    (tmp_path / "empty" / "predictions.jsonl").write_text("")
    assert "no prediction records" in cli_error(["--recompute", str(tmp_path / "empty")], capsys)
    assert "no predictions at" in cli_error(["--recompute", str(tmp_path / "nope")], capsys)
    synthetic_run(tmp_path / "out")
    capsys.readouterr()
    assert evaluate.cli(["--recompute", str(tmp_path / "out")]) == 0
    assert evaluate.main(["--recompute", str(tmp_path / "out"), "--limit", "0"])["all"]["num_samples"] == 0


# ---------------------------------------------------------------------- training parquet: no masks

def test_training_parquet_is_refused_before_the_models(tmp_path, capsys, no_models):
    write_authors_train_parquet(SyntheticDataset(2, seed=0), tmp_path / "train.parquet")
    argv = ["--model-path", "m", "--data-path", str(tmp_path / "train.parquet"), "--device", "cpu",
            "--output-dir", str(tmp_path / "out")]
    err = cli_error(argv, capsys)
    assert "train.parquet has no masks: it is a training set" in err and "not an evaluation split" in err
    err = cli_error(argv[:-1] + [str(tmp_path / "out_multi"), "--task", "multi"], capsys)
    assert "has no masks" in err
    write_multi_object_parquet(MultiObjectSynthetic(2, seed=0), tmp_path / "multi.parquet")
    err = cli_error(["--task", "multi", "--model-path", "m", "--data-path", str(tmp_path / "multi.parquet"),
                     "--device", "cpu", "--output-dir", str(tmp_path / "out_multi2")], capsys)
    assert "multi.parquet has no masks" in err
    assert not os.path.exists(tmp_path / "out" / "predictions.jsonl")


# ---------------------------------------------------------------------------- duplicate ids

def test_duplicate_sample_ids_are_refused_before_the_models(tmp_path, no_models):
    class Source:
        ids = ["a", "b", "a"]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Sample(id=self.ids[i], image=np.zeros((4, 4, 3), np.uint8), query="q",
                          mask=np.ones((4, 4), np.uint8))

    args = evaluate.parse_args(["--model-path", "m", "--data-path", "x", "--device", "cpu",
                                "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"1 sample id\(s\) that occur more than once \('a' x2\)"):
        evaluate.run(args, source=Source(), log=lambda s: None)
    assert not os.path.exists(tmp_path / "predictions.rank0.jsonl")
