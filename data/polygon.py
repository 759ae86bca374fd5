"""Polygons from dataset files, made safe to rasterise: finite coordinates, clipped near the frame.

A polygon vertex far outside the image (1e9, say) makes OpenCV and pycocotools work in proportion
to the polygon's extent and overflows their int32 coordinates (a wrong mask). :func:`frame_polygon`
therefore refuses non-finite and absurd (|v| > :data:`MAX_ABS_COORD`) coordinates, and clips a
polygon that reaches beyond the frame by more than one frame size to the rectangle
``[-S, W + S] x [-S, H + S]`` (S = max(W, H)) with Sutherland-Hodgman clipping. The clipped
polygon covers exactly the same region of that rectangle, so the pixels inside the image are the
ones of the original polygon up to the rounding of the new vertices (which lie outside the image).
A polygon that stays within that rectangle, as every real annotation does, is returned unchanged,
so rasterising it is bit-exact with the datasets' own tools.
"""
from __future__ import annotations

import numpy as np

#: Largest |coordinate| accepted in a polygon; beyond it a file is garbage, not an annotation.
MAX_ABS_COORD = 1e15


def clip_polygon(points: np.ndarray, x_min: float, y_min: float, x_max: float, y_max: float) -> np.ndarray:
    """The part of polygon ``points`` [K, 2] (x, y) inside the rectangle, float64 [K', 2]
    (Sutherland-Hodgman, one rectangle side at a time; K' = 0 when nothing is inside)."""
    poly = [(float(x), float(y)) for x, y in points]
    for axis, bound, keep_above in ((0, x_min, True), (0, x_max, False), (1, y_min, True), (1, y_max, False)):
        def inside(p):
            return p[axis] >= bound if keep_above else p[axis] <= bound

        def crossing(p, q):  # the point of segment p-q on the line coordinate[axis] == bound
            t = (bound - p[axis]) / (q[axis] - p[axis])
            r = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]
            r[axis] = bound
            return (r[0], r[1])

        out = []
        prev = poly[-1] if poly else None
        for cur in poly:
            if inside(cur):
                if not inside(prev):
                    out.append(crossing(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(crossing(prev, cur))
            prev = cur
        poly = out
    return np.asarray(poly, dtype=np.float64).reshape(-1, 2)


def frame_polygon(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """``points`` [K, 2] float, checked and clipped for a ``height`` x ``width`` image (module
    docstring). ValueError naming the coordinate when one is not finite or beyond MAX_ABS_COORD."""
    points = np.asarray(points, dtype=np.float64)
    bad = ~np.isfinite(points) | (np.abs(points) > MAX_ABS_COORD)
    if bad.any():
        k = int(np.argwhere(bad)[0][0])
        raise ValueError(f"vertex {k} has coordinates {points[k].tolist()}: coordinates must be finite "
                         f"numbers with |v| <= {MAX_ABS_COORD:g}")
    s = float(max(height, width))
    lo_x, lo_y, hi_x, hi_y = -s, -s, width + s, height + s
    if (points[:, 0] >= lo_x).all() and (points[:, 0] <= hi_x).all() and \
            (points[:, 1] >= lo_y).all() and (points[:, 1] <= hi_y).all():
        return points
    return clip_polygon(points, lo_x, lo_y, hi_x, hi_y)
