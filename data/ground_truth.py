"""Ground truth (one box, two points) from a target mask, SPEC.md section 5 (paper section 3.4).

Seg-Zero trains the policy to output a bounding box and two points that lie inside the target
("the two largest inscribed circles"). The ground truth for those outputs is derived from the
target mask by the authors' released data-preparation algorithm, which this module follows step by
step so that data made here matches theirs:

    M  : mask [H, W], target = any non-zero pixel (LISA's ignore value 255 counts as target, as in
         the authors' ReasonSeg conversion).
    bbox = [min x, min y, max x, max y] over the target pixels (inclusive pixel coordinates).
    1. D = scipy.ndimage.distance_transform_edt(M)                     # [H, W] float64
    2. p1 = argmax D, first in row-major order on ties.
    3. d_i = || pixel_i - p1 ||_2 for every target pixel i (row-major order);
       far = { i : d_i > median(d) }   (strictly greater; numpy's median, mean of the two middle
       values for an even count).
    4. far not empty: p2 = argmax of D over far (first in row-major order on ties).
       far empty:     p2 = argmax of D inside rows [cy-10, cy+10), cols [cx-10, cx+10) clipped
                      to the image, (cy, cx) = int(mean row), int(mean col) of the target pixels.
    5. A point that is not on the mask moves to the nearest target pixel (Euclidean; first in
       row-major order on ties -- the SPEC leaves ties open, this is our choice).

Points are returned (x, y). Note that scipy measures distance to the nearest zero pixel only: the
image border is NOT background, so a mask touching the border has large D there (the authors' code
has the same property; we keep it, "on M as is").

Also here: the scaling to the 840 frame (v' = int(v * 840 / size + 0.5)) and the authors' optional
SAM2-consistency filter (keep a sample when SAM2, prompted with the ground-truth box and p1,
reconstructs the mask with IoU >= 0.6).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

from data.types import FRAME

#: Half side of the fallback window of step 4 (rows [cy-10, cy+10), cols [cx-10, cx+10)).
FALLBACK_HALF_WINDOW = 10


def _as_target(mask) -> np.ndarray:
    """Non-zero pixels of a 2-D mask as a bool array [H, W]; ValueError on other shapes."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}")
    return m != 0


def _nearest_target_pixel(target: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """(y, x) of the target pixel closest to (y, x); first in row-major order on ties."""
    ys, xs = np.nonzero(target)  # row-major order
    d2 = (ys - y) ** 2 + (xs - x) ** 2
    i = int(np.argmin(d2))
    return int(ys[i]), int(xs[i])


def ground_truth_from_mask(mask) -> tuple[list[int], list[list[int]]]:
    """Box and two points of a target mask, in the mask's own pixel frame (SPEC section 5).

    Args:
        mask: [H, W] array; non-zero = target.

    Returns:
        (bbox, [p1, p2]) with bbox = [x1, y1, x2, y2] and p = [x, y], all Python ints.

    Raises:
        ValueError: the mask is not 2-D or has no target pixel.
    """
    target = _as_target(mask)
    ys, xs = np.nonzero(target)  # [K] each, row-major order
    if ys.size == 0:
        raise ValueError(f"empty mask (shape {target.shape}): no target pixel to derive a box from")
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]

    dist = distance_transform_edt(target)  # [H, W], distance to the nearest 0 pixel
    # Step 2: argmax over the flattened array is the first maximum in row-major order.
    p1_y, p1_x = np.unravel_index(int(np.argmax(dist)), dist.shape)

    # Step 3: Euclidean distance of every target pixel to p1, and the "far" half.
    d = np.sqrt((ys - p1_y) ** 2.0 + (xs - p1_x) ** 2.0)  # [K]
    far = d > np.median(d)
    if far.any():
        # Step 4a: among far pixels (kept in row-major order) the largest D, first on ties.
        far_ys, far_xs = ys[far], xs[far]
        j = int(np.argmax(dist[far_ys, far_xs]))
        p2_y, p2_x = int(far_ys[j]), int(far_xs[j])
    else:
        # Step 4b: the maximum of D in a 20 x 20 window around the mask's mean position.
        cy, cx = int(ys.mean()), int(xs.mean())
        h, w = target.shape
        r0, r1 = max(cy - FALLBACK_HALF_WINDOW, 0), min(cy + FALLBACK_HALF_WINDOW, h)
        c0, c1 = max(cx - FALLBACK_HALF_WINDOW, 0), min(cx + FALLBACK_HALF_WINDOW, w)
        window = dist[r0:r1, c0:c1]
        wy, wx = np.unravel_index(int(np.argmax(window)), window.shape)
        p2_y, p2_x = r0 + int(wy), c0 + int(wx)

    # Step 5: snap points that are off the mask (only the fallback can produce one).
    points = []
    for y, x in ((int(p1_y), int(p1_x)), (p2_y, p2_x)):
        if not target[y, x]:
            y, x = _nearest_target_pixel(target, y, x)
        points.append([x, y])
    return bbox, points


