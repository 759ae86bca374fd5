"""Parsing the policy's answer, and writing one (SPEC.md section 3).

Seg-Zero (arXiv 2503.06520, section 3.3 and Figure 4) asks the policy for

    <think> reasoning </think> <answer>{"bbox": [x1,y1,x2,y2], "points_1": [x,y], "points_2": [x,y]}</answer>

with every coordinate in the 840 x 840 frame. :func:`parse_answer` reads that text back; the rewards
(:mod:`rewards.seg_zero`) and inference (SAM2 prompting, evaluation) both use it, so a prediction is
scored by exactly the rule it was trained on. :func:`format_answer` is the inverse, for supervised
warm-start / SFT targets.

Extraction rule (SPEC section 3)
--------------------------------
1. If the completion has an ``<answer>...</answer>`` block, the FIRST such block is searched;
   otherwise the whole completion is. A missing answer block is therefore not a failure in itself
   (``ParsedAnswer.answer_block`` records it); a truncated ``<answer>{...}`` with no closing tag still
   parses from the whole text (whose first ``{...}`` may then be one written in the reasoning).
2. The JSON object is the first ``{...}`` that contains no brace inside it (regex ``\\{[^{}]*\\}``).
   So with nested braces ``{"a": {"bbox": ...}}`` the INNER object is the one parsed.
3. It is decoded with :func:`json.loads`: double-quoted keys only. ``NaN``/``Infinity`` literals are
   decoded by Python's json but then rejected as values (below).

Values
------
A coordinate is valid when it is a JSON number (``int`` or ``float``, never ``bool`` and never a
string such as ``"10"``), finite, and ``|v| <= MAX_ABS_COORD`` (1e5, about 120 frames away: anything
larger is a degenerate generation, not a box). Negative coordinates and non-integers ARE valid: they
are numbers, the box rewards score them like any other (they simply lie far from or across the
frame border). A box with x1 > x2 or y1 > y2 is valid to the parser; it overlaps nothing, so its IoU
reward is 0 and no point lies inside it.

``bbox`` and ``points`` are parsed independently: an answer with a good box and broken points has
``bbox`` set, ``points`` None and a failure status, so the box rewards still score it (SPEC: "reward
0 for the affected terms"). Inference should require :attr:`ParsedAnswer.ok` (SPEC section 1.6:
anything else is an empty mask).

Status (closed set, :data:`STATUSES`), first failure in this order:
    "ok"            bbox and both points valid.
    "no_json"       no brace-free ``{...}`` in the searched text (also truncated JSON).
    "invalid_json"  the ``{...}`` is not valid JSON (single quotes, trailing commas, ...).
    "missing_keys"  one of ``bbox``, ``points_1``, ``points_2`` (exact names) is absent.
    "bad_shape"     bbox is not a list of 4, or a point is not a list of 2.
    "bad_values"    a coordinate is not a valid number (see Values).

Single quotes (decision)
------------------------
The prompt's own example answer is single-quoted pseudo-JSON (SPEC section 2), so models do emit it.
The SPEC says the answer is parsed as JSON: by default ``{'bbox': ...}`` is "invalid_json", for the
rewards (always) and for inference (by default), so evaluation scores exactly what training rewarded.
``parse_answer(text, single_quotes=True)`` is an opt-in for inference only: when strict decoding
fails, it retries once with every ``'`` replaced by ``"`` and sets ``quotes_repaired``. The rewards
never use it. Evaluation reports should say when it was on.

Parsing never raises for any ``str`` input; a non-``str`` completion is a programming error
(TypeError). It takes time linear in the length of the completion, whatever its content: blocks
are found with ``str.find`` (the first opening tag, then the first closing tag after it: what the
lazy regex ``<answer>(.*?)</answer>`` finds, without its quadratic retries on a text of many
opening tags), and the JSON object pattern cannot backtrack.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

#: Largest accepted |coordinate|; larger values are "bad_values".
MAX_ABS_COORD = 1e5

#: Every status :func:`parse_answer` can return.
STATUSES = ("ok", "no_json", "invalid_json", "missing_keys", "bad_shape", "bad_values")

#: Exact key names of the answer object (SPEC section 3).
ANSWER_KEYS = ("bbox", "points_1", "points_2")

_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def first_block(text: str, open_tag: str, close_tag: str) -> str | None:
    """The text between the first ``open_tag`` and the first ``close_tag`` after it, or None: the
    first match of the regex ``open_tag(.*?)close_tag`` (DOTALL), in linear time. (If the first
    opening tag has no closing tag after it, no later one has.)"""
    start = text.find(open_tag)
    if start < 0:
        return None
    end = text.find(close_tag, start + len(open_tag))
    return None if end < 0 else text[start + len(open_tag):end]


@dataclass
class ParsedAnswer:
    """What :func:`parse_answer` read from one completion.

    Attributes:
        bbox: [x1, y1, x2, y2] as floats in the 840 frame, or None when not valid.
        points: [[x, y], [x, y]] (points_1 then points_2) as floats, or None unless both are valid.
        reasoning: the text inside the first <think>...</think>, stripped, or None without one.
        status: one of :data:`STATUSES`.
        answer_block: whether an <answer>...</answer> block was found (the JSON was searched there).
        quotes_repaired: True when the lenient single-quote retry produced the object.
        json_object: the decoded JSON object (a dict) or None; the soft format reward reads its keys.
    """

    bbox: list[float] | None
    points: list[list[float]] | None
    reasoning: str | None
    status: str
    answer_block: bool = False
    quotes_repaired: bool = False
    json_object: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the box and both points are valid (usable to prompt SAM2)."""
        return self.status == "ok"


