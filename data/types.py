"""Types shared by every dataset reader, the trainer and the evaluation loop.

A reader turns files on disk (or a generator) into :class:`Sample` objects. A sample that cannot be
read (unreadable image, polygon with fewer than 3 points, a RefCOCO annotation without any polygon,
missing key, mismatched sizes) is never silently dropped and never stops a whole run: the reader
raises :class:`BadSampleError` for that one index, naming the file and the reason, and the caller
counts it.

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

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

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
    """

    ids: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