def scale_to_frame(bbox: Sequence, points: Sequence[Sequence], width: int, height: int,
                   frame: int = FRAME) -> tuple[list[int], list[list[int]]]:
    """Map a box and points from a W x H image to the frame x frame square (SPEC section 5).

    v' = int(v * frame / size + 0.5), x values by ``width``, y values by ``height``.

    Raises:
        ValueError: a size that is not a positive integer, a bbox that is not 4 values, a point
            that is not [x, y], or a value that is not a finite real number (bools are refused:
            ``True`` is not a coordinate).
    """
    for size in (width, height):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
            raise ValueError(f"image size must be positive integers, got width={width!r}, height={height!r}")
    if len(bbox) != 4:
        raise ValueError(f"bbox must have 4 values [x1, y1, x2, y2], got {bbox!r}")

    def checked(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"coordinates must be finite real numbers, got {v!r} in bbox={bbox!r}, "
                             f"points={points!r}")
        return v

    def sx(v):
        return int(checked(v) * frame / width + 0.5)

    def sy(v):
        return int(checked(v) * frame / height + 0.5)

    x1, y1, x2, y2 = bbox
    new_points = []
    for p in points:
        if len(p) != 2:
            raise ValueError(f"each point must be [x, y], got {p!r}")
        new_points.append([sx(p[0]), sy(p[1])])
    return [sx(x1), sy(y1), sx(x2), sy(y2)], new_points


def solution_from_mask(mask, frame: int = FRAME) -> dict:
    """The 840-frame solution ``{"bbox": [...], "points": [[x, y], [x, y]]}`` of a mask [H, W]."""
    target = _as_target(mask)
    bbox, points = ground_truth_from_mask(target)
    h, w = target.shape
    bbox, points = scale_to_frame(bbox, points, w, h, frame)
    return {"bbox": bbox, "points": points}


def mask_iou(pred, target) -> float:
    """IoU of two masks (non-zero = foreground); 1.0 when both are empty."""
    p, t = np.asarray(pred) != 0, np.asarray(target) != 0
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: prediction {p.shape} vs target {t.shape}")
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return float(np.logical_and(p, t).sum()) / union


Segmenter = Callable[[np.ndarray, list, list], np.ndarray]


def sam2_consistency_filter(image: np.ndarray, mask, segmenter: Segmenter,
                            threshold: float = 0.6) -> tuple[bool, float]:
    """The authors' optional quality filter for training data (SPEC section 5).

    Prompts ``segmenter(image, bbox, [p1])`` with the ground-truth box and the first point, in the
    ORIGINAL frame, and keeps the sample when the returned mask matches the ground truth with
    IoU >= ``threshold``.

    Args:
        image: original RGB image, uint8 [H, W, 3].
        mask: ground-truth mask [H, W] (non-zero = target).
        segmenter: any callable ``(image, bbox [x1, y1, x2, y2], points [[x, y], ...]) -> mask``
            (e.g. a SAM2 image predictor wrapper), returning a [H, W] mask.
        threshold: minimum IoU to keep the sample.

    Returns:
        (keep, iou).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    bbox, (p1, _p2) = ground_truth_from_mask(mask)
    pred = np.asarray(segmenter(image, bbox, [p1]))
    if pred.shape != np.asarray(mask).shape:
        raise ValueError(f"segmenter returned a mask of shape {pred.shape}, expected "
                         f"{np.asarray(mask).shape}")
    iou = mask_iou(pred, mask)
    return iou >= threshold, iou