def is_coordinate(value: Any) -> bool:
    """A JSON number that is not a bool, is finite, and has |value| <= MAX_ABS_COORD."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and abs(value) <= MAX_ABS_COORD
    except OverflowError:  # an int too large to convert to float
        return False


def coordinate_list(value: Any, length: int) -> tuple[list[float] | None, str]:
    """(floats, "ok") when ``value`` is a list of ``length`` valid coordinates.

    Otherwise (None, "bad_shape") for a non-list or a wrong length, (None, "bad_values") for a
    list of the right length holding an invalid coordinate.
    """
    if not isinstance(value, list) or len(value) != length:
        return None, "bad_shape"
    if not all(is_coordinate(v) for v in value):
        return None, "bad_values"
    return [float(v) for v in value], "ok"


def extract_json_object(completion: str) -> tuple[str | None, bool]:
    """The JSON object text chosen by SPEC section 3, and whether an answer block was found.

    Returns (text of the first brace-free ``{...}`` inside the first <answer> block when there is
    one, else in the whole completion; or None), answer_block_found.
    """
    block = first_block(completion, "<answer>", "</answer>")
    searched = block if block is not None else completion
    match = _JSON_OBJECT.search(searched)
    return (match.group(0) if match else None), block is not None


def _decode(text: str) -> dict | None:
    """json.loads that returns None instead of raising (bad syntax, >4300-digit ints, deep nesting)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None


def parse_answer(completion: str, *, single_quotes: bool = False) -> ParsedAnswer:
    """Parse one completion (SPEC section 3). Never raises for a ``str``; see the module docstring.

    Args:
        completion: the decoded response text (special tokens already stripped).
        single_quotes: inference-only leniency: retry ``'`` -> ``"`` when strict JSON fails.
            Rewards always use the default (False).
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}: {completion!r:.80}")
    think = first_block(completion, "<think>", "</think>")
    reasoning = think.strip() if think is not None else None

    text, answer_block = extract_json_object(completion)
    parsed = ParsedAnswer(None, None, reasoning, "no_json", answer_block=answer_block)
    if text is None:
        return parsed

    data = _decode(text)
    if data is None and single_quotes and "'" in text:
        data = _decode(text.replace("'", '"'))
        parsed.quotes_repaired = data is not None
    if data is None:
        parsed.status = "invalid_json"
        return parsed
    parsed.json_object = data

    missing = [key for key in ANSWER_KEYS if key not in data]
    # Each field is read on its own, so the box rewards can score a box whose points are broken.
    bbox, bbox_status = coordinate_list(data["bbox"], 4) if "bbox" in data else (None, "missing_keys")
    p1, p1_status = coordinate_list(data["points_1"], 2) if "points_1" in data else (None, "missing_keys")
    p2, p2_status = coordinate_list(data["points_2"], 2) if "points_2" in data else (None, "missing_keys")
    parsed.bbox = bbox
    parsed.points = [p1, p2] if p1 is not None and p2 is not None else None

    statuses = (bbox_status, p1_status, p2_status)
    if missing:
        parsed.status = "missing_keys"
    elif "bad_shape" in statuses:
        parsed.status = "bad_shape"
    elif "bad_values" in statuses:
        parsed.status = "bad_values"
    else:
        parsed.status = "ok"
    return parsed


def _json_number(value: Any, what: str) -> int | float:
    """A plain int/float for json.dumps (numpy and torch scalars included); ValueError if invalid."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    number = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not is_coordinate(number):
        raise ValueError(f"{what} must be finite with |v| <= {MAX_ABS_COORD:g}, got {value!r}")
    return number


def format_answer(
    bbox: Sequence[Any],
    points: Sequence[Sequence[Any]],
    reasoning: str | None = None,
    think: bool = True,
) -> str:
    """Write the completion the policy is expected to produce (the inverse of :func:`parse_answer`).

    Output (think=True): ``<think> {reasoning} </think> <answer>{"bbox": [...], "points_1": [...],
    "points_2": [...]}</answer>``; without reasoning the think block is ``<think> </think>``.
    think=False (the non-CoT variant) writes the answer block alone. Ints stay ints (``[10, 100]``),
    other reals are written as floats. ``seg_zero_reward(format_answer(**gt), gt) == 5.0``.

    Raises:
        ValueError: bbox not 4 numbers, points not two [x, y], a value that :func:`parse_answer`
            would reject, reasoning given with think=False, or reasoning containing a tag.
    """
    if len(bbox) != 4:
        raise ValueError(f"bbox must have 4 numbers [x1, y1, x2, y2], got {bbox!r}")
    if len(points) != 2 or any(len(p) != 2 for p in points):
        raise ValueError(f"points must be two [x, y] pairs, got {points!r}")
    answer = {
        "bbox": [_json_number(v, "bbox value") for v in bbox],
        "points_1": [_json_number(v, "points_1 value") for v in points[0]],
        "points_2": [_json_number(v, "points_2 value") for v in points[1]],
    }
    answer_text = f"<answer>{json.dumps(answer)}</answer>"
    if not think:
        if reasoning is not None:
            raise ValueError(f"reasoning given with think=False (non-CoT answers have none): {reasoning!r:.80}")
        return answer_text
    reasoning = (reasoning or "").strip()
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        if tag in reasoning:
            raise ValueError(f"reasoning must not contain the tag {tag}: {reasoning!r:.80}")
    return f"<think> {reasoning} </think> {answer_text}" if reasoning else f"<think> </think> {answer_text}"
