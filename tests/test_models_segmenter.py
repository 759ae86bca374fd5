"""models.segmenter: parity with sam2's own predictor, batching, prompt modes, loading errors."""
import os
import re
import time

import numpy as np
import pytest
import torch

from models import segmenter as seg
from models.segmenter import PROMPT_MODES, Segmenter, best_mask, build_tiny_sam2, sam2_prompts


def _image(h, w, seed):
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, (h, w, 3), dtype=np.uint8)
    image[h // 4 : h // 2, w // 4 : w // 2] = (250, 30, 30)  # a flat red block, something to find
    return image


BOX = [40, 20, 150, 90]
POINTS = [[60, 40], [120, 70]]


def test_tiny_is_deterministic_from_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_sam2(seed=0, image_size=128).state_dict()
    after = torch.rand(1)  # the builder used a forked RNG: the global stream is where it was
    b = build_tiny_sam2(seed=0, image_size=128).state_dict()
    c = build_tiny_sam2(seed=1, image_size=128).state_dict()
    assert torch.equal(after, expected_next)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("mode", PROMPT_MODES)
def test_segment_matches_sam2_image_predictor_called_directly(tiny_sam2, mode):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = _image(120, 200, seed=0)
    # sam2's predictor on the same model, feature sizes written out for a 256 input: 256/4, /8, /16.
    direct = SAM2ImagePredictor(tiny_sam2.model)
    direct._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]
    direct.set_image(image)
    masks, scores, _ = direct.predict(
        point_coords=None if mode == "box" else np.array(POINTS, dtype=np.float32),
        point_labels=None if mode == "box" else np.array([1, 1]),
        box=None if mode == "points" else np.array(BOX, dtype=np.float32),
        multimask_output=True,
    )
    assert masks.shape == (3, 120, 200)
    expected = masks[np.argmax(scores)].astype(bool)

    got = tiny_sam2.segment(image, bbox=BOX, points=POINTS, mode=mode)
    assert got.dtype == np.bool_ and got.shape == (120, 200)
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def toy_sam2():
    """The shipped toy SAM2 (trained on the synthetic scenes: its masks follow the prompts)."""
    from models.toy import load_toy_sam2

    return load_toy_sam2()


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_each_mode_segments_what_its_own_prompts_name(toy_sam2):
    # two flat blocks on grey: the box names block A, the two points lie on block B
    image = np.full((120, 200, 3), 200, dtype=np.uint8)
    image[20:60, 20:70] = (250, 30, 30)
    image[60:110, 120:180] = (30, 30, 250)
    a = np.zeros((120, 200), dtype=bool)
    a[20:60, 20:70] = True
    b = np.zeros((120, 200), dtype=bool)
    b[60:110, 120:180] = True
    box, points = [15, 15, 75, 65], [[140, 80], [165, 100]]
    in_box = np.zeros((120, 200), dtype=bool)
    in_box[15:66, 15:76] = True
    masks = {mode: toy_sam2.segment(image, box, points, mode=mode) for mode in PROMPT_MODES}
    # "box" sees only the box: block A, inside the box; "points" sees only the points: block B
    # (measured: IoU 0.97 with A, 100 % inside the box; IoU 0.975 with B)
    assert _iou(masks["box"], a) > 0.9 and (masks["box"] & in_box).sum() >= 0.95 * masks["box"].sum()
    assert _iou(masks["points"], b) > 0.9 and not (masks["points"] & a).any()
    # "box+points" sees both (points outside the box change the mask: 199 pixels measured)
    assert (masks["box+points"] != masks["box"]).sum() >= 50
    assert (masks["box+points"] != masks["points"]).sum() >= 50


def test_call_infers_mode_from_given_prompts(tiny_sam2):
    image = _image(120, 200, seed=0)
    np.testing.assert_array_equal(tiny_sam2(image, BOX, None), tiny_sam2.segment(image, BOX, mode="box"))
    np.testing.assert_array_equal(tiny_sam2(image, None, POINTS), tiny_sam2.segment(image, points=POINTS, mode="points"))
    # The data filter's use: ground-truth box plus one point (label 1).
    np.testing.assert_array_equal(tiny_sam2(image, BOX, [POINTS[0]]), tiny_sam2.segment(image, BOX, [POINTS[0]]))
    with pytest.raises(ValueError, match="bbox, points"):
        tiny_sam2(image, None, None)


