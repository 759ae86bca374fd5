"""The five Seg-Zero rewards (arXiv 2503.06520, section 3.3; SPEC.md section 4).

For a completion c and the ground truth (bbox_gt, points_gt) in the 840 frame:

    R(c) = R_think + R_format + R_iou + R_bbox_l1 + R_point_l1        (max 5.0)

1. R_think    = 1 if strip(c) fully matches ``<think>.*?</think>\\s*<answer>.*?</answer>`` (DOTALL).
2. R_format   strict: the answer object has ``bbox`` = 4 numbers and ``points_1``/``points_2`` = 2
              numbers each (exact key names; extra keys are allowed, as in the released code).
              soft: some key containing "bbox" holds 4 numbers and at least two keys containing
              "point" hold 2 numbers each (substring match, case-sensitive, on the same object).
3. R_iou      IoU of the boxes, inclusive pixels: w = x2 - x1 + 1, h = y2 - y1 + 1; the
              intersection is empty unless ix1 < ix2 and iy1 < iy2. hard: 1[IoU > 0.5]; soft: IoU.
4. R_bbox_l1  L1 = mean_k |b_k - b_gt_k| over the 4 coordinates. hard: 1[L1 < 10];
              soft: max(0, 1 - L1 / 840).
5. R_point_l1 0 unless both predicted points lie in the predicted box (edges inclusive). Else
              d = min over the two pairings of the mean Euclidean distance of the paired points,
              hard: 1[d < 100]; soft: max(0, 1 - d / 840).

Where the released code differs from the paper text (SPEC follows the code):
- The paper names terms 4 and 5 "L1"; for points the released code measures Euclidean distances,
  averaged over the two points, and takes the better of the two point orders (so swapping
  points_1 and points_2 does not change the reward).
- Thresholds (0.5 IoU, 10 px, 100 px) and the inclusive-pixel IoU come from the code; the paper
  gives no numbers.
- The non-CoT ablation (paper Table 1) drops R_think: ``think=False``.

Departures of ours, all documented in :mod:`rewards.parse`: a non-finite or |v| > 1e5 coordinate is
"not a number" for every term (format included); the accuracy terms need the exact key names even
when the format reward is soft; each accuracy term only needs the fields it reads (a valid box with
broken points still earns R_iou and R_bbox_l1).

Every function here accepts any ``str`` completion without raising. A malformed ``solution``
(the dataset's ground truth) is a user error: ValueError naming it.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from data.types import FRAME
from rewards.parse import ParsedAnswer, coordinate_list, parse_answer

#: Reward terms, in the order of the paper and of RewardBatch.terms.
TERM_NAMES = ("thinking_format", "segmentation_format", "bbox_iou", "bbox_l1", "point_l1")

#: hard thresholds of the released code (SPEC section 4)
IOU_THRESHOLD = 0.5  # reward when IoU > 0.5
BBOX_L1_THRESHOLD = 10.0  # reward when mean |pred - gt| < 10 px
POINT_DISTANCE_THRESHOLD = 100.0  # reward when mean point distance < 100 px

#: The junction of the thinking format: "</think>", whitespace, "<answer>" (cannot backtrack
#: more than the whitespace run that follows one "</think>").
_THINK_TO_ANSWER = re.compile(r"</think>\s*<answer>")


# ----------------------------------------------------------------------------------------------
# ground truth


def _check_solution(solution: Mapping[str, Any]) -> tuple[list[float], list[list[float]]]:
    """(bbox, points) of a ground-truth mapping as floats; ValueError on anything malformed."""
    if not isinstance(solution, Mapping) or "bbox" not in solution or "points" not in solution:
        raise ValueError(
            f"solution must be {{'bbox': [x1, y1, x2, y2], 'points': [[x, y], [x, y]]}}, got {solution!r}"
        )
    bbox = _gt_numbers(solution["bbox"], 4, "solution bbox")
    if bbox[0] > bbox[2] or bbox[1] > bbox[3]:
        raise ValueError(f"solution bbox must have x1 <= x2 and y1 <= y2, got {solution['bbox']!r}")
    raw_points = solution["points"]
    if not isinstance(raw_points, (list, tuple, np.ndarray)) or len(raw_points) != 2:
        raise ValueError(f"solution points must be two [x, y] pairs, got {raw_points!r}")
    points = [_gt_numbers(p, 2, "solution point") for p in raw_points]
    return bbox, points


def _gt_numbers(value: Any, length: int, what: str) -> list[float]:
    """``length`` finite real numbers (Python or numpy) as floats; ValueError naming ``what``."""
    ok = isinstance(value, (list, tuple, np.ndarray)) and len(value) == length
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise ValueError(f"{what} must be {length} finite numbers, got {value!r}")
    return [float(v) for v in value]


# ----------------------------------------------------------------------------------------------
# the five terms, on an already parsed answer (the batch scorer parses each completion once)


def _thinking_format(completion: str) -> float:
    """1.0 when ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)``
    with text = the stripped completion, computed in linear time: the text starts with <think>,
    ends with </answer>, and its first "</think> <answer>" junction after the opening tag ends
    before that closing tag (the first junction ends earliest, so it is the one to check)."""
    text = completion.strip()
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return 0.0
    junction = _THINK_TO_ANSWER.search(text, len("<think>"))
    return 1.0 if junction is not None and junction.end() <= len(text) - len("</answer>") else 0.0


def _segmentation_format(parsed: ParsedAnswer, strict: bool) -> float:
    if strict:
        return 1.0 if parsed.ok else 0.0
    data = parsed.json_object
    if data is None:
        return 0.0
    has_bbox = any("bbox" in key and coordinate_list(value, 4)[0] is not None for key, value in data.items())
    num_points = sum("point" in key and coordinate_list(value, 2)[0] is not None for key, value in data.items())
    return 1.0 if has_bbox and num_points >= 2 else 0.0


def box_iou(box: Sequence[float], box_gt: Sequence[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes with inclusive pixels (SPEC section 4.3).

    The intersection counts only when ix1 < ix2 and iy1 < iy2 (as in the released code, a
    one-pixel-wide overlap ix1 == ix2 counts as none; so a ground-truth box one pixel wide or high
    gets IoU 0 even from an exact copy). Inverted predicted boxes overlap nothing.
    """
    ix1, iy1 = max(box[0], box_gt[0]), max(box[1], box_gt[1])
    ix2, iy2 = min(box[2], box_gt[2]), min(box[3], box_gt[3])
    if not (ix1 < ix2 and iy1 < iy2):
        return 0.0
    # Here both boxes are ordered on both axes (ix1 < ix2 implies x1 < x2 for each), so areas > 0.
    intersection = (ix2 - ix1 + 1) * (iy2 - iy1 + 1)
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    area_gt = (box_gt[2] - box_gt[0] + 1) * (box_gt[3] - box_gt[1] + 1)
    return intersection / (area + area_gt - intersection)


