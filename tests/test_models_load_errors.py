"""Damaged weight files: a truncated policy *.safetensors file and a damaged SAM2 checkpoint are
ValueErrors naming the file (models.loading.load_policy, models.segmenter.read_sam2_checkpoint),
and models.infer turns them, like a bare ``--sam2 x.pt``, into one "error: ..." line, exit 2."""
import re

import cv2
import numpy as np
import pytest
import torch

import models.tiny
from models import infer
from models.loading import load_policy
from models.segmenter import TINY_SAM2_CONFIG


@pytest.fixture(scope="module")
def truncated_checkpoint(tiny_qwen, tmp_path_factory):
    """A tiny Qwen2.5-VL checkpoint directory whose model.safetensors lost its second half."""
    folder = tmp_path_factory.mktemp("truncated_qwen")
    model, processor = tiny_qwen
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), np.random.RandomState(0).randint(0, 256, (48, 64, 3), dtype=np.uint8))
    return str(path)


def _expect_error(argv, capsys, *fragments):
    rc = infer.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_truncated_safetensors_is_a_value_error_naming_the_file(truncated_checkpoint):
    weights = str(truncated_checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"{weights!r} is not a readable safetensors file (")
                       + r".*it may be truncated"):
        load_policy(truncated_checkpoint)


def test_infer_reports_a_truncated_policy_in_one_line(truncated_checkpoint, image_path, tmp_path, capsys):
    line = _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"),
                          "--device", "cpu", "--model-path", str(truncated_checkpoint), "--sam2", "toy"],
                         capsys, f"reasoning model {str(truncated_checkpoint)!r}",
                         "model.safetensors' is not a readable safetensors file")
    assert "download or copy the checkpoint again" in line


def test_infer_reports_a_damaged_sam2_checkpoint_in_one_line(tiny_qwen, image_path, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(models.tiny, "build_tiny_qwen", lambda seed=0, **kwargs: tiny_qwen)
    damaged = tmp_path / "sam2.pt"
    damaged.write_bytes(b"this is not a checkpoint at all" * 10)
    _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"), "--device", "cpu",
                   "--model-path", "tiny", "--sam2", f"{TINY_SAM2_CONFIG}::{damaged}"], capsys,
                  f"SAM2 checkpoint {str(damaged)!r} is not a readable sam2 checkpoint: torch.load failed (IndexError")
    assert not (tmp_path / "o").exists()


def test_infer_says_a_bare_sam2_checkpoint_needs_its_config_before_loading(image_path, tmp_path, capsys,
                                                                           monkeypatch):
    import models.loading

    def heavy(*args, **kwargs):
        raise AssertionError("loaded a model before checking --sam2")

    monkeypatch.setattr(models.tiny, "build_tiny_qwen", heavy)
    monkeypatch.setattr(models.loading, "load_policy", heavy)
    ckpt = tmp_path / "sam2.1_hiera_large.pt"
    torch.save({"model": {}}, ckpt)
    _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"), "--device", "cpu",
                   "--model-path", "tiny", "--sam2", str(ckpt)], capsys,
                  "is a checkpoint file, which needs its config: pass --sam2 CONFIG::CHECKPOINT",
                  f"configs/sam2.1/sam2.1_hiera_l.yaml::{ckpt}")
