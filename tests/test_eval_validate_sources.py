"""Validation on sources whose samples carry only a mask (the ReasonSeg parquet, LISA folder and
RefCOCO readers leave ``solution`` None), empty targets in validation, the held-out box-IoU proxy on
answers that did not fully parse, and a corrupt ``best.json``."""
import dataclasses
import json

import numpy as np
import pytest

from data import Sample, SyntheticDataset, solution_from_mask
from eval.validate import BestPointer, validate, validation_solution
from rewards import format_answer


class _ListSource:
    """A SampleSource over a list of samples."""

    def __init__(self, samples):
        self.samples = list(samples)
        self.ids = [s.id for s in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return dataclasses.replace(self.samples[index])  # a fresh object, as a reader decodes one


class _Answers:
    """complete(): a fixed answer per image (looked up by its bytes)."""

    def __init__(self, answers):
        self.answers = answers

    def complete(self, images, queries, *, max_new_tokens, greedy=True):
        return [self.answers[im.tobytes()] for im in images]


class _MaskLookup:
    """segment_batch(): the ground-truth mask of the image, whatever the prompt (a perfect segmenter)."""

    def __init__(self, samples):
        self.masks = {s.image.tobytes(): s.mask.astype(bool) for s in samples}

    def segment_batch(self, images, bboxes, points, mode="box+points"):
        return [self.masks[im.tobytes()] for im in images]


def _shifted_answer(solution, shift):
    """The ground-truth answer moved right by ``shift`` pixels (box and points)."""
    x1, y1, x2, y2 = solution["bbox"]
    points = [[x + shift, y] for x, y in solution["points"]]
    return format_answer([x1 + shift, y1, x2 + shift, y2], points, reasoning="r")


def test_mask_only_source_scores_like_the_source_with_solutions(tmp_path):
    samples = [SyntheticDataset(6, seed=3)[i] for i in range(6)]
    assert all(s.solution is not None and s.mask.any() for s in samples)
    # shifts 0, 8, ..., 40 px: the L1 and IoU terms differ from sample to sample
    answers = {s.image.tobytes(): _shifted_answer(s.solution, 8 * i) for i, s in enumerate(samples)}
    with_solutions = validate(_Answers(answers), _MaskLookup(samples), _ListSource(samples), tmp_path / "a",
                              batch_size=4, max_new_tokens=8)
    mask_only = [dataclasses.replace(s, solution=None) for s in samples]
    from_masks = validate(_Answers(answers), _MaskLookup(samples), _ListSource(mask_only), tmp_path / "b",
                          batch_size=4, max_new_tokens=8)
    rewards = {k: v for k, v in with_solutions.items() if k.startswith("val/reward/")}
    assert len(rewards) == 6  # five terms and the total
    assert 0.0 < with_solutions["val/reward/bbox_l1"] < 1.0  # some answers within 10 px, some not
    assert {k: from_masks[k] for k in rewards} == rewards
    for key in ("val/iou_proxy", "val/giou", "val/ciou", "val/parse_fail", "val/n", "val/n_scored"):
        assert from_masks[key] == with_solutions[key], key
    assert from_masks["val/n_scored"] == from_masks["val/n"] == 6.0


def _empty_target_sample():
    rs = np.random.RandomState(7)
    return Sample(id="empty", image=rs.randint(0, 256, (60, 80, 3), dtype=np.uint8), query="the unicorn",
                  mask=np.zeros((60, 80), np.uint8))


def test_empty_target_counts_in_giou_but_not_in_reward_means(tmp_path):
    """Two samples answered exactly (reward 5, box IoU 1, mask IoU 1) and one empty target answered
    with unparseable text (mask IoU 0, U = 0, no solution to score against):

        gIoU = (100 + 100 + 0) / 3 = 66.7     cIoU = (I1 + I2) / (U1 + U2 + 0) = 100
        parse_fail = 1 / 3                    reward total = (5 + 5) / 2 = 5, box IoU = (1 + 1) / 2 = 1
    """
    found = [SyntheticDataset(2, seed=3)[i] for i in range(2)]
    samples = [dataclasses.replace(s, solution=None) for s in found] + [_empty_target_sample()]
    answers = {s.image.tobytes(): format_answer(s.solution["bbox"], s.solution["points"], reasoning="r")
               for s in found}
    answers[samples[2].image.tobytes()] = "nothing to see"
    rep = validate(_Answers(answers), _MaskLookup(samples), _ListSource(samples), tmp_path / "val",
                   batch_size=2, max_new_tokens=8)
    assert (rep["val/n"], rep["val/n_scored"]) == (3.0, 2.0)
    assert rep["val/giou"] == pytest.approx(100 * 2 / 3, abs=0.05) and rep["val/ciou"] == 100.0
    assert rep["val/parse_fail"] == pytest.approx(1 / 3, abs=1e-3)
    assert rep["val/iou_proxy"] == 1.0
    assert rep["val/reward/total"] == 5.0 and rep["val/reward/thinking_format"] == 1.0


def test_only_empty_targets_give_zero_reward_means(tmp_path):
    sample = _empty_target_sample()
    answer = format_answer([1, 2, 3, 4], [[2, 3], [2, 3]], reasoning="r")
    rep = validate(_Answers({sample.image.tobytes(): answer}), _MaskLookup([sample]), _ListSource([sample]),
                   tmp_path / "val", batch_size=2, max_new_tokens=8)
    # a parsed answer whose mask is empty on an empty target: IoU 1 (U = 0); nothing to score rewards on
    assert (rep["val/n"], rep["val/n_scored"], rep["val/giou"]) == (1.0, 0.0, 100.0)
    assert rep["val/iou_proxy"] == 0.0 and rep["val/reward/total"] == 0.0


def test_validation_solution():
    mask = np.zeros((4, 8), np.uint8)
    mask[1:3, 2:6] = 1
    given = {"bbox": [1, 2, 3, 4], "points": [[2, 3], [2, 3]]}
    image = np.zeros((4, 8, 3), np.uint8)
    assert validation_solution(Sample("a", image, "q", mask=mask, solution=given)) is given
    assert validation_solution(Sample("a", image, "q", mask=mask)) == solution_from_mask(mask)
    assert validation_solution(Sample("a", image, "q", mask=np.zeros((4, 8), np.uint8))) is None
    assert validation_solution(Sample("a", image, "q")) is None
    assert validation_solution(Sample("a", image, "q", mask=mask, solution=[]), task="multi") == []


# ------------------------------------------------------------------------- held-out box-IoU proxy

class _Fixed:
    def __init__(self, texts):
        self.texts = texts

    def complete(self, images, queries, *, max_new_tokens, greedy=True):
        return list(self.texts)


def test_heldout_proxy_needs_a_fully_parsed_answer():
    from eval.heldout import heldout_report

    sol = {"bbox": [300, 310, 420, 400], "points": [[340, 350], [390, 360]]}
    sample = Sample("s", np.zeros((8, 8, 3), np.uint8), "q", solution=sol)
    no_points_2 = '<think>r</think><answer>{"bbox": [300, 310, 420, 400], "points_1": [340, 350]}</answer>'
    rep = heldout_report(_Fixed([no_points_2]), [sample], max_new_tokens=8, think=True, strict=True, soft=False)
    assert rep["iou_proxy"] == 0.0 and rep["parse_fail"] == 1.0
    assert rep["reward/bbox_iou"] == 1.0  # the box reward still scores the valid box (SPEC 4)
    good = format_answer(sol["bbox"], sol["points"], reasoning="r")
    rep = heldout_report(_Fixed([good, no_points_2]), [sample, sample], max_new_tokens=8, think=True,
                         strict=True, soft=False)
    assert (rep["iou_proxy"], rep["parse_fail"]) == (0.5, 0.5)  # (1 + 0) / 2, (0 + 1) / 2


# ------------------------------------------------------------------------- corrupt best.json

@pytest.mark.parametrize("text, message", [
    ('{"step": 3, "val/gi', "is not valid JSON"),  # torn write
    ('{"step": 3, "val/\x01giou": 1}', "is not valid JSON"),  # a control character
    (b'\xff\xfe{}', "is not valid JSON"),  # not UTF-8
    ("[40.0]", "is not a JSON object"),
    ('{"step": 3, "val/giou": "40"}', "no numeric 'val/giou'"),
    ('{"step": 3}', "no numeric 'val/giou'"),
])
def test_best_pointer_names_a_corrupt_file(tmp_path, text, message):
    path = tmp_path / "best.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message) as err:
        BestPointer(tmp_path)
    assert str(path) in str(err.value)
    assert BestPointer(tmp_path, resume=False).best is None  # a fresh run does not read it


def test_best_pointer_reads_a_good_file_back(tmp_path):
    (tmp_path / "best.json").write_text(json.dumps({"step": 20, "val/giou": 45.5, "val/ciou": 44.0}))
    assert BestPointer(tmp_path).giou == 45.5