def _bbox_iou(parsed: ParsedAnswer, bbox_gt: list[float], soft: bool) -> float:
    if parsed.bbox is None:
        return 0.0
    iou = box_iou(parsed.bbox, bbox_gt)
    return iou if soft else float(iou > IOU_THRESHOLD)


def _bbox_l1(parsed: ParsedAnswer, bbox_gt: list[float], soft: bool) -> float:
    if parsed.bbox is None:
        return 0.0
    l1 = sum(abs(p - g) for p, g in zip(parsed.bbox, bbox_gt)) / 4
    return max(0.0, 1.0 - l1 / FRAME) if soft else float(l1 < BBOX_L1_THRESHOLD)


def point_distance(points: Sequence[Sequence[float]], points_gt: Sequence[Sequence[float]]) -> float:
    """min over the two pairings of the mean Euclidean distance of paired points (SPEC 4.5)."""
    (a, b), (g, h) = points, points_gt
    same_order = (math.dist(a, g) + math.dist(b, h)) / 2
    swapped = (math.dist(a, h) + math.dist(b, g)) / 2
    return min(same_order, swapped)


def _point_l1(parsed: ParsedAnswer, points_gt: list[list[float]], soft: bool) -> float:
    if parsed.bbox is None or parsed.points is None:
        return 0.0
    x1, y1, x2, y2 = parsed.bbox
    if not all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in parsed.points):
        return 0.0
    distance = point_distance(parsed.points, points_gt)
    return max(0.0, 1.0 - distance / FRAME) if soft else float(distance < POINT_DISTANCE_THRESHOLD)


