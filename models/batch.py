"""Prompt batches: B (image, query) pairs -> the model's inputs (SPEC.md section 1 step 1, section 2).

:func:`prepare_inputs` -> :class:`PolicyBatch`: each image resized to 840 x 840 bilinear (aspect
ratio not kept), chat template with the SPEC prompt, processor -> input_ids [B, P] padded (left by
default, ``padding_side='right'`` on request; :func:`left_align` moves real tokens to the right end),
attention_mask [B, P], pixel_values [sum of patches, C*2*14*14], image_grid_thw [B, 3].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from data.image import resize_to_frame as data_resize_to_frame
from data.types import FRAME
from models.prompt import build_messages


@dataclass
class PolicyBatch:
    """B prompts ready for the model; every tensor's first dimension is B except pixel_values.

    Attributes:
        input_ids: [B, P] token ids, padded (left by default).
        attention_mask: [B, P] 1 = real token.
        mm_token_type_ids: [B, P] 0 = text, 1 = image token (what ``get_rope_index`` reads).
        pixel_values: [sum_i T_i*H_i*W_i, C*2*14*14] patches of all images, image after image.
        image_grid_thw: [B, 3] patch grid (T, H, W) of each image, before the 2 x 2 merge.
        queries: the B raw queries.
        image_sizes: the B ORIGINAL (width, height), for mapping answers back (SPEC 1 step 4).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    queries: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device) -> "PolicyBatch":
        return PolicyBatch(
            self.input_ids.to(device), self.attention_mask.to(device),
            self.mm_token_type_ids.to(device), self.pixel_values.to(device),
            self.image_grid_thw.to(device), list(self.queries), list(self.image_sizes),
        )

    def patch_counts(self) -> list[int]:
        """Rows of pixel_values that belong to each image: T * H * W."""
        return self.image_grid_thw.prod(-1).tolist()

    def select(self, indices: Sequence[int]) -> "PolicyBatch":
        """The prompts ``indices`` as a new batch (padding columns no prompt needs are dropped)."""
        indices = [int(i) for i in indices]
        if not indices or any(i < 0 or i >= len(self) for i in indices):
            raise ValueError(f"indices must be a non-empty subset of range({len(self)}), got {indices}")
        pieces = torch.split(self.pixel_values, self.patch_counts())
        left = left_align(self)
        keep = left.attention_mask[indices].sum(-1).max()
        cols = slice(left.input_ids.shape[1] - int(keep), None)
        return PolicyBatch(
            left.input_ids[indices][:, cols], left.attention_mask[indices][:, cols],
            left.mm_token_type_ids[indices][:, cols], torch.cat([pieces[i] for i in indices]),
            self.image_grid_thw[indices], [self.queries[i] for i in indices],
            [self.image_sizes[i] for i in indices],
        )


def resize_to_frame(image, frame: int = FRAME) -> Image.Image:
    """SPEC section 1 step 1 (:func:`data.image.resize_to_frame`) for a PIL image or a uint8
    [H, W, 3] array, returned as a PIL image for the processor."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    elif not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}")
    return Image.fromarray(data_resize_to_frame(image, frame))


def prepare_inputs(
    processor,
    images: Sequence,
    queries: Sequence[str],
    *,
    with_example: bool = True,
    think: bool = True,
    task: str = "single",
    frame: int = FRAME,
    padding_side: str = "left",
) -> PolicyBatch:
    """B (image, query) pairs -> a :class:`PolicyBatch` (see the module docstring)."""
    if len(images) != len(queries) or len(images) == 0:
        raise ValueError(f"need as many images as queries (> 0), got {len(images)} and {len(queries)}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    sizes = [(im.width, im.height) if isinstance(im, Image.Image) else (im.shape[1], im.shape[0])
             for im in images]
    framed = [resize_to_frame(im, frame) for im in images]
    texts = [
        processor.apply_chat_template(
            build_messages(q, with_example=with_example, think=think, task=task),
            tokenize=False, add_generation_prompt=True,
        )
        for q in queries
    ]
    tokenizer = processor.tokenizer
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        enc = processor(text=texts, images=framed, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = old_side
    return PolicyBatch(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        mm_token_type_ids=enc["mm_token_type_ids"],
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        queries=list(queries),
        image_sizes=sizes,
    )


def left_align(batch: PolicyBatch) -> PolicyBatch:
    """The same batch with every prompt's real tokens moved to the right end (left padding).

    A stable sort of each row on its mask moves pad columns first and keeps token order.
    """
    mask = batch.attention_mask
    order = torch.sort(mask, dim=1, stable=True).indices  # [B, P]: pads first, then tokens
    return PolicyBatch(
        batch.input_ids.gather(1, order), mask.gather(1, order),
        batch.mm_token_type_ids.gather(1, order), batch.pixel_values, batch.image_grid_thw,
        list(batch.queries), list(batch.image_sizes),
    )

