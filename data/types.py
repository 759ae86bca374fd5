"""Types shared by every dataset reader, the trainer and the evaluation loop.

A reader turns files on disk (or a generator) into :class:`Sample` objects. A sample that cannot be
read (unreadable image, polygon with fewer than 3 points, a RefCOCO annotation without any polygon,
missing key, mismatched sizes, a value of the wrong type) is never silently dropped and never stops
a whole run: the reader raises :class:`BadSampleError` for that one index, naming the file and the
reason, and the caller counts it. A file that cannot be read at all (not JSON, not parquet, the
wrong top-level structure) is one ``ValueError`` naming the file, raised when the reader is built.

Every sample is validated where it is read, by :func:`check_sample`: the image is uint8 RGB, the
query is text (a ``str`` that encodes to UTF-8: no lone surrogate), the mask has the image's size
and only the values 0, 1, 255, and a solution has an ordered box and points inside the 840 frame.

An all-zero ``mask`` is not a read error: it is an EMPTY TARGET (a LISA ReasonSeg file whose
shapes are all "flag", SPEC.md section 6). Evaluation scores it (IoU 1 for an empty prediction,
SPEC section 7); training needs a box from the mask, so the trainer reports it and moves on to
the next sample (``data.solution_from_mask`` raises ValueError on it).

Coordinate conventions (SPEC.md sections 1, 5):
- ``image`` is the ORIGINAL image, ``uint8`` RGB, shape ``[H, W, 3]``.
- ``mask`` is the ORIGINAL-frame target mask, ``uint8`` ``[H, W]``: 1 = target, 0 = background,
  255 = ignore (LISA's "ignore" polygons; excluded from intersection and union at evaluation).
- ``solution`` is the ground-truth answer in the 840 x 840 frame the policy sees:
  ``{"bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}`` (ints), the ``solution`` argument of
  every reward in :mod:`rewards`.
"""
from __future__ import annotations

import json
import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

#: Keys of one object of a multi-object solution (SPEC.md section 9).
BOX_KEY, POINT_KEY = "bbox_2d", "point_2d"

#: Side of the square frame the policy sees (SPEC.md section 1: 840 = 30 x 28).
FRAME = 840


@dataclass
class Sample:
    """One (image, query) pair with its ground truth.

    Attributes:
        id: unique, stable identifier (used to resume evaluation and to shard data).
        image: original RGB image, uint8 [H, W, 3].
        query: the referring expression or reasoning question, as written in the dataset.
        mask: uint8 [H, W] target mask (0 / 1 / 255 = ignore; all zero = an empty target), or None
            when the format has none (the authors' training parquet only has the 840-frame
            solution).
        solution: ground truth in the 840 frame ``{"bbox": [...], "points": [[x, y], [x, y]]}``,
            or None when only a mask is known (compute it with ``data.solution_from_mask``).
        is_sentence: ReasonSeg's long-query flag (True = sentence query), None when unknown.
        meta: anything else a format carries (file paths, ann ids, split...).
    """

    id: str
    image: np.ndarray
    query: str
    mask: np.ndarray | None = None
    solution: dict | None = None
    is_sentence: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


class BadSampleError(Exception):
    """One sample could not be read. Carries the sample id, the file at fault and the reason."""

    def __init__(self, sample_id: str, source: str, reason: str):
        self.sample_id = str(sample_id)
        self.source = str(source)
        self.reason = str(reason)
        super().__init__(f"sample {self.sample_id!r} ({self.source}): {self.reason}")


class SampleSource(Protocol):
    """What every reader returns: a lazily-loading, indexable collection of samples.

    ``ids`` is known without decoding any image (so that evaluation can skip finished samples
    and shard by index cheaply); ``__getitem__`` decodes one sample or raises BadSampleError.
    A reader whose samples never carry a ground-truth mask (the authors' training parquet) says so
    with a ``has_masks = False`` attribute; a reader without the attribute has masks.
    """

    ids: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


#: Exceptions that decoding one sample's values can raise when a file holds the wrong types or
#: values (a string where a number belongs, a number where a list belongs, a missing key...).
DECODE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


@contextmanager
def reading_sample(sample_id: str, source: str) -> Iterator[None]:
    """Turn a decoding failure of one sample (:data:`DECODE_ERRORS`) into a BadSampleError naming
    the sample, the file and the exception. Readers wrap the decoding of one index with it."""
    try:
        yield
    except BadSampleError:
        raise
    except DECODE_ERRORS as err:
        raise BadSampleError(sample_id, source, f"unreadable sample: {type(err).__name__}: {err}") from err