def _terms(completion: str, parsed: ParsedAnswer, bbox_gt, points_gt, strict: bool, soft: bool) -> tuple[float, ...]:
    """The five terms of one completion, in TERM_NAMES order."""
    return (
        _thinking_format(completion),
        _segmentation_format(parsed, strict),
        _bbox_iou(parsed, bbox_gt, soft),
        _bbox_l1(parsed, bbox_gt, soft),
        _point_l1(parsed, points_gt, soft),
    )


# ----------------------------------------------------------------------------------------------
# public, one completion at a time (names of the paper's terms)


def thinking_format_reward(completion: str) -> float:
    """Term 1: 1.0 if the stripped completion is ``<think>...</think> <answer>...</answer>``."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    return _thinking_format(completion)


def segmentation_format_reward(completion: str, strict: bool = True) -> float:
    """Term 2: 1.0 if the answer object has the expected keys and shapes (strict or soft)."""
    return _segmentation_format(parse_answer(completion), strict)


def bbox_iou_reward(completion: str, solution: Mapping[str, Any], soft: bool = False) -> float:
    """Term 3: 1[IoU > 0.5] (hard) or IoU (soft), inclusive-pixel boxes."""
    bbox_gt, _ = _check_solution(solution)
    return _bbox_iou(parse_answer(completion), bbox_gt, soft)


def bbox_l1_reward(completion: str, solution: Mapping[str, Any], soft: bool = False) -> float:
    """Term 4: 1[mean |pred - gt| < 10] (hard) or max(0, 1 - L1 / 840) (soft)."""
    bbox_gt, _ = _check_solution(solution)
    return _bbox_l1(parse_answer(completion), bbox_gt, soft)


def point_l1_reward(completion: str, solution: Mapping[str, Any], soft: bool = False) -> float:
    """Term 5: points inside the predicted box, then 1[d < 100] (hard) or max(0, 1 - d / 840)."""
    _, points_gt = _check_solution(solution)
    return _point_l1(parse_answer(completion), points_gt, soft)


def seg_zero_reward(
    completion: str, solution: Mapping[str, Any], strict: bool = True, soft: bool = False, think: bool = True
) -> float:
    """Sum of the five terms (max 5.0); ``think=False`` (non-CoT) drops the thinking term (max 4.0)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    bbox_gt, points_gt = _check_solution(solution)
    terms = _terms(completion, parse_answer(completion), bbox_gt, points_gt, strict, soft)
    return float(sum(terms if think else terms[1:]))


# ----------------------------------------------------------------------------------------------
# batch scorer used by the trainer


@dataclass
class RewardBatch:
    """Rewards of N completions.

    Attributes:
        total: float64 [N], the sum the advantage is computed from.
        terms: term name (TERM_NAMES) -> float64 [N]. With ``think=False`` the thinking term is
            still present, filled with zeros, and is not part of ``total`` (so logs keep one layout).
        statuses: the parse status of each completion (rewards.parse.STATUSES), length N.
    """

    total: np.ndarray
    terms: dict[str, np.ndarray]
    statuses: list[str]

    def __len__(self) -> int:
        return int(self.total.shape[0])


def score_completions(
    completions: Sequence[str],
    solutions: Sequence[Mapping[str, Any]],
    *,
    strict: bool = True,
    soft: bool = False,
    think: bool = True,
) -> RewardBatch:
    """Score N completions against their N ground truths; each completion is parsed once.

    ``solutions[i]`` is the ground truth of ``completions[i]`` (with G samples per prompt, repeat
    each prompt's solution G times). Returns total [N] and the per-term breakdown [N] each.
    """
    if len(completions) != len(solutions):
        raise ValueError(f"got {len(completions)} completions but {len(solutions)} solutions")
    values = np.zeros((len(completions), len(TERM_NAMES)), dtype=np.float64)  # [N, 5]
    statuses = []
    for i, (completion, solution) in enumerate(zip(completions, solutions)):
        bbox_gt, points_gt = _check_solution(solution)
        parsed = parse_answer(completion)
        statuses.append(parsed.status)
        values[i] = _terms(completion, parsed, bbox_gt, points_gt, strict, soft)
    if not think:
        values[:, 0] = 0.0  # non-CoT: the thinking term is reported as zeros and not summed
    terms = {name: values[:, k].copy() for k, name in enumerate(TERM_NAMES)}
    return RewardBatch(total=values.sum(axis=1), terms=terms, statuses=statuses)
