"""Seg-Zero answer parsing and rewards (SPEC.md sections 3-4; arXiv 2503.06520, section 3.3).

- :mod:`rewards.parse`: ``parse_answer`` (completion -> box, points, reasoning, status), used by
  the rewards and by inference, and its inverse ``format_answer`` (SFT / warm-start targets).
- :mod:`rewards.seg_zero`: the five reward terms, their sum ``seg_zero_reward`` and the batch
  scorer ``score_completions`` used by the trainer.
- :mod:`rewards.multi_object`: the multi-object answer list (SPEC.md section 9, VisionReasoner):
  ``parse_objects``, ``multi_object_format_reward``, ``multi_object_accuracy_reward``,
  ``non_repeat_reward`` and the batch scorer ``score_multi_object``.
"""
from rewards.multi_object import (
    MAX_OBJECTS,
    MULTI_TERM_NAMES,
    OBJECT_STATUSES,
    ParsedObjects,
    format_objects_answer,
    hungarian_match,
    matched_box_iou,
    multi_object_accuracy_reward,
    multi_object_format_reward,
    multi_object_reward,
    non_repeat_reward,
    parse_objects,
    score_multi_object,
)
from rewards.parse import MAX_ABS_COORD, STATUSES, ParsedAnswer, format_answer, parse_answer
from rewards.seg_zero import (
    TERM_NAMES,
    RewardBatch,
    bbox_iou_reward,
    bbox_l1_reward,
    box_iou,
    point_distance,
    point_l1_reward,
    score_completions,
    seg_zero_reward,
    segmentation_format_reward,
    thinking_format_reward,
)

__all__ = [
    "MAX_OBJECTS",
    "MULTI_TERM_NAMES",
    "OBJECT_STATUSES",
    "ParsedObjects",
    "format_objects_answer",
    "hungarian_match",
    "matched_box_iou",
    "multi_object_accuracy_reward",
    "multi_object_format_reward",
    "multi_object_reward",
    "non_repeat_reward",
    "parse_objects",
    "score_multi_object",
    "MAX_ABS_COORD",
    "STATUSES",
    "TERM_NAMES",
    "ParsedAnswer",
    "RewardBatch",
    "bbox_iou_reward",
    "bbox_l1_reward",
    "box_iou",
    "format_answer",
    "parse_answer",
    "point_distance",
    "point_l1_reward",
    "score_completions",
    "seg_zero_reward",
    "segmentation_format_reward",
    "thinking_format_reward",
]
