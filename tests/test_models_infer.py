"""models.infer (one-image CLI) and models.draw (overlays, PNG writers, evaluation panel)."""
import json
import shutil
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import models.tiny
from models import draw, infer
from models.draw import mask_to_png, overlay, panel, save_rgb_png, text_block
from models.configs import real_config_path
from models.policy import SegZeroPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model-path", "tiny", "--sam2", "toy"]  # the random tiny policy and the shipped toy SAM2


# ------------------------------------------------------------------------------------------ draw
def test_overlay_blends_mask_and_draws_box_and_points():
    image = np.full((50, 80, 3), 100, dtype=np.uint8)
    mask = np.zeros((50, 80), dtype=bool)
    mask[10:20, 10:30] = True
    out = overlay(image, mask, color=(200, 0, 50), alpha=0.5)
    # inside: 0.5 * 100 + 0.5 * (200, 0, 50) = (150, 50, 75); outside untouched
    assert out[15, 20].tolist() == [150, 50, 75] and out[40, 70].tolist() == [100, 100, 100]
    assert image[15, 20].tolist() == [100, 100, 100]  # the input is not modified

    boxed = overlay(image, None, bbox=[5, 5, 60, 40], points=[[30, 25]], color=(255, 0, 0))
    assert boxed[5, 30].tolist() == [255, 0, 0]       # top edge of the box
    assert boxed[20, 5].tolist() == [255, 0, 0]       # left edge
    assert boxed[25, 30].tolist() == [255, 0, 0]      # centre of the point's disc
    assert boxed[20, 20].tolist() == [100, 100, 100]  # inside the box, away from the point
    with pytest.raises(ValueError, match=r"mask shape \(5, 5\)"):
        overlay(image, np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, mask, alpha=1.5)


def test_png_writers_round_trip(tmp_path):
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:4, 3:8] = True
    mask_to_png(mask, tmp_path / "sub" / "m.png")  # parent folder is created
    back = cv2.imread(str(tmp_path / "sub" / "m.png"), cv2.IMREAD_UNCHANGED)
    assert back.shape == (7, 9) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.where(mask, 255, 0))

    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red in RGB
    save_rgb_png(rgb, tmp_path / "c.png")
    bgr = cv2.imread(str(tmp_path / "c.png"))
    assert bgr[0, 0].tolist() == [0, 0, 200]  # OpenCV reads BGR: red is the last channel
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        mask_to_png(np.zeros((2, 2, 2)), tmp_path / "x.png")


def test_panel_layout_and_text():
    image = np.full((100, 50, 3), 80, dtype=np.uint8)
    gt = np.zeros((100, 50), dtype=np.uint8)
    gt[10:30, 10:30] = 1
    gt[60:70, 0:10] = 255  # ignore region -> grey
    pred = np.zeros((100, 50), dtype=bool)
    pred[20:40, 20:40] = True
    out = panel(image, gt, pred, pred_bbox=[20, 20, 39, 39], text="query: x\nreasoning: " + "word " * 200,
                height=200)
    # tiles: 50 x 100 scaled to height 200 -> 100 wide; 3 tiles + 2 gaps of 2 px = 304 wide
    assert out.dtype == np.uint8 and out.shape[1] == 304
    assert out.shape[0] > 24 + 200  # title bar + tiles + a text block
    gt_tile = out[24:224, 102:202]
    assert tuple(gt_tile[40, 40]) != (80, 80, 80)     # target pixel (row 20, col 20 before scaling) tinted
    assert gt_tile[130, 10].tolist() == [115, 115, 115]  # ignore: 0.5 * 80 + 0.5 * 150 = 115
    assert panel(image, None, None, height=200).shape == (224, 304, 3)  # no text, no masks
    block = text_block("héllo " * 100, width=120, max_lines=3)
    assert block.shape[1] == 120 and block.shape[0] < 80  # at most 3 lines


# ------------------------------------------------------------------------------------------ infer
@pytest.fixture
def cached_tiny_qwen(monkeypatch, tiny_qwen):
    """build_tiny_qwen returns the module's model (building it takes ~10 s on 2 cores)."""
    monkeypatch.setattr(models.tiny, "build_tiny_qwen", lambda seed=0, **kwargs: tiny_qwen)


