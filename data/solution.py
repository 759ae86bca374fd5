"""The authors' ground-truth string for training parquet files (SPEC.md section 6).

The released training sets (e.g. refCOCOg_9k_840) store the 840-frame ground truth of each row as

    <box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>

which is ``{"bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}`` in our solution dict (the
``solution`` argument of every reward in :mod:`rewards`). :func:`format_solution` writes it,
:func:`parse_solution` reads it back (whitespace between tokens is tolerated; anything else
malformed is a ValueError, since this is dataset input, not model output).
"""
from __future__ import annotations

import re

_INT = r"\s*(-?\d+)\s*"
_PAIR = r"\(" + _INT + "," + _INT + r"\)"
_SOLUTION_RE = re.compile(
    r"^\s*<box>\s*" + _PAIR + r"\s*,\s*" + _PAIR + r"\s*</box>\s*"
    r"<points>\s*" + _PAIR + r"\s*,\s*" + _PAIR + r"\s*</points>\s*$",
    re.ASCII,  # digits 0-9 only: int() would also accept e.g. Arabic-Indic digits
)


def _ints(values, n: int, what: str) -> list[int]:
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} must have {n} values, got {values!r}")
    out = []
    for v in values:
        try:
            ok = not isinstance(v, (bool, str)) and int(v) == v
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{what} values must be integers, got {values!r}")
        out.append(int(v))
    return out


def format_solution(solution: dict) -> str:
    """``{"bbox": [...], "points": [[x, y], [x, y]]}`` -> the authors' solution string."""
    try:
        bbox, points = solution["bbox"], solution["points"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"solution must be a dict with 'bbox' and 'points', "
                         f"got {solution!r}") from e
    x1, y1, x2, y2 = _ints(bbox, 4, "bbox")
    if len(points) != 2:
        raise ValueError(f"solution needs exactly 2 points, got {points!r}")
    (ax, ay), (bx, by) = (_ints(p, 2, "point") for p in points)
    return f"<box>({x1},{y1}),({x2},{y2})</box><points>({ax},{ay}),({bx},{by})</points>"


def parse_solution(text: str) -> dict:
    """The authors' solution string -> ``{"bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}``.
    """
    if not isinstance(text, str):
        raise ValueError(f"solution must be a string, got {type(text).__name__}: {text!r}")
    m = _SOLUTION_RE.match(text)
    if m is None:
        raise ValueError(f"malformed solution string (expected "
                         f"'<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>'): {text!r}")
    v = [int(g) for g in m.groups()]
    return {"bbox": v[0:4], "points": [v[4:6], v[6:8]]}
