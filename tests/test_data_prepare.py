"""`python -m data.prepare_refcocog` on a refer-format fixture: the training-set reader loads
back exactly the boxes and points computed from the masks, bad samples are
counted, not fatal, and --limit / the SAM2 filter work."""
import os
import subprocess
import sys

import numpy as np
import pytest

from data import AuthorsTrainParquet, ReferDataset, solution_from_mask
from data.prepare_refcocog import main, prepare
from helpers import make_refer_fixture


def test_prepare_round_trip_and_summary(tmp_path, capsys):
    img_dir = make_refer_fixture(tmp_path / "refer", corrupt_third=True)
    out = tmp_path / "out" / "refcocog_train.parquet"
    assert main(["--refer-root", str(tmp_path / "refer"), "--images", str(img_dir),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "kept 3, skipped 1" in printed and "unreadable image" in printed
    assert sorted(os.listdir(out.parent)) == ["refcocog_train.parquet"]  # no temp file left

    source = ReferDataset(tmp_path / "refer", split="train", image_dir=img_dir)
    back = AuthorsTrainParquet(out)
    assert back.ids == ["0_100", "0_101", "1_102"]  # the corrupt image's sentence is skipped
    for i in range(3):
        got, want = back[i], source[i]
        assert got.query == want.query
        assert got.solution == solution_from_mask(want.mask)
        assert got.image.shape == (840, 840, 3)
        assert got.meta["original_size"] == (want.width, want.height)
    # RLE ann: rows 3..8, cols 20..29 of 24 x 32 (zero rows 2 and 9, zero cols 19 and 30).
    # D = min(r - 2, 9 - r, c - 19, 30 - c) reaches 3 first at row 5 (5 - 2), col 22 (22 - 19)
    # -> p1 = (22, 5). Scaled: x * 840 / 32 = x * 26.25, y * 840 / 24 = y * 35:
    # bbox [20, 3, 29, 8] -> [525, 105, 761, 280] (29 * 26.25 = 761.25 -> 761);
    # p1 -> (578, 175) (22 * 26.25 = 577.5, + 0.5 -> 578).
    assert back[2].solution["bbox"] == [525, 105, 761, 280]
    assert back[2].solution["points"][0] == [578, 175]


def test_prepare_limit_and_sam2_filter(tmp_path):
    img_dir = make_refer_fixture(tmp_path / "refer")
    ds = ReferDataset(tmp_path / "refer", split="train", image_dir=img_dir)
    kept, skipped = prepare(ds, tmp_path / "two.parquet", limit=2, progress=False)
    assert kept == 2 and not skipped and len(AuthorsTrainParquet(tmp_path / "two.parquet")) == 2

    def box_segmenter(image, bbox, points):
        # fills the prompted box: exact for the rectangles, IoU < 0.6 for the triangle
        # (the right triangle (2,2),(10,2),(10,10) covers about half of its box)
        x1, y1, x2, y2 = bbox
        m = np.zeros(image.shape[:2], bool)
        m[y1:y2 + 1, x1:x2 + 1] = True
        return m

    kept, skipped = prepare(ds, tmp_path / "filtered.parquet", segmenter=box_segmenter,
                            progress=False)
    assert kept == 3 and skipped == {"sam2 consistency below threshold": 1}
    with pytest.raises(ValueError, match="limit"):
        prepare(ds, tmp_path / "x.parquet", limit=0)


def test_command_line_entry_point(tmp_path):
    img_dir = make_refer_fixture(tmp_path / "refer")
    out = tmp_path / "cli.parquet"
    res = subprocess.run([sys.executable, "-m", "data.prepare_refcocog", "--refer-root",
                          str(tmp_path / "refer"), "--images", str(img_dir), "--out", str(out),
                          "--limit", "1"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr
    assert "kept 1, skipped 0" in res.stdout
    assert len(AuthorsTrainParquet(out)) == 1


def test_sam2_filter_uses_models_segmenter(monkeypatch):
    import models.pipeline
    from data.prepare_refcocog import build_sam2_segmenter

    monkeypatch.setattr(models.pipeline, "load_segmenter", lambda sam2, device="cpu": ("load_segmenter", sam2, device))
    assert build_sam2_segmenter("c.yaml::k.pt", "cuda") == ("load_segmenter", "c.yaml::k.pt", "cuda")


def test_command_line_mistakes_are_one_line_exit_2_and_checked_before_converting(tmp_path, capsys, monkeypatch):
    import pickle

    import data.prepare_refcocog as prep

    img_dir = make_refer_fixture(tmp_path / "refer")
    root = str(tmp_path / "refer")
    (tmp_path / "out_dir").mkdir()
    hostile = tmp_path / "hostile"
    (hostile / "refcocog").mkdir(parents=True)
    (hostile / "refcocog" / "instances.json").write_text('{"images": [], "annotations": []}')
    with open(hostile / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump([os.system], f)
    (tmp_path / "sam2.pt").write_bytes(b"")
    escape_yaml = tmp_path / "x.yaml"
    escape_yaml.write_text("model:\n  _target_: os.system\n")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted samples before checking the command line")

    monkeypatch.setattr(prep, "prepare", no_conversion)
    ok = ["--refer-root", root, "--images", str(img_dir), "--out", str(tmp_path / "o.parquet")]
    sam2 = ["--sam2", f"configs/sam2/sam2_hiera_l.yaml::{tmp_path / 'sam2.pt'}"]
    cases = [
        ([], "the following arguments are required: --refer-root, --images, --out"),
        (ok + ["--limit", "abc"], "argument --limit: invalid int value: 'abc'"),
        (ok + ["--limit", "0"], "--limit must be positive, got 0"),
        (ok + ["--image-format", "gif"], "argument --image-format: invalid choice: 'gif'"),
        (["--refer-root", root, "--images", str(img_dir), "--out", str(tmp_path / "out_dir")],
         f"--out {str(tmp_path / 'out_dir')!r} is a directory; pass a file path"),
        (["--refer-root", root, "--images", str(img_dir), "--out", "/sys/x.parquet"], "cannot write in '/sys'"),
        (["--refer-root", root, "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o.parquet")],
         f"--images {str(tmp_path / 'nope')!r} is not a directory"),
        (ok + ["--split", "nope"], "split 'nope' not in"),
        (ok + ["--sam2", "c.yaml::"], "CONFIG::CHECKPOINT with both parts"),
        (ok + sam2 + ["--sam2-threshold", "nan"], "--sam2-threshold must be an IoU in [0, 1], got nan"),
        (ok + sam2 + ["--device", "tpu"], "--device 'tpu': use cpu, cuda or cuda:K"),
        (ok + ["--sam2", f"{escape_yaml}::{tmp_path / 'sam2.pt'}"], "names objects that are not sam2 classes"),
        (["--refer-root", str(hostile), "--images", str(img_dir), "--out", str(tmp_path / "o.parquet")],
         "not a readable refs file (UnpicklingError: refused to load global"),
    ]
    for argv, expected in cases:
        assert prep.main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, (argv, err)
    assert os.listdir(tmp_path / "out_dir") == [] and not (tmp_path / "o.parquet").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_a_failed_final_move_leaves_no_temporary_file(tmp_path):
    from data.parquet import TRAIN_SCHEMA, _AtomicParquetWriter

    target = tmp_path / "is_a_dir.parquet"
    target.mkdir()
    with pytest.raises(OSError):
        with _AtomicParquetWriter(target, TRAIN_SCHEMA):
            pass
    assert os.listdir(tmp_path) == ["is_a_dir.parquet"]
