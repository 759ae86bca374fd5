"""Multi-object answers: parsing, the three rewards, batch scoring (SPEC.md section 9).

The authors' current code (VisionReasoner, arXiv 2505.12081) asks for a LIST of objects, one box
and ONE point each, in the 840 x 840 frame:

    <think> reasoning </think><answer>[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...]</answer>

An empty list ``[]`` is a valid answer: "nothing here" (the query refers to no object).

Parsing (:func:`parse_objects`)
-------------------------------
The answer text is the first ``<answer>\\s*(.*?)\\s*</answer>`` match (DOTALL; no fallback to the
rest of the completion), decoded with :func:`json.loads` (double quotes). Status (closed set,
:data:`OBJECT_STATUSES`), first failure in this order:

    "ok"            a JSON list whose every item is an object with ``bbox_2d`` = 4 valid numbers
                    and ``point_2d`` = 2 valid numbers (extra keys allowed); ``[]`` is "ok".
    "no_answer"     no complete ``<answer>...</answer>`` block.
    "invalid_json"  the block is not valid JSON.
    "not_a_list"    valid JSON but not a list.
    "missing_keys"  an item is not an object, or lacks ``bbox_2d`` or ``point_2d``.
    "bad_shape"     a ``bbox_2d`` is not a list of 4, or a ``point_2d`` not a list of 2.
    "bad_values"    a coordinate is not a valid number (``rewards.parse.is_coordinate``: a JSON
                    int/float, not bool, finite, |v| <= 1e5).

Parsing never raises for any ``str``, and takes time linear in its length whatever its content:
the blocks are found with :func:`rewards.parse.first_block` (the first match of the lazy regex,
found with ``str.find``) and the answer text is that block stripped of whitespace (the group of the
regex above); the thinking format is the single-object term's linear check.

Rewards (total = format + accuracy + non-repeat, in [0, 7])
-----------------------------------------------------------
SPEC section 9 labels the format reward "0..2" and the total "[0, 6]", but its own formula (and the
released ``vision_reasoner_format_reward``: 1 for the tags plus up to 1 + 1 per object, divided by
K) reaches 3, so the total reaches 7. The code follows the formula; the ranges here are the true ones.

With M predicted objects (box b_i, point p_i) and N ground-truth objects (box g_j, point q_j):

- :func:`multi_object_format_reward` (0..3)::

      1[strip(c) fully matches <think>.*?</think>\\s*<answer>.*?</answer> (DOTALL)]
      + (1/K) * sum_k ( 1[item_k.bbox_2d is a list of 4] + 1[item_k.point_2d is a list of 2] )

  the second part when the answer block decodes to a JSON list of K >= 1 items (0 otherwise). As
  in the released code, the shape check does not look at the values.
- :func:`multi_object_accuracy_reward` (0..3): both lists cut to their first 120 objects
  (:data:`MAX_OBJECTS`), then

      R[i, j] = 1[IoU(b_i, g_j) > 0.5] + 1[mean_k |b_i,k - g_j,k| < 10]
                + 1[||p_i - q_j||_2 < 30  and  p_i inside b_i (edges inclusive)]      [M, N]

  matched one-to-one by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
  cost 3 - R; reward = sum of R over the min(M, N) matched pairs / max(M, N). IoU with the
  inclusive-pixel convention of SPEC section 4 (``rewards.box_iou``). Anything that is not a
  well-formed NON-EMPTY list, and any answer when the ground truth is empty, scores 0 (the
  released code's behaviour: it builds (M, 4) arrays and fails on an empty list).
- :func:`non_repeat_reward` (0..1): split the completion on ".", strip each piece, drop the empty
  ones; walking the pieces in order, count those equal to an earlier piece; 0 as soon as the count
  reaches 2, else 1.

Departures from the released code (``vision_reasoner_*_reward``), all at the edges:
- the thinking-format check strips the completion first, as the single-object term does (SPEC 4);
- IoU uses SPEC section 4's intersection rule (no overlap unless ix1 < ix2 and iy1 < iy2); the
  released multi-object code clamps the +1 widths at 0 instead, which differs only for boxes that
  touch along a one-pixel line;
- a non-finite or |v| > 1e5 coordinate, a bool, or a string coordinate makes the accuracy 0 (the
  released code would compare NaN or fail on strings);
- a list item that is not a JSON object adds 0 to the format sum (the released code stops summing
  at the first such item).

A malformed ground truth (dataset input) is a ValueError naming it (:func:`data.types.check_objects_solution`).
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from data.types import BOX_KEY, POINT_KEY, check_objects, check_objects_solution
from rewards.parse import coordinate_list, first_block
from rewards.seg_zero import RewardBatch, thinking_format_reward

#: Objects kept on each side by the accuracy reward and by inference (released code: 120).
MAX_OBJECTS = 120

#: Every status :func:`parse_objects` can return.
OBJECT_STATUSES = ("ok", "no_answer", "invalid_json", "not_a_list", "missing_keys", "bad_shape",
                   "bad_values")

#: Reward terms of the multi-object mode, in the order of RewardBatch.terms.
MULTI_TERM_NAMES = ("multi_object_format", "multi_object_accuracy", "non_repeat")

#: thresholds of the released code (SPEC section 9)
IOU_THRESHOLD = 0.5  # IoU > 0.5
BBOX_L1_THRESHOLD = 10.0  # mean |coordinate difference| < 10 px
POINT_DISTANCE_THRESHOLD = 30.0  # Euclidean distance < 30 px (and the point inside its own box)


@dataclass
class ParsedObjects:
    """What :func:`parse_objects` read from one completion.

    Attributes:
        boxes: float64 [M, 4] (x1, y1, x2, y2 in the 840 frame) when status is "ok", else None.
            M = 0 for the empty answer ``[]``. Every object is kept (no cap here).
        points: float64 [M, 2] (x, y), one per box, when status is "ok", else None.
        reasoning: the text inside the first <think>...</think>, stripped, or None.
        status: one of :data:`OBJECT_STATUSES`.
        answer: the decoded JSON of the answer block (any JSON value), or None; the format reward
            reads it.
    """

    boxes: np.ndarray | None
    points: np.ndarray | None
    reasoning: str | None
    status: str
    answer: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when every object is valid (an empty list included)."""
        return self.status == "ok"

    @property
    def num_objects(self) -> int:
        """M for a valid answer, 0 otherwise."""
        return 0 if self.boxes is None else int(self.boxes.shape[0])

    def objects(self) -> list[dict[str, list[float]]]:
        """The valid answer as ``[{"bbox_2d": [...], "point_2d": [...]}, ...]`` ([] when not ok)."""
        if not self.ok:
            return []
        return [{BOX_KEY: b.tolist(), POINT_KEY: p.tolist()} for b, p in zip(self.boxes, self.points)]