def test_batch_equals_one_by_one(tiny_sam2):
    images = [_image(120, 200, seed=0), _image(90, 64, seed=1), _image(150, 150, seed=2)]
    bboxes = [BOX, [5, 5, 50, 60], [0, 0, 149, 149]]
    points = [POINTS, [[20, 30], [30, 40]], [[75, 75], [10, 140]]]
    for mode in PROMPT_MODES:
        batch = tiny_sam2.segment_batch(images, bboxes if mode != "points" else None,
                                        points if mode != "box" else None, mode=mode)
        single = [tiny_sam2.segment(im, b, p, mode=mode) for im, b, p in zip(images, bboxes, points)]
        assert [m.shape for m in batch] == [(120, 200), (90, 64), (150, 150)]
        for b, s in zip(batch, single):
            # one backbone pass over 3 images gives the masks of 3 passes exactly (CPU, fp32)
            np.testing.assert_array_equal(b, s, err_msg=mode)
            assert 0 < b.mean() < 1  # a real mask, not all or nothing
    assert tiny_sam2.segment_batch([]) == []


def test_best_mask_picks_highest_score_first_on_ties():
    masks = np.zeros((3, 2, 2), dtype=np.float32)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 0, 1] = 1.0
    np.testing.assert_array_equal(best_mask(masks, np.array([0.1, 0.9, 0.3])), [[False, False], [False, True]])
    # tie between 0 and 2 -> index 0
    np.testing.assert_array_equal(best_mask(masks, np.array([0.5, 0.2, 0.5])), [[True, False], [False, False]])


def test_prompt_arrays_and_their_errors():
    box, coords, labels = sam2_prompts([1, 2, 3, 4], [[5, 6], [7, 8]], "box+points")
    assert box.tolist() == [1, 2, 3, 4] and coords.shape == (2, 2) and labels.tolist() == [1, 1]
    assert sam2_prompts([1, 2, 3, 4], None, "box")[1:] == (None, None)
    assert sam2_prompts(None, [[5, 6], [7, 8]], "points")[0] is None
    with pytest.raises(ValueError, match="'box-only'"):
        sam2_prompts([1, 2, 3, 4], None, "box-only")
    with pytest.raises(ValueError, match="needs points"):
        sam2_prompts([1, 2, 3, 4], None, "box+points")
    with pytest.raises(ValueError, match="needs a bbox"):
        sam2_prompts(None, [[1, 2]], "box")
    with pytest.raises(ValueError, match="4 finite"):
        sam2_prompts([1, 2, 3], None, "box")
    with pytest.raises(ValueError, match="finite"):
        sam2_prompts(None, [[1, float("nan")]], "points")


def test_image_validation(tiny_sam2):
    with pytest.raises(ValueError, match="uint8 RGB"):
        tiny_sam2.segment(np.zeros((10, 10, 3), dtype=np.float32), BOX, POINTS)
    with pytest.raises(ValueError, match="uint8 RGB"):
        tiny_sam2.segment(np.zeros((10, 10), dtype=np.uint8), BOX, POINTS)
    with pytest.raises(ValueError, match="2 images, 1 bboxes"):
        tiny_sam2.segment_batch([_image(20, 20, 0)] * 2, [BOX], [POINTS, POINTS])


