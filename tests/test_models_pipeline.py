"""models.pipeline: 840 -> original mapping, parse failures, SAM2 prompting, real tiny policy."""
import json

import numpy as np
import pytest

from models.pipeline import Prediction, SegZeroPipeline, map_to_original, to_original
from rewards import box_iou


class FakePolicy:
    """Returns fixed completions and records what it was asked."""

    def __init__(self, completions):
        self.completions = list(completions)
        self.calls = []

    def complete(self, images, queries, *, max_new_tokens=1024, greedy=True, temperature=1.0, top_p=1.0):
        self.calls.append(dict(images=images, queries=queries, max_new_tokens=max_new_tokens, greedy=greedy))
        return self.completions[: len(images)]


class RecordingSegmenter:
    """segment_batch that records its inputs and returns all-True masks."""

    def __init__(self):
        self.calls = []

    def segment_batch(self, images, bboxes, points, mode):
        self.calls.append(dict(images=images, bboxes=bboxes, points=points, mode=mode))
        return [np.ones(im.shape[:2], dtype=bool) for im in images]


def answer(bbox, p1, p2, think="the cat is on the left"):
    return f"<think> {think} </think> <answer>{json.dumps({'bbox': bbox, 'points_1': p1, 'points_2': p2})}</answer>"


def test_to_original_rounds_half_up_and_clips():
    # W = 420 -> factor 420 / 840 = 0.5 (exact in binary floating point).
    assert to_original(5, 420) == 3       # 2.5 -> floor(3.0) = 3   (Python round(2.5) would give 2)
    assert to_original(7, 420) == 4       # 3.5 -> 4
    assert to_original(4.9, 420) == 2     # 2.45 -> floor(2.95) = 2
    assert to_original(839, 420) == 419   # 419.5 -> 420 -> clipped to W - 1 = 419
    assert to_original(-10, 420) == 0     # -5 -> floor(-4.5) = -5 -> clipped to 0
    assert to_original(840, 840) == 839   # the far edge of the frame is pixel 839
    assert to_original(420, 1000) == 500  # 420 * 1000 / 840 = 500 -> floor(500.5) = 500


def test_map_to_original_hand_computed():
    # W = 420 (x factor 0.5), H = 168 (y factor 0.2).
    bbox, points = map_to_original([5, 12.5, 839, 840], [[7, 420], [-10, 0]], width=420, height=168)
    # x1 = 5*0.5 = 2.5 -> 3; y1 = 12.5*0.2 = 2.5 -> 3; x2 = 419.5 -> 420 -> 419; y2 = 168 -> 167 (H - 1)
    assert bbox == [3, 3, 419, 167]
    # p1 = (3.5 -> 4, 84 -> 84); p2 = (-5 -> clipped 0, 0 -> 0)
    assert points == [[4, 84], [0, 0]]
    with pytest.raises(ValueError, match="width=0"):
        map_to_original([0, 0, 1, 1], [[0, 0]], width=0, height=5)