def _decode(text: str) -> tuple[Any, bool]:
    """(value, True) for valid JSON, (None, False) otherwise; never raises."""
    try:
        return json.loads(text), True
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; >4300-digit ints too
        return None, False


def parse_objects(completion: str) -> ParsedObjects:
    """Parse one multi-object completion (module docstring). Never raises for a ``str``."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}: {completion!r:.80}")
    think = first_block(completion, "<think>", "</think>")
    reasoning = think.strip() if think is not None else None
    parsed = ParsedObjects(None, None, reasoning, "no_answer")
    block = first_block(completion, "<answer>", "</answer>")
    if block is None:
        return parsed
    data, valid = _decode(block.strip())  # the group of <answer>\s*(.*?)\s*</answer>
    if not valid:
        parsed.status = "invalid_json"
        return parsed
    parsed.answer = data
    if not isinstance(data, list):
        parsed.status = "not_a_list"
        return parsed
    boxes, points, worst = [], [], "ok"
    rank = {"ok": 0, "bad_values": 1, "bad_shape": 2, "missing_keys": 3}
    for item in data:
        if not isinstance(item, dict) or BOX_KEY not in item or POINT_KEY not in item:
            status = "missing_keys"
        else:
            box, box_status = coordinate_list(item[BOX_KEY], 4)
            point, point_status = coordinate_list(item[POINT_KEY], 2)
            status = max(box_status, point_status, key=rank.__getitem__)
            if status == "ok":
                boxes.append(box)
                points.append(point)
        worst = max(worst, status, key=rank.__getitem__)
    parsed.status = worst
    if worst == "ok":
        parsed.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # [M, 4]
        parsed.points = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # [M, 2]
    return parsed


def format_objects_answer(objects: Sequence[Mapping[str, Sequence[Any]]], reasoning: str | None = None) -> str:
    """The completion the policy is expected to write for ``objects`` (inverse of :func:`parse_objects`).

    ``<think> {reasoning} </think><answer>[{"bbox_2d": [...], "point_2d": [...]}, ...]</answer>``
    (``<think> </think>`` without reasoning; ``[]`` for no object). Ints stay ints. For a non-empty
    ground truth, ``multi_object_reward(format_objects_answer(gt), gt) == 7.0`` (3 + 3 + 1).

    Raises:
        ValueError: a malformed object (see :func:`data.types.check_objects_solution`) or a tag in reasoning.
    """
    clean = [{BOX_KEY: [_json_number(v) for v in o[BOX_KEY]], POINT_KEY: [_json_number(v) for v in o[POINT_KEY]]}
             for o in check_objects(objects, "objects")]
    reasoning = (reasoning or "").strip()
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        if tag in reasoning:
            raise ValueError(f"reasoning must not contain the tag {tag}: {reasoning!r:.80}")
    think = f"<think> {reasoning} </think>" if reasoning else "<think> </think>"
    return f"{think}<answer>{json.dumps(clean)}</answer>"


def _json_number(value: Any) -> int | float:
    return int(value) if isinstance(value, numbers.Integral) else float(value)


# ----------------------------------------------------------------------------------------------
# ground truth


# ----------------------------------------------------------------------------------------------
# the matching


def box_iou_matrix(boxes: np.ndarray, boxes_gt: np.ndarray) -> np.ndarray:
    """IoU [M, N] of boxes [M, 4] against [N, 4], inclusive pixels (SPEC section 4.3).

    The same numbers as ``rewards.box_iou`` pair by pair: the intersection counts only when
    ix1 < ix2 and iy1 < iy2, and is then (ix2 - ix1 + 1) * (iy2 - iy1 + 1).
    """
    b, g = boxes[:, None, :], boxes_gt[None, :, :]  # [M, 1, 4], [1, N, 4]
    ix1, iy1 = np.maximum(b[..., 0], g[..., 0]), np.maximum(b[..., 1], g[..., 1])  # [M, N]
    ix2, iy2 = np.minimum(b[..., 2], g[..., 2]), np.minimum(b[..., 3], g[..., 3])
    overlap = (ix1 < ix2) & (iy1 < iy2)  # [M, N]; implies both boxes ordered on both axes
    inter = np.where(overlap, (ix2 - ix1 + 1) * (iy2 - iy1 + 1), 0.0)
    area = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # [M, 1]
    area_gt = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)  # [1, N]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + area_gt - inter)
    return np.where(overlap, iou, 0.0)


def match_matrix(boxes: np.ndarray, points: np.ndarray, boxes_gt: np.ndarray, points_gt: np.ndarray) -> np.ndarray:
    """R [M, N] of SPEC section 9: three 0/1 terms per (prediction i, ground truth j), in 0..3."""
    iou_term = box_iou_matrix(boxes, boxes_gt) > IOU_THRESHOLD  # [M, N]
    l1 = np.abs(boxes[:, None, :] - boxes_gt[None, :, :]).mean(axis=2)  # [M, N]
    dist = np.sqrt(((points[:, None, :] - points_gt[None, :, :]) ** 2).sum(axis=2))  # [M, N]
    inside = ((points[:, 0] >= boxes[:, 0]) & (points[:, 0] <= boxes[:, 2])
              & (points[:, 1] >= boxes[:, 1]) & (points[:, 1] <= boxes[:, 3]))  # [M], own box
    point_term = (dist < POINT_DISTANCE_THRESHOLD) & inside[:, None]  # [M, N]
    return iou_term.astype(np.float64) + (l1 < BBOX_L1_THRESHOLD) + point_term


def hungarian_match(boxes, points, boxes_gt, points_gt) -> tuple[np.ndarray, np.ndarray, float]:
    """(pred indices [K], gt indices [K], accuracy) with K = min(M, N), after the 120-object cap.

    Inputs are float arrays [M, 4], [M, 2], [N, 4], [N, 2]. accuracy = sum_k R[i_k, j_k] /
    max(M, N), 0.0 when M or N is 0. Ties between matchings of equal cost do not change it.
    """
    boxes, points = np.asarray(boxes, float)[:MAX_OBJECTS], np.asarray(points, float)[:MAX_OBJECTS]
    boxes_gt, points_gt = np.asarray(boxes_gt, float)[:MAX_OBJECTS], np.asarray(points_gt, float)[:MAX_OBJECTS]
    m, n = len(boxes), len(boxes_gt)
    if m == 0 or n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0.0
    reward = match_matrix(boxes, points, boxes_gt, points_gt)  # [M, N]
    rows, cols = linear_sum_assignment(3.0 - reward)  # minimise the cost 3 - R
    return rows, cols, float(reward[rows, cols].sum()) / max(m, n)


# ----------------------------------------------------------------------------------------------
# the three rewards


def _answer_format(parsed: ParsedObjects) -> float:
    data = parsed.answer
    if not isinstance(data, list) or not data:
        return 0.0
    total = 0.0
    for item in data:
        if isinstance(item, dict):
            box, point = item.get(BOX_KEY), item.get(POINT_KEY)
            total += float(isinstance(box, list) and len(box) == 4) + float(isinstance(point, list) and len(point) == 2)
    return total / len(data)


def _accuracy(parsed: ParsedObjects, boxes_gt: np.ndarray, points_gt: np.ndarray) -> float:
    if not parsed.ok or parsed.num_objects == 0:
        return 0.0
    return hungarian_match(parsed.boxes, parsed.points, boxes_gt, points_gt)[2]


def _non_repeat(completion: str) -> float:
    seen: set[str] = set()
    repeats = 0
    for sentence in (s.strip() for s in completion.split(".")):
        if not sentence:
            continue
        if sentence in seen:
            repeats += 1
            if repeats >= 2:
                return 0.0
        seen.add(sentence)
    return 1.0


def _check_completion(completion: Any) -> None:
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")


def multi_object_format_reward(completion: str) -> float:
    """Thinking format (0/1) + the mean per-object shape score of the answer list (0..2); in [0, 3]."""
    _check_completion(completion)
    return thinking_format_reward(completion) + _answer_format(parse_objects(completion))


def multi_object_accuracy_reward(completion: str, solution: Any) -> float:
    """Hungarian-matched box/point accuracy (module docstring), in [0, 3].

    ``solution``: the ground truth, a list of ``{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}``
    (or its JSON string); malformed -> ValueError.
    """
    _check_completion(completion)
    boxes_gt, points_gt = check_objects_solution(solution)
    return _accuracy(parse_objects(completion), boxes_gt, points_gt)


def non_repeat_reward(completion: str) -> float:
    """1.0 unless two of the "."-separated sentences repeat earlier ones (module docstring)."""
    _check_completion(completion)
    return _non_repeat(completion)


def _terms(completion: str, parsed: ParsedObjects, boxes_gt, points_gt) -> tuple[float, float, float]:
    return (thinking_format_reward(completion) + _answer_format(parsed), _accuracy(parsed, boxes_gt, points_gt),
            _non_repeat(completion))


def multi_object_reward(completion: str, solution: Any) -> float:
    """format + accuracy + non-repeat, in [0, 7]."""
    _check_completion(completion)
    boxes_gt, points_gt = check_objects_solution(solution)
    return float(sum(_terms(completion, parse_objects(completion), boxes_gt, points_gt)))


def score_multi_object(completions: Sequence[str], solutions: Sequence[Any]) -> RewardBatch:
    """Score N completions against their N ground truths; each completion is parsed once.

    Returns a ``rewards.RewardBatch``: total [N], terms {name in MULTI_TERM_NAMES: [N]}, statuses
    (``OBJECT_STATUSES``; "ok" also for the empty answer). Never raises on a ``str`` completion;
    a malformed solution is a ValueError.
    """
    if len(completions) != len(solutions):
        raise ValueError(f"got {len(completions)} completions but {len(solutions)} solutions")
    values = np.zeros((len(completions), len(MULTI_TERM_NAMES)), dtype=np.float64)  # [N, 3]
    statuses = []
    for i, (completion, solution) in enumerate(zip(completions, solutions)):
        _check_completion(completion)
        boxes_gt, points_gt = check_objects_solution(solution)
        parsed = parse_objects(completion)
        statuses.append(parsed.status)
        values[i] = _terms(completion, parsed, boxes_gt, points_gt)
    terms = {name: values[:, k].copy() for k, name in enumerate(MULTI_TERM_NAMES)}
    return RewardBatch(total=values.sum(axis=1), terms=terms, statuses=statuses)


def matched_box_iou(completion: str, solution: Any) -> float:
    """A box-level stand-in for gIoU used by training reports (no SAM2): the box IoU summed over
    the Hungarian-matched pairs (module docstring) divided by max(M, N); 1.0 for the empty answer
    on an empty target, 0.0 for an answer that did not parse."""
    _check_completion(completion)
    boxes_gt, points_gt = check_objects_solution(solution)
    parsed = parse_objects(completion)
    if not parsed.ok:
        return 0.0
    if parsed.num_objects == 0 or len(boxes_gt) == 0:
        return float(parsed.num_objects == 0 and len(boxes_gt) == 0)
    rows, cols, _ = hungarian_match(parsed.boxes, parsed.points, boxes_gt, points_gt)
    iou = box_iou_matrix(parsed.boxes[:MAX_OBJECTS], boxes_gt[:MAX_OBJECTS])  # [M, N]
    return float(iou[rows, cols].sum()) / max(min(parsed.num_objects, MAX_OBJECTS), min(len(boxes_gt), MAX_OBJECTS))
