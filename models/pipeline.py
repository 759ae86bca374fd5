"""The Seg-Zero reasoning-segmentation pipeline: image + query -> reasoning, box, points, mask.

SPEC.md section 1 (arXiv 2503.06520, section 3.1, Figure 2), per sample:

1. The policy (Qwen2.5-VL) sees the image resized to 840 x 840 (the policy object does the resize)
   and the SPEC prompt; greedy decoding, at most ``max_new_tokens`` (1024) new tokens.
2. The completion is parsed (``rewards.parse_answer``, SPEC section 3) into bbox [x1, y1, x2, y2]
   and points [[x, y], [x, y]] in the 840 frame.
3. Both are mapped to the original W x H frame and clipped to its pixels:

       x' = clip(floor(x * W / 840 + 0.5), 0, W - 1)
       y' = clip(floor(y * H / 840 + 0.5), 0, H - 1)

   Rounding rule: half up, ``floor(v + 0.5)``, not Python's ``round`` (which rounds halves to
   even: round(2.5) = 2). For non-negative values this equals ``int(v + 0.5)``, the rule the
   authors' code uses and the one SPEC section 5 uses for the opposite scaling. Clipping is ours:
   a model may write coordinates outside the frame, and SAM2 prompts outside the image help nobody.
4. SAM2 on the ORIGINAL image with the mapped prompts (``models.segmenter``; mode "box+points" by
   default, "box" / "points" for the Table 2 ablation); highest-scoring of the multimask outputs.
   An inverted box (x2 < x1 or y2 < y1, which the parser accepts) goes to SAM2 as written, its
   corners not reordered: SAM2 reads [x1, y1] as the top-left corner prompt and [x2, y2] as the
   bottom-right one and returns whatever mask that gives. The box reward treats the same box as
   overlapping nothing (IoU 0: ``rewards.box_iou``, ``rewards.parse``), so such an answer earns no
   box reward in training but still gets a SAM2 mask here.
5. An answer that does not parse (status other than "ok") gives an empty mask, the parse status,
   and no exception (SPEC section 1.6). SAM2 is not run for it.

Shapes: images are uint8 RGB [H_i, W_i, 3] (sizes may differ within a batch); each
:class:`Prediction` mask is bool [H_i, W_i].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data.types import FRAME
from models.segmenter import PROMPT_MODES, Segmenter, split_sam2
from rewards import parse_answer


@dataclass
class Prediction:
    """The pipeline's output for one (image, query).

    Attributes:
        completion: the policy's full response text.
        reasoning: the text inside <think>...</think>, or None.
        status: ``rewards.parse_answer`` status ("ok", "no_json", "invalid_json", ...).
        bbox_840, points_840: the parsed answer in the 840 frame (floats), None when not parsed.
        bbox, points: the same mapped to the original frame (ints, clipped), None when not parsed.
        mask: bool [H, W] in the original frame; all False when the answer did not parse.
    """

    completion: str
    reasoning: str | None
    status: str
    bbox_840: list[float] | None
    points_840: list[list[float]] | None
    bbox: list[int] | None
    points: list[list[int]] | None
    mask: np.ndarray

    @property
    def ok(self) -> bool:
        """True when the answer parsed and SAM2 was prompted with it."""
        return self.status == "ok"


def to_original(value: float, size: int, frame: int = FRAME) -> int:
    """One 840-frame coordinate to the pixels of an axis of ``size``: clip(floor(v*size/frame + 0.5), 0, size-1)."""
    return min(max(math.floor(value * size / frame + 0.5), 0), size - 1)


def map_to_original(
    bbox_840: Sequence[float], points_840: Sequence[Sequence[float]], width: int, height: int, frame: int = FRAME
) -> tuple[list[int], list[list[int]]]:
    """Box [x1, y1, x2, y2] and points [[x, y], ...] from the 840 frame to a W x H image (see module doc)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width!r}, height={height!r}")
    x1, y1, x2, y2 = bbox_840
    bbox = [to_original(x1, width, frame), to_original(y1, height, frame),
            to_original(x2, width, frame), to_original(y2, height, frame)]
    points = [[to_original(x, width, frame), to_original(y, height, frame)] for x, y in points_840]
    return bbox, points