def test_from_config_round_trip_and_errors(tmp_path, monkeypatch):
    model = build_tiny_sam2(seed=3, image_size=128)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    loaded = Segmenter.from_config(seg.TINY_SAM2_CONFIG, str(ckpt))
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in model.state_dict().items())
    # the package config builds a 1024 model; the predictor's feature sizes follow it
    assert loaded.predictor._bb_feat_sizes == [(256, 256), (128, 128), (64, 64)]

    torch.save({"model": {"not_a_sam2_key": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match config"):
        Segmenter.from_config(seg.TINY_SAM2_CONFIG, str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="unknown SAM2 config 'configs/nope.yaml'"):
        Segmenter.from_config("configs/nope.yaml", str(ckpt))

    # A missing checkpoint is reported before any model is built.
    def no_build(*args, **kwargs):
        raise AssertionError("built a model before checking the checkpoint")

    monkeypatch.setattr(seg, "_build_sam2_model", no_build)
    with pytest.raises(FileNotFoundError, match="SAM2 checkpoint not found: .*missing.pt"):
        Segmenter.from_config(seg.TINY_SAM2_CONFIG, str(tmp_path / "missing.pt"))


def _damaged_checkpoints(folder):
    """name -> (path, what the error says) for files torch.load fails on or that hold no state dict."""
    import argparse

    out = {}
    out["garbage"] = folder / "garbage.pt"
    out["garbage"].write_bytes(b"this is not a checkpoint at all" * 10)  # torch.load: IndexError
    out["empty"] = folder / "empty.pt"
    out["empty"].write_bytes(b"")  # EOFError
    whole = folder / "whole.pt"
    torch.save({"model": {"w": torch.zeros(4096)}}, whole)
    out["truncated"] = folder / "truncated.pt"
    out["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # OSError (zip reader)
    out["list"] = folder / "list.pt"
    torch.save([1, 2, 3], out["list"])  # loads, but a list
    out["non_tensor"] = folder / "non_tensor.pt"
    torch.save({"model": {"w": 1}}, out["non_tensor"])  # loads, but an int where a tensor belongs
    out["object"] = folder / "object.pt"
    torch.save({"model": {}, "args": argparse.Namespace(a=1)}, out["object"])  # weights_only: UnpicklingError
    return {
        "garbage": (out["garbage"], r"torch.load failed \(IndexError"),
        "empty": (out["empty"], r"torch.load failed \(EOFError"),
        "truncated": (out["truncated"], r"torch.load failed \((OSError|RuntimeError)"),
        "list": (out["list"], r"it holds a list, not a state dict"),
        "non_tensor": (out["non_tensor"], r"entry 'w' is a int, not a tensor"),
        "object": (out["object"], r"torch.load failed \(UnpicklingError: Unsupported global: GLOBAL argparse.Namespace"),
    }


def test_damaged_checkpoint_is_a_clear_error_before_any_model_is_built(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("built a model before reading the checkpoint")

    monkeypatch.setattr(seg, "_build_sam2_model", no_build)
    for name, (path, cause) in _damaged_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as info:
            Segmenter.from_config(seg.TINY_SAM2_CONFIG, str(path))
        message = str(info.value)
        assert "\n" not in message and "\x1b" not in message, (name, message)
        assert re.search(rf"SAM2 checkpoint '{re.escape(str(path))}' is not a readable sam2 checkpoint: {cause}",
                         message), (name, message)


def test_from_hub_errors_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown SAM2 hub id 'me/sam3'"):
        Segmenter.from_hub("me/sam3")

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("offline and not in cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    t0 = time.time()
    with pytest.raises(FileNotFoundError, match="--sam2 configs/sam2/sam2_hiera_l.yaml::PATH"):
        Segmenter.from_hub("facebook/sam2-hiera-large")
    assert time.time() - t0 < 5


def _package_config_dir():
    import sam2

    return os.path.dirname(sam2.__file__)


def test_config_outside_the_package_configs_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    # a yaml that Hydra would instantiate as open(victim, "w"): truncating the victim file
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    hostile = tmp_path / "x.yaml"
    hostile.write_text(f"model:\n  _target_: builtins.open\n  file: {victim}\n  mode: w\n")
    escape = os.path.relpath(hostile, _package_config_dir())  # "../../../.../x.yaml" from the package
    assert escape.startswith("..")
    refused = (r"names objects that are not sam2 classes: model._target_='builtins.open'; "
               r"a config may only")
    with pytest.raises(ValueError, match=refused):  # as a user path: read, checked, refused
        seg._build_sam2_model(str(hostile))
    monkeypatch.chdir(tmp_path)
    for name in (escape, "configs/../" + escape):
        # never resolved inside the package; as a user path (relative to the working directory) it
        # names the hostile file or nothing, depending on where the package is installed: refused
        # either way, before Hydra instantiates anything
        with pytest.raises(ValueError, match=refused + "|unknown SAM2 config"):
            seg._build_sam2_model(name)
    monkeypatch.chdir(_package_config_dir())
    with pytest.raises(ValueError, match="unknown SAM2 config"):  # inside the package, outside configs/
        seg._build_sam2_model("build_sam.py")
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("target", ["sam2.build_sam.os.system", "sam2.build_sam.OmegaConf", "os.system",
                                    "sam2.modeling.sam2_base.torch.nn.Linear", "sam2.modeling.nothing.X"])
def test_every_target_must_be_a_class_defined_in_sam2(tmp_path, target):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  _target_: sam2.modeling.sam2_base.SAM2Base\n  image_encoder:\n"
                    f"    trunk:\n      - _target_: {target}\n")
    with pytest.raises(ValueError, match=f"classes: model.image_encoder.trunk\\[0\\]._target_='{target}';"):
        seg.check_sam2_config(str(path))


def test_user_yaml_with_sam2_classes_builds_like_the_package_config(tmp_path):
    package = os.path.join(_package_config_dir(), seg.TINY_SAM2_CONFIG)
    copy = tmp_path / "my_tiny.yaml"
    copy.write_text(open(package).read())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        mine = seg._build_sam2_model(str(copy), image_size=128)
        torch.manual_seed(4)
        theirs = seg._build_sam2_model(seg.TINY_SAM2_CONFIG, image_size=128)
    assert mine.image_size == 128 and mine.sam_mask_decoder.dynamic_multimask_via_stability
    a, b = mine.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