@pytest.fixture
def image_path(tmp_path):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (72, 96, 3), dtype=np.uint8)  # H = 72, W = 96
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), image[..., ::-1])
    return str(path)


def _run(argv, capsys):
    rc = infer.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_tiny_run_writes_readable_pngs(tmp_path, image_path, capsys, cached_tiny_qwen):
    out_dir = tmp_path / "out"
    rc, out, err = _run(["--image", image_path, "--query", "The cat.", "--output-dir", str(out_dir), *TINY,
                         "--device", "cpu", "--max-new-tokens", "8"], capsys)
    assert rc == 0, err
    mask = cv2.imread(str(out_dir / "mask.png"), cv2.IMREAD_UNCHANGED)
    over = cv2.imread(str(out_dir / "overlay.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (72, 96) and set(np.unique(mask)) <= {0, 255}
    assert over.shape == (72, 96, 3)
    record = json.loads((out_dir / "prediction.json").read_text())
    assert record["width"] == 96 and record["height"] == 72 and record["query"] == "The cat."
    assert "status" in out  # the answer (or its failure) is printed
    # random weights: a parsed answer gives SAM2's mask, anything else an empty one
    assert record["status"] == "ok" or (mask == 0).all()


def test_parsed_answer_gives_mask_overlay_and_both_frames(tmp_path, image_path, capsys, cached_tiny_qwen,
                                                          monkeypatch):
    completion = ('<think> the cat sits left </think> <answer>{"bbox": [105, 70, 420, 630], '
                  '"points_1": [210, 350], "points_2": [315, 420]}</answer>')
    monkeypatch.setattr(SegZeroPolicy, "complete", lambda self, images, queries, **kw: [completion])
    out_dir = tmp_path / "out"
    rc, out, err = _run(["--image", image_path, "--query", "the cat", "--output-dir", str(out_dir), *TINY,
                         "--prompt-mode", "box"], capsys)
    assert rc == 0, err
    # W = 96 (x factor 96/840 = 4/35), H = 72 (y factor 72/840 = 3/35):
    # 105 * 4/35 = 12; 70 * 3/35 = 6; 420 * 4/35 = 48; 630 * 3/35 = 54; 210 -> 24, 350 -> 30; 315 -> 36, 420 -> 36
    record = json.loads((out_dir / "prediction.json").read_text())
    assert record["bbox"] == [12, 6, 48, 54] and record["points"] == [[24, 30], [36, 36]]
    assert record["bbox_840"] == [105, 70, 420, 630] and record["status"] == "ok"
    assert "the cat sits left" in out and "[12, 6, 48, 54]" in out
    mask = cv2.imread(str(out_dir / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert (mask == 255).sum() == record["mask_area"] > 0
    over = cv2.imread(str(out_dir / "overlay.png"))[..., ::-1]
    image = cv2.imread(image_path)[..., ::-1]
    assert (over != image).any(axis=2).sum() >= record["mask_area"] * 0.9  # mask and box drawn


def _expect_error(argv, capsys, *fragments):
    rc, out, err = _run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_config_only_model_directory_is_reported_before_loading(tmp_path, image_path, capsys, monkeypatch):
    model_dir = tmp_path / "qwen"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    import models.segmenter

    def heavy(*args, **kwargs):
        raise AssertionError("loaded SAM2 before checking the policy weights")

    monkeypatch.setattr(models.segmenter.Segmenter, "from_hub", heavy)
    _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"),
                   "--model-path", str(model_dir),
                   "--device", "cpu"], capsys, "config.json but no weights", str(model_dir))
    _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"),
                   "--model-path", str(tmp_path / "nowhere"), "--device", "cpu"], capsys,
                  "neither an existing directory")


def test_image_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    _expect_error(["--image", str(bad), "--query", "q", "--output-dir", str(tmp_path), *TINY], capsys,
                  "unreadable image", "bad.jpg", "pass a readable image file")
    _expect_error(["--image", str(tmp_path / "missing.png"), "--query", "q", "--output-dir", str(tmp_path),
                   *TINY],
                  capsys, "image file not found", "missing.png")


