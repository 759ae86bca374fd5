"""gIoU and cIoU of reasoning / referring segmentation (SPEC.md section 7; Seg-Zero arXiv 2503.06520,
section 4, following LISA's protocol).

Per sample, with P the predicted mask, T the target pixels (gt == 1) and V the valid pixels
(gt != 255, LISA's "ignore" regions excluded from both counts), all [H, W] in the ORIGINAL frame:

    I = |P & T & V|,   U = |(P | T) & V|,   IoU = I / U   (IoU = 1 when U = 0: empty target,
                                                             empty prediction)
Over a split of N samples:

    gIoU = (1 / N) * sum_n IoU_n          cIoU = sum_n I_n / sum_n U_n   (1 when sum U = 0)

An unparseable answer (SPEC section 1.6) is an empty prediction: I = 0, U = |T & V| (the target
area), and its IoU is 0, on an empty target too (where U = 0 would otherwise give 1): an answer
that did not parse never earns IoU. It is also counted as a parse failure.

:class:`IoUAccumulator` streams these sums, optionally per group (e.g. ReasonSeg's "short" and
"sentence" queries; the overall row always accumulates), and merges across processes with one
``all_reduce(SUM)`` of a float64 tensor. Reports are in percent with one decimal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

IGNORE = 255  # ground-truth value of pixels excluded from I and U


def intersection_union(pred_mask: Any, gt_mask: Any) -> tuple[int, int]:
    """(I, U) of one sample, ignore pixels excluded (module docstring).

    Args:
        pred_mask: bool or 0/1 array [H, W] (numpy, or a CPU torch tensor), or None for an
            unparseable answer (then I = 0 and U = the target area).
        gt_mask: uint8 [H, W], 1 = target, 0 = background, 255 = ignore (bool is accepted too).

    Raises:
        ValueError: shapes differ (both are named), a mask is not 2-D, or values outside
            {0, 1} (prediction) / {0, 1, 255} (ground truth).
    """
    gt = np.asarray(gt_mask)
    if gt.ndim != 2:
        raise ValueError(f"gt_mask must be [H, W], got shape {gt.shape}")
    if gt.dtype != np.bool_:
        bad = ~np.isin(gt, (0, 1, IGNORE))
        if bad.any():
            raise ValueError(f"gt_mask values must be 0, 1 or {IGNORE}, found {np.unique(gt[bad])[:5].tolist()}")
    target = gt == 1  # [H, W] bool; excludes ignore pixels by construction
    if pred_mask is None:
        return 0, int(target.sum())

    pred = np.asarray(pred_mask)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_mask shape {pred.shape} does not match gt_mask shape {gt.shape}")
    if pred.dtype != np.bool_:
        if ((pred != 0) & (pred != 1)).any():
            raise ValueError(f"pred_mask must be bool or 0/1, found values {np.unique(pred)[:5].tolist()}")
        pred = pred.astype(bool)
    valid = gt != IGNORE
    intersection = int(np.count_nonzero(pred & target))
    union = int(np.count_nonzero((pred | target) & valid))
    return intersection, union


def sample_iou(intersection: float, union: float, parsed: bool = True) -> float:
    """I / U, and 1.0 when U = 0 (nothing to find and nothing predicted); 0.0 whenever the answer
    could not be parsed (SPEC section 7: "unparseable predictions count as IoU 0"), also on an
    empty target, where the empty mask it stands for would otherwise score 1."""
    if intersection < 0 or union < 0 or intersection > union:
        raise ValueError(f"need 0 <= intersection <= union, got intersection={intersection}, union={union}")
    if not parsed:
        return 0.0
    return 1.0 if union == 0 else intersection / union


@dataclass
class IoURow:
    """The sums of one row (overall or a group). All fields are exact sums of per-sample values."""

    count: float = 0.0  # number of samples
    sum_iou: float = 0.0  # sum of per-sample IoU (for gIoU)
    sum_intersection: float = 0.0  # sum of I (for cIoU)
    sum_union: float = 0.0  # sum of U (for cIoU)
    num_parse_failures: float = 0.0  # samples whose answer could not be parsed

    FIELDS = ("count", "sum_iou", "sum_intersection", "sum_union", "num_parse_failures")

    def add(self, intersection: float, union: float, parsed: bool) -> None:
        self.count += 1
        self.sum_iou += sample_iou(intersection, union, parsed)
        self.sum_intersection += intersection
        self.sum_union += union
        self.num_parse_failures += 0 if parsed else 1

    @property
    def giou(self) -> float:
        """Mean per-sample IoU, a fraction; NaN without samples."""
        return self.sum_iou / self.count if self.count else math.nan

    @property
    def ciou(self) -> float:
        """sum I / sum U, a fraction; 1.0 when sum U = 0 (as per sample), NaN without samples."""
        if not self.count:
            return math.nan
        return self.sum_intersection / self.sum_union if self.sum_union else 1.0

    @property
    def parse_failure_rate(self) -> float:
        return self.num_parse_failures / self.count if self.count else math.nan

    def values(self) -> list[float]:
        return [float(getattr(self, name)) for name in self.FIELDS]

    def summary(self) -> dict[str, float]:
        """gIoU, cIoU and parse-failure rate in percent with one decimal, plus the count."""
        return {
            "gIoU": round(100 * self.giou, 1),
            "cIoU": round(100 * self.ciou, 1),
            "parse_fail": round(100 * self.parse_failure_rate, 1),
            "count": int(self.count),
        }


class IoUAccumulator:
    """Streaming gIoU / cIoU / parse-failure rate, overall and per declared group.

    Groups are declared up front so that every process lays out the same tensor for
    :meth:`all_reduce`. ``add(..., group="sentence")`` updates that group's row AND the overall row.

    Example::

        acc = IoUAccumulator(groups=("short", "sentence"))
        acc.add(*intersection_union(pred, gt), parsed=answer.ok, group="sentence")
        acc.all_reduce()          # no-op unless torch.distributed is initialised
        print(acc.summary())      # {"overall": {"gIoU": ..., "cIoU": ..., ...}, "short": ..., ...}
    """

    OVERALL = "overall"

    def __init__(self, groups: Sequence[str] = ()):
        groups = tuple(groups)
        if self.OVERALL in groups or len(set(groups)) != len(groups):
            raise ValueError(f"groups must be distinct and not {self.OVERALL!r}, got {groups!r}")
        self.groups = groups
        self.rows: dict[str, IoURow] = {name: IoURow() for name in (self.OVERALL, *groups)}

    # -- accumulate --------------------------------------------------------------------------

    def add(self, intersection: int, union: int, parsed: bool = True, group: str | None = None) -> None:
        """Add one sample. An unparsed sample must carry I = 0 (from ``intersection_union(None, gt)``)."""
        if group is not None and group not in self.groups:
            raise ValueError(f"unknown group {group!r}; declared groups: {self.groups!r}")
        if not parsed and intersection != 0:
            raise ValueError(
                f"an unparsed sample has an empty prediction, so intersection must be 0, got {intersection}"
            )
        sample_iou(intersection, union)  # validates before any row changes
        self.rows[self.OVERALL].add(intersection, union, parsed)
        if group is not None:
            self.rows[group].add(intersection, union, parsed)

    def merge(self, other: "IoUAccumulator") -> "IoUAccumulator":
        """Add another accumulator's sums into this one (same groups); returns self."""
        if other.groups != self.groups:
            raise ValueError(f"cannot merge accumulators with groups {other.groups!r} into {self.groups!r}")
        for name, row in self.rows.items():
            for field_name, value in zip(IoURow.FIELDS, other.rows[name].values()):
                setattr(row, field_name, getattr(row, field_name) + value)
        return self

    # -- distributed -------------------------------------------------------------------------

    def to_tensor(self) -> torch.Tensor:
        """float64 [1 + num_groups, 5]: rows overall then groups in declared order; columns
        count, sum_iou, sum_intersection, sum_union, num_parse_failures (IoURow.FIELDS).

        Every entry is a plain sum, so summing these tensors over processes is merging them.
        Counts and pixel sums are integers, exact in float64 up to 2**53 (9e15 pixels); sum_iou is
        a float sum, equal to a single-process run up to rounding order.
        """
        return torch.tensor([row.values() for row in self.rows.values()], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, groups: Sequence[str] = ()) -> "IoUAccumulator":
        """Inverse of :meth:`to_tensor`."""
        acc = cls(groups)
        expected = (len(acc.rows), len(IoURow.FIELDS))
        if tuple(tensor.shape) != expected:
            raise ValueError(f"tensor shape {tuple(tensor.shape)} does not match {expected} for groups {acc.groups!r}")
        for row, values in zip(acc.rows.values(), tensor.detach().cpu().double().tolist()):
            for field_name, value in zip(IoURow.FIELDS, values):
                setattr(row, field_name, value)
        return acc

    def all_reduce(self, group: Any = None) -> "IoUAccumulator":
        """Sum the accumulators of all ranks in place (every rank ends with the totals).

        No-op when torch.distributed is not initialised. With the NCCL backend the tensor travels
        on the current CUDA device. Every rank must have declared the same groups.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        tensor = self.to_tensor()  # [1 + num_groups, 5] float64
        if dist.get_backend(group) == "nccl":
            tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        reduced = IoUAccumulator.from_tensor(tensor, self.groups)
        self.rows = reduced.rows
        return self

    # -- read out ----------------------------------------------------------------------------

    def row(self, group: str | None = None) -> IoURow:
        """The sums of one group (None or "overall" for all samples)."""
        name = self.OVERALL if group is None else group
        if name not in self.rows:
            raise ValueError(f"unknown group {group!r}; declared groups: {self.groups!r}")
        return self.rows[name]

    @property
    def count(self) -> int:
        return int(self.rows[self.OVERALL].count)

    @property
    def giou(self) -> float:
        """Overall gIoU as a fraction."""
        return self.rows[self.OVERALL].giou

    @property
    def ciou(self) -> float:
        """Overall cIoU as a fraction."""
        return self.rows[self.OVERALL].ciou

    @property
    def parse_failure_rate(self) -> float:
        """Overall fraction of unparseable answers."""
        return self.rows[self.OVERALL].parse_failure_rate

    def summary(self) -> dict[str, dict[str, float]]:
        """{row name: {"gIoU", "cIoU", "parse_fail" (percent, one decimal), "count"}}, overall first."""
        return {name: row.summary() for name, row in self.rows.items()}
