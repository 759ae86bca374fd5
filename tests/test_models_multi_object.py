"""Multi-object prompt and pipeline (SPEC.md section 9): the union mask through the tiny SAM2, the
empty answer, parse failures, prompt mapping, batching of the SAM2 calls."""
import json

import numpy as np
import pytest

from models.multi_object import MultiObjectPipeline
from models.prompt import build_messages, build_multi_object_prompt
from models.segmenter import Segmenter


class FakePolicy:
    task = "multi"

    def __init__(self, completions):
        self.completions = list(completions)

    def complete(self, images, queries, *, max_new_tokens=1024, greedy=True, temperature=1.0, top_p=1.0):
        return self.completions[: len(images)]


class RecordingSegmenter:
    """segment_objects that records its inputs; object k of an image covers row k only."""

    def __init__(self):
        self.calls = []

    def segment_objects(self, images, boxes, points, mode):
        self.calls.append(dict(n=len(images), boxes=boxes, points=points, mode=mode))
        out = []
        for im, b in zip(images, boxes):
            m = np.zeros((len(b), *im.shape[:2]), dtype=bool)
            for k in range(len(b)):
                m[k, k] = True
            out.append(m)
        return out


def answer(objects):
    return f"<think> two cups </think><answer>{json.dumps(objects)}</answer>"


def test_multi_object_prompt_is_the_spec_text():
    text = build_multi_object_prompt("All the Cups..")
    assert text == (
        'Please find "all the cups" with bboxs and points.Compare the difference between object(s) and find '
        "the most closely matched object(s).Output the thinking process in <think> </think> and final answer "
        "in <answer> </answer> tags.Output the bbox(es) and point(s) inside the interested object(s) in JSON "
        'format.i.e., <think> thinking process here </think><answer>[{"bbox_2d": [10,100,200,210], '
        '"point_2d": [30,110]}, {"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]</answer>')
    content = build_messages("cups", task="multi")[0]["content"]
    assert content[0] == {"type": "image"} and content[1]["text"] == "\n" + build_multi_object_prompt("cups")
    with pytest.raises(ValueError, match="task"):
        build_messages("cups", task="many")
    with pytest.raises(ValueError, match="empty"):
        build_multi_object_prompt("...")


def test_pipeline_maps_every_object_and_unions():
    images = [np.zeros((168, 420, 3), np.uint8), np.zeros((10, 10, 3), np.uint8), np.zeros((20, 30, 3), np.uint8)]
    completions = [
        answer([{"bbox_2d": [5, 12.5, 839, 840], "point_2d": [7, 420]},
                {"bbox_2d": [0, 0, 10, 10], "point_2d": [-10, 0]}]),
        "<think> none </think><answer>[]</answer>",
        "<think> truncated </think><answer>[{\"bbox_2d\": [1, 2",
    ]
    seg = RecordingSegmenter()
    preds = MultiObjectPipeline(FakePolicy(completions), seg)(images, ["cups", "dogs", "cats"])
    two, none, bad = preds
    # x factor 420 / 840 = 0.5, y factor 168 / 840 = 0.2 (as the single-object mapping)
    assert two.bbox == [[3, 3, 419, 167], [0, 0, 5, 2]] and two.points == [[4, 84], [0, 0]]
    assert two.bbox_840[0] == [5, 12.5, 839, 840] and two.num_objects == 2
    assert two.object_masks.shape == (2, 168, 420)
    assert two.mask.sum() == 2 * 420 and two.mask[0].all() and two.mask[1].all()  # rows 0 and 1: the union
    assert none.ok and none.num_objects == 0 and not none.mask.any() and none.bbox == []
    assert bad.status == "no_answer" and not bad.ok and bad.bbox is None and not bad.mask.any()
    # one SAM2 call for the whole batch, with each image's own prompt list
    assert len(seg.calls) == 1 and seg.calls[0]["mode"] == "box+points"
    assert [len(b) for b in seg.calls[0]["boxes"]] == [2, 0, 0]


def test_pipeline_needs_a_multi_object_policy():
    class Single(FakePolicy):
        task = "single"

    with pytest.raises(ValueError, match="task='multi'"):
        MultiObjectPipeline(Single([]), RecordingSegmenter())


def test_union_mask_through_the_tiny_sam2():
    seg = Segmenter.tiny(seed=0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)]
    boxes = [[[5, 5, 30, 40], [40, 10, 75, 60], [10, 45, 20, 60]], [[8, 8, 30, 30]]]
    points = [[[15, 20], [60, 30], [15, 50]], [[20, 20]]]
    per_object = seg.segment_objects(images, boxes, points, mode="box+points")
    assert per_object[0].shape == (3, 64, 80) and per_object[0].dtype == bool
    assert per_object[1].shape == (1, 48, 48)
    # batched per image == one object at a time with the same prompts
    for i in range(2):
        for k in range(len(boxes[i])):
            single = seg.segment(images[i], boxes[i][k], [points[i][k]], mode="box+points")
            assert (single != per_object[i][k]).mean() < 0.01
    # through the pipeline: the mask is the union of the object masks
    objs = [{"bbox_2d": [b[0] * 840 / 80, b[1] * 840 / 64, b[2] * 840 / 80, b[3] * 840 / 64],
             "point_2d": [p[0] * 840 / 80, p[1] * 840 / 64]} for b, p in zip(boxes[0], points[0])]
    pred = MultiObjectPipeline(FakePolicy([answer(objs)]), seg)([images[0]], ["x"])[0]
    assert pred.bbox == boxes[0] and pred.points == points[0]
    assert np.array_equal(pred.mask, pred.object_masks.any(axis=0))
    assert (pred.object_masks != per_object[0]).mean() < 0.01
    # K = 0 everywhere: no SAM2 call, empty arrays
    empty = seg.segment_objects(images, [[], []], [[], []])
    assert [e.shape for e in empty] == [(0, 64, 80), (0, 48, 48)]
    with pytest.raises(ValueError, match="as many"):
        seg.segment_objects(images[:1], [[[0, 0, 5, 5]]], [[]])
