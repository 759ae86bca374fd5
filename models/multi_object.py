"""The multi-object pipeline: image + query -> reasoning, a list of (box, point), the union mask.

SPEC.md section 9 (VisionReasoner, arXiv 2505.12081), per sample:

1. The policy (built with ``task="multi"``: the object-list prompt) sees the 840 x 840 image;
   greedy decoding.
2. The completion is parsed with ``rewards.parse_objects`` into K objects (box [x1, y1, x2, y2] and
   ONE point [x, y], 840 frame); the first ``rewards.MAX_OBJECTS`` (120) are kept, as the reward does.
3. Each coordinate is mapped to the original W x H frame and clipped to its pixels, exactly as the
   single-object pipeline does (``models.pipeline.to_original``: floor(v * size / 840 + 0.5)).
4. SAM2 on the ORIGINAL image, one prompt per object (box + its point by default; "box" / "points"
   as in the paper's Table 2), the K prompts of an image decoded in one batched call and the
   images of a batch encoded together (``Segmenter.segment_objects``).
5. The predicted mask is the UNION of the K object masks. ``[]`` is a valid answer: "nothing
   here", an empty mask with status "ok" (IoU 1 on an empty target). An answer that does not parse
   (status other than "ok") is an empty mask too, but a failure (IoU 0 at evaluation), and SAM2 is
   not run for it.

Shapes: images uint8 RGB [H_i, W_i, 3]; ``mask`` bool [H_i, W_i]; ``object_masks`` bool [K, H_i, W_i].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.pipeline import SegZeroPipeline, to_original
from rewards.multi_object import MAX_OBJECTS, parse_objects


@dataclass
class MultiObjectPrediction:
    """The multi-object pipeline's output for one (image, query).

    Attributes:
        completion, reasoning, status: as ``models.pipeline.Prediction`` (status from
            ``rewards.parse_objects``: "ok", "no_answer", "invalid_json", ...).
        bbox_840, points_840: the K kept objects in the 840 frame, [K, 4] and [K, 2] float lists
            ([] for the "nothing" answer), None when the answer did not parse.
        bbox, points: the same in the original frame (ints, clipped), None when not parsed.
        mask: bool [H, W], the union of the object masks (all False for [] or a failed parse).
        object_masks: bool [K, H, W], one mask per object (K = 0 when none).
    """

    completion: str
    reasoning: str | None
    status: str
    bbox_840: list[list[float]] | None
    points_840: list[list[float]] | None
    bbox: list[list[int]] | None
    points: list[list[int]] | None
    mask: np.ndarray
    object_masks: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def ok(self) -> bool:
        """True when the answer parsed (the empty list included)."""
        return self.status == "ok"

    @property
    def num_objects(self) -> int:
        return len(self.bbox_840) if self.bbox_840 is not None else 0


class MultiObjectPipeline(SegZeroPipeline):
    """Policy (task "multi") + segmenter, end to end (module docstring).

    Same arguments as :class:`models.pipeline.SegZeroPipeline` (``single_quotes`` does not apply:
    the object list is always parsed as strict JSON). The policy's ``task``, when it has one, must be
    "multi" (ValueError otherwise). The segmenter needs ``segment_objects``.
    """

    policy_task = "multi"

    def __init__(self, policy, segmenter, *, prompt_mode: str = "box+points", max_new_tokens: int = 1024):
        super().__init__(policy, segmenter, prompt_mode=prompt_mode, max_new_tokens=max_new_tokens)

    def predict_from_completions(self, images, completions) -> list[MultiObjectPrediction]:
        """Steps 2-5 for completions already generated."""
        predictions, boxes, points = [], [], []
        for image, completion in zip(images, completions):
            parsed = parse_objects(completion)
            height, width = image.shape[:2]
            b840 = p840 = b = p = None
            if parsed.ok:
                kept_boxes = parsed.boxes[:MAX_OBJECTS]  # [K, 4]
                kept_points = parsed.points[:MAX_OBJECTS]  # [K, 2]
                b840, p840 = kept_boxes.tolist(), kept_points.tolist()
                b = [[to_original(x1, width), to_original(y1, height), to_original(x2, width), to_original(y2, height)]
                     for x1, y1, x2, y2 in b840]
                p = [[to_original(x, width), to_original(y, height)] for x, y in p840]
            boxes.append(b or [])
            points.append(p or [])
            predictions.append(MultiObjectPrediction(
                completion=completion, reasoning=parsed.reasoning, status=parsed.status,
                bbox_840=b840, points_840=p840, bbox=b, points=p,
                mask=np.zeros((height, width), dtype=bool),
                object_masks=np.zeros((0, height, width), dtype=bool),
            ))
        if any(boxes):
            object_masks = self.segmenter.segment_objects(images, boxes, points, mode=self.prompt_mode)
            for prediction, masks in zip(predictions, object_masks):
                if len(masks):
                    prediction.object_masks = masks  # [K, H, W]
                    prediction.mask = masks.any(axis=0)  # the union, [H, W]
        return predictions
