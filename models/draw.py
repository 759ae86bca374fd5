"""Drawing predictions: mask overlays, PNG writers and a side-by-side evaluation panel.

Used by one-image inference (:mod:`models.infer`: ``overlay.png``, ``mask.png``) and by the
evaluation visualisations (:func:`panel`: image | ground truth | prediction, with the reasoning).

Conventions: images are uint8 RGB [H, W, 3] in and out (OpenCV draws and writes BGR, so the PNG
writers convert); masks are [H, W], bool or uint8. A ground-truth mask may hold 255 for "ignore"
pixels (SPEC.md section 6); :func:`panel` shades those grey. Boxes are [x1, y1, x2, y2] and points
[[x, y], ...] in the pixels of the image they are drawn on. OpenCV's Hershey fonts only have ASCII:
other characters are drawn as '?'.
"""
from __future__ import annotations

import os
import textwrap
from typing import Sequence

import cv2
import numpy as np

RED = (230, 40, 40)
GREEN = (40, 200, 60)
GREY = (150, 150, 150)
YELLOW = (255, 220, 0)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _check_rgb(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a uint8 RGB array [H, W, 3], got {desc}")
    return image


def _check_mask(mask, shape) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} does not match the image's {tuple(shape)}")
    return mask


def _line_width(image: np.ndarray) -> int:
    """Stroke width that stays visible on large images: 1 px per 250 px of the short side, >= 1."""
    return max(1, round(min(image.shape[:2]) / 250))


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    bbox: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    color: tuple[int, int, int] = RED,
    alpha: float = 0.5,
) -> np.ndarray:
    """A copy of ``image`` with the mask blended in, the box outlined and the points marked.

    Mask pixels become ``(1 - alpha) * image + alpha * color``; ``mask`` is bool or 0/1 uint8
    (nonzero = drawn; pass ``mask == 1`` for a ground truth with 255-ignore pixels). Points are
    filled discs in ``color`` with a yellow ring, so they show on top of the mask.
    Returns uint8 RGB [H, W, 3].
    """
    image = _check_rgb(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    out = image.copy()
    if mask is not None:
        region = _check_mask(mask, image.shape[:2]).astype(bool)
        blended = (1.0 - alpha) * out[region].astype(np.float32) + alpha * np.asarray(color, np.float32)
        out[region] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    width = _line_width(image)
    if bbox is not None:
        # one box [x1, y1, x2, y2], or several [[x1, y1, x2, y2], ...] (the multi-object mode)
        several = len(bbox) == 0 or isinstance(bbox[0], (list, tuple, np.ndarray))
        for box in (bbox if several else [bbox]):
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, width)
    for x, y in points or ():
        center = (int(round(float(x))), int(round(float(y))))
        cv2.circle(out, center, 3 * width + 1, color, -1)
        cv2.circle(out, center, 3 * width + 1, YELLOW, width)
    return out


def _write_png(array: np.ndarray, path) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write PNG {path!r}")


def mask_to_png(mask: np.ndarray, path) -> None:
    """Write a [H, W] mask as a single-channel 8-bit PNG: 255 where the mask is nonzero, else 0."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    _write_png(np.where(mask.astype(bool), 255, 0).astype(np.uint8), path)


def save_rgb_png(image: np.ndarray, path) -> None:
    """Write a uint8 RGB [H, W, 3] image as a PNG (converted to OpenCV's BGR order on the way)."""
    _write_png(cv2.cvtColor(_check_rgb(image), cv2.COLOR_RGB2BGR), path)


def _ascii(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else ("\n" if ch == "\n" else "?") for ch in text)


def text_block(text: str, width: int, *, scale: float = 0.5, max_lines: int = 40) -> np.ndarray:
    """``text`` wrapped to ``width`` pixels, black on white: uint8 RGB [h, width, 3].

    Lines past ``max_lines`` are dropped and the last kept line ends with "...".
    """
    if width < 20:
        raise ValueError(f"width must be at least 20 px, got {width!r}")
    (char_w, char_h), baseline = cv2.getTextSize("M", _FONT, scale, 1)
    cols = max(1, (width - 10) // char_w)
    lines: list[str] = []
    for paragraph in _ascii(text).split("\n"):
        lines += textwrap.wrap(paragraph, cols) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, cols - 3)] + "..."
    line_h = char_h + baseline + 4
    block = np.full((line_h * len(lines) + 10, width, 3), 255, dtype=np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(block, line, (5, 5 + char_h + i * line_h), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return block


def _titled(tile: np.ndarray, title: str, height: int) -> np.ndarray:
    """Resize a tile to ``height`` (aspect kept) and put a title bar above it."""
    h, w = tile.shape[:2]
    new_w = max(1, round(w * height / h))
    tile = cv2.resize(tile, (new_w, height), interpolation=cv2.INTER_AREA if height < h else cv2.INTER_LINEAR)
    bar = np.full((24, new_w, 3), 255, dtype=np.uint8)
    cv2.putText(bar, _ascii(title), (4, 17), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def panel(
    image: np.ndarray,
    gt_mask: np.ndarray | None,
    pred_mask: np.ndarray | None,
    *,
    gt_bbox=None,
    gt_points=None,
    pred_bbox=None,
    pred_points=None,
    text: str = "",
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
    height: int = 360,
) -> np.ndarray:
    """Image | ground truth (green, ignore grey) | prediction (red), with ``text`` wrapped below.

    All prompts and masks are in the pixels of ``image`` (the original frame). ``text`` is usually
    the query, the reasoning and the IoU. Each tile is scaled to ``height`` pixels, aspect kept.
    Returns uint8 RGB [24 + height + text height, 3 * tile width (+ 2 px gaps), 3].
    """
    image = _check_rgb(image)
    if len(titles) != 3:
        raise ValueError(f"titles must name the 3 tiles, got {titles!r}")
    if height < 16:
        raise ValueError(f"height must be at least 16 px, got {height!r}")
    gt_tile = image
    if gt_mask is not None:
        gt = _check_mask(gt_mask, image.shape[:2])
        gt_tile = overlay(image, gt == 255, color=GREY)  # ignore region first ...
        gt_tile = overlay(gt_tile, (gt != 0) & (gt != 255), color=GREEN)  # ... then the target
    gt_tile = overlay(gt_tile, None, gt_bbox, gt_points, color=GREEN)
    pred_tile = overlay(image, pred_mask, pred_bbox, pred_points, color=RED)
    tiles = [_titled(t, title, height) for t, title in zip((image, gt_tile, pred_tile), titles)]
    gap = np.full((tiles[0].shape[0], 2, 3), 255, dtype=np.uint8)
    row = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)
    if not text:
        return row
    return np.concatenate([row, text_block(text, row.shape[1])], axis=0)