def test_pipeline_maps_prompts_and_handles_bad_answers_without_raising():
    images = [
        np.full((168, 420, 3), 10, dtype=np.uint8),
        np.full((50, 60, 3), 20, dtype=np.uint8),
        np.full((30, 40, 3), 30, dtype=np.uint8),
        np.full((80, 70, 3), 40, dtype=np.uint8),
    ]
    completions = [
        answer([5, 12.5, 839, 840], [7, 420], [-10, 0]),
        "<think> no idea </think> <answer>{'bbox': [1, 2, 3, 4]}</answer>",  # single quotes
        "I will not answer",
        answer([0, 0, 840, 840], [1, 1], "left"),  # a point that is a string
    ]
    policy, segmenter = FakePolicy(completions), RecordingSegmenter()
    pipe = SegZeroPipeline(policy, segmenter, prompt_mode="box", max_new_tokens=77)
    preds = pipe(images, ["the cat", "a dog", "x", "y"])

    # the policy got the ORIGINAL images (it resizes to 840 itself), greedy decoding, the budget
    assert policy.calls[0]["images"][0] is images[0]
    assert policy.calls[0]["greedy"] is True and policy.calls[0]["max_new_tokens"] == 77
    # SAM2 ran once, on the one parsed answer, on the original image, with the mapped prompts
    assert len(segmenter.calls) == 1
    call = segmenter.calls[0]
    assert call["images"][0] is images[0] and len(call["images"]) == 1
    assert call["bboxes"] == [[3, 3, 419, 167]] and call["points"] == [[[4, 84], [0, 0]]]
    assert call["mode"] == "box"

    first = preds[0]
    assert isinstance(first, Prediction) and first.ok and first.status == "ok"
    assert first.reasoning == "the cat is on the left"
    assert first.bbox_840 == [5.0, 12.5, 839.0, 840.0] and first.points_840 == [[7.0, 420.0], [-10.0, 0.0]]
    assert first.bbox == [3, 3, 419, 167] and first.points == [[4, 84], [0, 0]]
    assert first.mask.shape == (168, 420) and first.mask.all()

    assert [p.status for p in preds[1:]] == ["invalid_json", "no_json", "bad_shape"]
    for pred, image in zip(preds[1:], images[1:]):
        assert not pred.ok and pred.bbox is None and pred.points is None and pred.bbox_840 is None
        assert pred.mask.dtype == np.bool_ and pred.mask.shape == image.shape[:2] and not pred.mask.any()
    assert preds[1].reasoning == "no idea" and preds[2].reasoning is None


def test_single_quotes_opt_in():
    image = np.zeros((84, 84, 3), dtype=np.uint8)
    completion = "<answer>{'bbox': [0, 0, 420, 420], 'points_1': [100, 100], 'points_2': [200, 300]}</answer>"
    segmenter = RecordingSegmenter()
    pred = SegZeroPipeline(FakePolicy([completion]), segmenter, single_quotes=True)([image], ["q"])[0]
    assert pred.ok and pred.bbox == [0, 0, 42, 42] and pred.points == [[10, 10], [20, 30]]  # factor 84/840 = 0.1
    assert segmenter.calls[0]["mode"] == "box+points"


def test_pipeline_argument_errors():
    with pytest.raises(ValueError, match="'box-only'"):
        SegZeroPipeline(FakePolicy([]), RecordingSegmenter(), prompt_mode="box-only")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        SegZeroPipeline(FakePolicy([]), RecordingSegmenter(), max_new_tokens=0)
    pipe = SegZeroPipeline(FakePolicy(["x"]), RecordingSegmenter())
    with pytest.raises(ValueError, match="2 images but 1 queries"):
        pipe([np.zeros((4, 4, 3), np.uint8)] * 2, ["q"])
    with pytest.raises(ValueError, match=r"images\[0\] must be a uint8 RGB"):
        pipe([np.zeros((4, 4), np.uint8)], ["q"])
    assert pipe([], []) == []


def test_pipeline_with_tiny_sam2_equals_direct_segment(tiny_sam2):
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (100, 140, 3), dtype=np.uint8), rng.randint(0, 256, (60, 50, 3), dtype=np.uint8)]
    completions = [answer([84, 84, 756, 672], [200, 300], [500, 400]), answer([0, 0, 420, 840], [100, 100], [300, 700])]
    preds = SegZeroPipeline(FakePolicy(completions), tiny_sam2)(images, ["a", "b"])
    # image 0: W=140 (x factor 1/6), H=100 (y factor 5/42): 84/6 = 14; 84*5/42 = 10; 756/6 = 126; 672*5/42 = 80
    assert preds[0].bbox == [14, 10, 126, 80]
    for pred, image in zip(preds, images):
        np.testing.assert_array_equal(pred.mask, tiny_sam2.segment(image, pred.bbox, pred.points, mode="box+points"))
        assert 0 < pred.mask.mean() < 1


