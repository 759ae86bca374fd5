"""Evaluation: gIoU / cIoU metrics (SPEC.md section 7), see :mod:`eval.metrics`."""
from eval.metrics import IGNORE, IoUAccumulator, IoURow, intersection_union, sample_iou

__all__ = ["IGNORE", "IoUAccumulator", "IoURow", "intersection_union", "sample_iou"]