def check_text(value: Any, what: str = "query") -> str:
    """``value`` as text: a ``str`` that encodes to UTF-8, or UTF-8 bytes. ValueError otherwise
    (another type, a lone surrogate such as "\\udc80", bytes that are not UTF-8)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{what} is not valid text: bytes that are not UTF-8 ({err.reason} at "
                             f"byte {err.start}): {bytes(value)[:80]!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}: {value!r:.80}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid text: {err.reason} at character {err.start}: "
                         f"{value!r:.80}") from None
    return value


def check_solution(solution: Any) -> dict:
    """``{"bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}`` with finite numbers, x1 <= x2,
    y1 <= y2 and every coordinate in [0, FRAME] (the 840 frame, edges included). Returns it;
    ValueError naming the problem otherwise."""
    if not isinstance(solution, dict) or "bbox" not in solution or "points" not in solution:
        raise ValueError(f"solution must be {{'bbox': [x1, y1, x2, y2], 'points': [[x, y], [x, y]]}}, "
                         f"got {solution!r:.120}")
    bbox, points = solution["bbox"], solution["points"]

    def numbers_ok(values, n):
        return (isinstance(values, (list, tuple, np.ndarray)) and len(values) == n
                and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                        for v in values))

    if not numbers_ok(bbox, 4):
        raise ValueError(f"solution bbox must be 4 finite numbers, got {bbox!r:.120}")
    if not (isinstance(points, (list, tuple, np.ndarray)) and len(points) == 2 and all(numbers_ok(p, 2) for p in points)):
        raise ValueError(f"solution points must be two [x, y] pairs of finite numbers, got {points!r:.120}")
    x1, y1, x2, y2 = bbox
    if x1 > x2 or y1 > y2:
        raise ValueError(f"solution bbox {list(bbox)} is not ordered: need x1 <= x2 and y1 <= y2")
    for name, values in (("bbox", bbox), ("point", points[0]), ("point", points[1])):
        if not all(0 <= v <= FRAME for v in values):
            raise ValueError(f"solution {name} {list(values)} lies outside the {FRAME} x {FRAME} frame "
                             f"(coordinates must be in [0, {FRAME}])")
    return solution


def check_objects(solution: Any, what: str) -> list[dict]:
    """The validated list of objects (floats kept as given); ValueError naming ``what``."""
    if isinstance(solution, str):
        try:
            solution = json.loads(solution)
        except ValueError as exc:
            raise ValueError(f"{what} is not valid JSON: {solution!r:.200}") from exc
    if not isinstance(solution, (list, tuple)):
        raise ValueError(f"{what} must be a list of {{'bbox_2d': [x1, y1, x2, y2], 'point_2d': [x, y]}}, "
                         f"got {solution!r:.200}")
    out = []
    for k, item in enumerate(solution):
        if not isinstance(item, Mapping) or BOX_KEY not in item or POINT_KEY not in item:
            raise ValueError(f"{what}[{k}] must have keys 'bbox_2d' and 'point_2d', got {item!r:.200}")
        box = _object_numbers(item[BOX_KEY], 4, f"{what}[{k}].bbox_2d")
        point = _object_numbers(item[POINT_KEY], 2, f"{what}[{k}].point_2d")
        if box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"{what}[{k}].bbox_2d must have x1 <= x2 and y1 <= y2, got {item[BOX_KEY]!r}")
        out.append({BOX_KEY: box, POINT_KEY: point})
    return out


def _object_numbers(value: Any, length: int, what: str) -> list:
    ok = isinstance(value, (list, tuple, np.ndarray)) and len(value) == length
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)
                    for v in value)
    if not ok:
        raise ValueError(f"{what} must be {length} finite numbers, got {value!r}")
    return list(value)


def check_objects_solution(solution: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth -> (boxes float64 [N, 4], points float64 [N, 2]); N = 0 for an empty target.

    ``solution`` is a list of ``{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}`` or that list as a
    JSON string (the ``solution`` column of the authors' parquet). ValueError when malformed.
    """
    objects = check_objects(solution, "solution")
    boxes = np.asarray([o[BOX_KEY] for o in objects], dtype=np.float64).reshape(-1, 4)  # [N, 4]
    points = np.asarray([o[POINT_KEY] for o in objects], dtype=np.float64).reshape(-1, 2)  # [N, 2]
    return boxes, points


def check_sample(sample: Sample, source: str) -> Sample:
    """Validate a sample where it is read (see the module docstring); BadSampleError naming the
    sample, ``source`` (the file) and the problem. Returns the sample."""
    image = sample.image
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise BadSampleError(sample.id, source, f"bad image: expected uint8 RGB [H, W, 3], got {desc}")
    try:
        sample.query = check_text(sample.query)
    except ValueError as err:
        raise BadSampleError(sample.id, source, f"bad query: {err}") from None
    if sample.mask is not None:
        mask = sample.mask
        if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
            shape = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
            raise BadSampleError(sample.id, source, f"mismatched sizes: mask {shape}, image {image.shape[:2]}")
        other = (mask != 0) & (mask != 1) & (mask != 255)
        if other.any():
            raise BadSampleError(sample.id, source, f"bad mask: value {mask[other][0].item()!r} (and "
                                                    f"{int(other.sum()) - 1} more), expected 0, 1 or 255")
    if sample.solution is not None:
        try:
            if isinstance(sample.solution, list):  # multi-object ground truth (SPEC 9): a list of objects
                check_objects_solution(sample.solution)
            else:
                check_solution(sample.solution)
        except ValueError as err:
            raise BadSampleError(sample.id, source, f"bad solution: {err}") from None
    return sample