def test_cuda_requested_but_unavailable(tmp_path, image_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path), *TINY,
                   "--device", "cuda"],
                  capsys, "--device cuda requested but CUDA is not available", "--device cpu")


def test_missing_sam2_checkpoint_and_option_mistakes(tmp_path, image_path, capsys):
    base = ["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"), "--device", "cpu"]
    _expect_error(base + ["--model-path", str(tmp_path),
                          "--sam2", f"configs/sam2.1/sam2.1_hiera_l.yaml::{tmp_path / 'sam2.pt'}"], capsys,
                  "SAM2 checkpoint not found", "sam2.pt")
    _expect_error(base, capsys, "pass --model-path PATH_OR_HUB_ID", "--model-path tiny")
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(real_config_path("3b"), config_only / "config.json")
    _expect_error(base + ["--model-path", str(config_only), "--sam2", "toy"], capsys, "no weights")
    _expect_error(base + ["--model-path", "x/y", "--sam2", "c.yaml::"], capsys,
                  "CONFIG::CHECKPOINT with both parts")
    _expect_error(base + [*TINY, "--max-new-tokens", "0"], capsys, "--max-new-tokens must be >= 1, got 0")
    (tmp_path / "file").write_text("")
    _expect_error(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "file"), *TINY],
                  capsys, "is not a directory")


def test_query_out_and_sam2_config_are_checked_before_any_model_loads(tmp_path, image_path, capsys, monkeypatch):
    import models.loading

    def heavy(*args, **kwargs):
        raise AssertionError("loaded a model before checking the command line")

    monkeypatch.setattr(models.tiny, "build_tiny_qwen", heavy)
    monkeypatch.setattr(models.loading, "load_policy", heavy)
    base = ["--image", image_path, *TINY, "--device", "cpu"]
    out = ["--output-dir", str(tmp_path / "o")]
    _expect_error(base + out + ["--query", "..."], capsys, "--query: query is empty after normalisation: '...'")
    _expect_error(base + out + ["--query", "the \udcff cat"], capsys,  # non-UTF-8 bytes in argv arrive like this
                  "--query: query is not valid text: surrogates not allowed at character 4")
    _expect_error(base + ["--query", "q", "--output-dir", "/sys/seg_zero_out"], capsys,
                  "--output-dir '/sys/seg_zero_out': cannot write in '/sys'")
    hostile = tmp_path / "x.yaml"
    hostile.write_text("model:\n  _target_: os.system\n  _args_: ['true']\n")
    (tmp_path / "sam2.pt").write_bytes(b"")
    _expect_error(base + out + ["--query", "q", "--sam2", f"{hostile}::{tmp_path / 'sam2.pt'}"], capsys,
                  "names objects that are not sam2 classes")
    assert not (tmp_path / "o").exists()


def test_module_entry_point_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "models.infer", "--image", str(tmp_path / "none.png"), "--query", "q",
         "--output-dir", str(tmp_path), *TINY],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: image file not found: {tmp_path / 'none.png'}; "
                                                "pass a readable image file (jpg, png, ...)"]


@pytest.mark.slow
def test_checkpoint_directories_load_like_real_weights(tmp_path, image_path, capsys, tiny_qwen):
    """The non-tiny path: a saved Qwen2.5-VL directory and a sam2 config + .pt file."""
    from models.segmenter import TINY_SAM2_CONFIG, build_tiny_sam2

    model, processor = tiny_qwen
    model.save_pretrained(tmp_path / "qwen")
    processor.save_pretrained(tmp_path / "qwen")
    torch.save({"model": build_tiny_sam2(seed=0).state_dict()}, tmp_path / "sam2.pt")
    rc, out, err = _run(["--image", image_path, "--query", "q", "--output-dir", str(tmp_path / "o"),
                         "--device", "cpu", "--model-path", str(tmp_path / "qwen"),
                         "--sam2", f"{TINY_SAM2_CONFIG}::{tmp_path / 'sam2.pt'}",
                         "--max-new-tokens", "4"], capsys)
    assert rc == 0, err
    assert cv2.imread(str(tmp_path / "o" / "mask.png"), cv2.IMREAD_UNCHANGED).shape == (72, 96)