class SegZeroPipeline:
    """Policy + segmenter, end to end (SPEC section 1).

    Args:
        policy: an object with ``complete(images, queries, *, max_new_tokens, greedy) -> list[str]``
            that resizes each image to 840 x 840 itself (``models.policy.SegZeroPolicy``). Its
            ``task`` attribute, when it has one, must be :attr:`policy_task` ("single" here; a policy
            built with task "multi" asks for an object list, which this pipeline cannot parse):
            ValueError otherwise.
        segmenter: a ``models.segmenter.Segmenter`` (``segment_batch(images, bboxes, points, mode)``).
        prompt_mode: "box+points" (default), "box" or "points".
        max_new_tokens: generation budget per completion (SPEC: 1024).
        single_quotes: parse ``{'bbox': ...}`` answers too (``parse_answer``'s inference-only
            leniency; off by default so evaluation scores what training rewarded).
    """

    #: the prompt and answer format (``SegZeroPolicy.task``) this pipeline parses
    policy_task = "single"

    def __init__(
        self,
        policy,
        segmenter,
        *,
        prompt_mode: str = "box+points",
        max_new_tokens: int = 1024,
        single_quotes: bool = False,
    ):
        task = getattr(policy, "task", self.policy_task)
        if task != self.policy_task:
            other = "SegZeroPipeline" if task == "single" else "models.multi_object.MultiObjectPipeline"
            raise ValueError(f"{type(self).__name__} needs a policy built with task={self.policy_task!r}, got "
                             f"task={task!r}: build the policy with task={self.policy_task!r}, or use {other}")
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.policy = policy
        self.segmenter = segmenter
        self.prompt_mode = prompt_mode
        self.max_new_tokens = max_new_tokens
        self.single_quotes = single_quotes

    def __call__(self, images: Sequence[np.ndarray], queries: Sequence[str]) -> list[Prediction]:
        """Predict for B (image, query) pairs: original-frame uint8 RGB images -> B predictions."""
        images, queries = list(images), list(queries)
        if len(images) != len(queries):
            raise ValueError(f"got {len(images)} images but {len(queries)} queries")
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"images[{i}] must be a uint8 RGB array [H, W, 3], got {desc}")
        if not images:
            return []

        completions = self.policy.complete(images, queries, max_new_tokens=self.max_new_tokens, greedy=True)
        assert len(completions) == len(images), (len(completions), len(images))
        return self.predict_from_completions(images, completions)

    def predict_from_completions(self, images: Sequence[np.ndarray], completions: Sequence[str]) -> list[Prediction]:
        """Steps 2-5 for completions already generated (also used to re-segment saved completions)."""
        predictions = []
        for image, completion in zip(images, completions):
            parsed = parse_answer(completion, single_quotes=self.single_quotes)
            height, width = image.shape[:2]
            bbox = points = None
            if parsed.ok:
                bbox, points = map_to_original(parsed.bbox, parsed.points, width, height)
            predictions.append(Prediction(
                completion=completion,
                reasoning=parsed.reasoning,
                status=parsed.status,
                bbox_840=parsed.bbox if parsed.ok else None,
                points_840=parsed.points if parsed.ok else None,
                bbox=bbox,
                points=points,
                mask=np.zeros((height, width), dtype=bool),  # replaced below when the answer parsed
            ))

        todo = [i for i, p in enumerate(predictions) if p.ok]
        if todo:
            masks = self.segmenter.segment_batch(
                [images[i] for i in todo],
                [predictions[i].bbox for i in todo],
                [predictions[i].points for i in todo],
                mode=self.prompt_mode,
            )
            for i, mask in zip(todo, masks):
                predictions[i].mask = mask
        return predictions


def load_reasoning_model(model_path: str, device: str = "cpu", attn_implementation: str = "sdpa",
                         tiny_seed: int = 0):
    """(model, processor) for a ``--model-path`` value, as train.py reads it: 'tiny' (the random tiny
    Qwen2.5-VL built in memory from ``tiny_seed``, models.tiny), 'toy' (the shipped toy policy,
    models.toy), or a checkpoint directory / hub id (models.loading.load_policy, eval mode)."""
    if model_path == "tiny":
        from models.tiny import build_tiny_qwen

        model, processor = build_tiny_qwen(tiny_seed, attn_implementation=attn_implementation)
        return model.to(device), processor
    from models.loading import load_policy
    from models.toy import resolve_model_path

    return load_policy(resolve_model_path(model_path), device=device, attn_implementation=attn_implementation)


def load_segmenter(sam2: str, device: str = "cpu") -> Segmenter:
    """SAM2 for a ``--sam2`` value, as train.py reads it: 'toy' (the shipped toy SAM2 trained on the
    synthetic scenes, models.toy), CONFIG::CHECKPOINT (:meth:`Segmenter.from_config`: a sam2
    package config or yaml file, and a checkpoint file) or a hub id (:meth:`Segmenter.from_hub`).
    ValueError from :func:`models.segmenter.split_sam2` for a malformed value or a bare checkpoint file."""
    if sam2 == "toy":
        from models.toy import load_toy_sam2

        return load_toy_sam2(device=device)
    parts = split_sam2(sam2)
    if parts:
        return Segmenter.from_config(*parts, device=device)
    return Segmenter.from_hub(sam2, device=device)