@pytest.mark.slow
def test_pipeline_with_real_tiny_policy(tiny_sam2):
    from models.policy import SegZeroPolicy
    from models.tiny import build_tiny_qwen

    model, processor = build_tiny_qwen(seed=0)
    policy = SegZeroPolicy(model, processor, with_example=True, think=True)
    rng = np.random.RandomState(1)
    images = [rng.randint(0, 256, (64, 96, 3), dtype=np.uint8), rng.randint(0, 256, (40, 40, 3), dtype=np.uint8)]
    pipe = SegZeroPipeline(policy, tiny_sam2, max_new_tokens=12)
    preds = pipe(images, ["the red thing", "what is left?"])
    assert len(preds) == 2
    # random weights: whatever the text, the pipeline returns a valid prediction per sample
    direct = policy.complete(images, ["the red thing", "what is left?"], max_new_tokens=12, greedy=True)
    for pred, image, text in zip(preds, images, direct):
        assert pred.completion == text  # greedy decoding is deterministic
        assert pred.mask.shape == image.shape[:2] and pred.mask.dtype == np.bool_
        assert pred.ok or not pred.mask.any()


def test_inverted_box_goes_to_sam2_as_written():
    # x2 < x1 and y2 < y1: the parser accepts it, the pipeline maps it without reordering the corners
    image = np.zeros((84, 84, 3), dtype=np.uint8)  # factor 84 / 840 = 0.1
    segmenter = RecordingSegmenter()
    pred = SegZeroPipeline(FakePolicy([answer([700, 600, 100, 200], [300, 300], [400, 400])]),
                           segmenter)([image], ["q"])[0]
    assert pred.ok and pred.bbox == [70, 60, 10, 20]
    assert segmenter.calls[0]["bboxes"] == [[70, 60, 10, 20]]
    # the box reward gives the same box IoU 0, even against the target with its corners in order
    assert box_iou([700, 600, 100, 200], [100, 200, 700, 600]) == 0.0


class TaskPolicy(FakePolicy):
    def __init__(self, completions, task):
        super().__init__(completions)
        self.task = task


def test_each_pipeline_refuses_a_policy_built_for_the_other_task():
    from models.multi_object import MultiObjectPipeline

    with pytest.raises(ValueError, match=r"SegZeroPipeline needs a policy built with task='single', got "
                                         r"task='multi'.*MultiObjectPipeline"):
        SegZeroPipeline(TaskPolicy([], "multi"), RecordingSegmenter())
    with pytest.raises(ValueError, match=r"MultiObjectPipeline needs a policy built with task='multi', got "
                                         r"task='single'.*use SegZeroPipeline"):
        MultiObjectPipeline(TaskPolicy([], "single"), RecordingSegmenter())
    # the matching task, or no task attribute at all, is accepted by each
    SegZeroPipeline(TaskPolicy([], "single"), RecordingSegmenter())
    MultiObjectPipeline(TaskPolicy([], "multi"), RecordingSegmenter())
    SegZeroPipeline(FakePolicy([]), RecordingSegmenter())
    MultiObjectPipeline(FakePolicy([]), RecordingSegmenter())


def test_real_policies_of_the_other_task_are_refused(tiny_qwen):
    from models.multi_object import MultiObjectPipeline
    from models.policy import SegZeroPolicy

    with pytest.raises(ValueError, match="task='single'"):
        SegZeroPipeline(SegZeroPolicy(*tiny_qwen, task="multi"), RecordingSegmenter())
    with pytest.raises(ValueError, match="task='multi'"):
        MultiObjectPipeline(SegZeroPolicy(*tiny_qwen, task="single"), RecordingSegmenter())


def test_load_segmenter_says_a_bare_checkpoint_needs_its_config(tmp_path, monkeypatch):
    from models import pipeline
    from models.segmenter import Segmenter

    def no_hub(*args, **kwargs):
        raise AssertionError("looked a checkpoint file up as a hub id")

    monkeypatch.setattr(Segmenter, "from_hub", no_hub)
    plain = tmp_path / "sam2_weights"  # an existing file, no extension
    plain.write_bytes(b"x")
    for value in ("/nowhere/sam2.1_hiera_large.pt", "ckpt.PTH", str(plain)):
        with pytest.raises(ValueError, match=r"is a checkpoint file, which needs its config: pass --sam2 "
                                             r"CONFIG::CHECKPOINT, e\.g\. configs/sam2\.1/sam2\.1_hiera_l\.yaml::"):
            pipeline.load_segmenter(value)
    # a hub id still goes to the hub
    with pytest.raises(AssertionError, match="looked a checkpoint"):
        pipeline.load_segmenter("facebook/sam2-hiera-large")
