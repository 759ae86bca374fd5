"""ReasonSeg as released by LISA: folders of ``name.jpg`` + ``name.json`` (SPEC.md section 6).

JSON keys: ``text`` (a list of queries; evaluation uses ``text[0]``), ``is_sentence``, and
``shapes = [{"label": ..., "points": [[x, y], ...]}, ...]``. The mask [H, W] uint8 is rasterised
as LISA does:

- labels equal to "flag" are skipped; labels containing "ignore" get value 255; every other label
  (LISA uses "target") gets value 1;
- polygons are drawn largest area first (shoelace area), so a smaller polygon drawn later wins
  where they overlap; each is filled (cv2.fillPoly) and its 1-pixel outline drawn
  (cv2.polylines, closed), so thin polygons still cover their border pixels;
- vertex coordinates are cast to int32 (truncation), as LISA's loader does.

Bad files raise BadSampleError naming the file: no polygon (SPEC: two test files have none),
a polygon with fewer than 3 points or with a non-finite coordinate, a missing key or a value of the
wrong type (``shapes`` not a list, a top level that is not an object), an unreadable or missing
image (a ``name.json`` without its ``name.jpg`` is a sample too, counted as bad).
:meth:`LisaReasonSeg.scan` lists the JSON-level problems without decoding any image. A polygon
reaching far beyond the image is clipped near it first (:func:`data.polygon.frame_polygon`).

:func:`write_lisa_folder` writes any SampleSource with masks in this layout (mask -> polygons with
cv2.findContours, outer contours only: holes in a mask are not representable and are lost).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterable

import cv2
import numpy as np

from data.image import encode_image, load_image
from data.polygon import frame_polygon
from data.types import BadSampleError, Sample, SampleSource, check_sample, check_text, reading_sample

IGNORE = 255


def _polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a polygon [K, 2]."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygons_to_mask(shapes: list, height: int, width: int, where: str = "?",
                     sample_id: str = "?") -> np.ndarray:
    """LISA shapes -> uint8 mask [H, W] (0 background, 1 target, 255 ignore)."""
    if not isinstance(shapes, list):
        raise BadSampleError(sample_id, where, f"bad value: 'shapes' must be a list, got "
                                               f"{type(shapes).__name__}")
    polygons = []  # (area, value, int32 points [K, 2])
    num_found = 0  # target and ignore polygons, including those entirely outside the image
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or "points" not in shape or "label" not in shape:
            raise BadSampleError(sample_id, where, f"missing key: shape {k} needs 'label' and "
                                                   f"'points'")
        label = str(shape["label"])
        if label == "flag":
            continue
        try:
            pts = np.asarray(shape["points"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise BadSampleError(sample_id, where, f"bad polygon: shape {k}: {e}") from e
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise BadSampleError(sample_id, where, f"polygon with fewer than 3 points: shape {k} "
                                                   f"({label!r}) has points of shape {pts.shape}")
        value = IGNORE if "ignore" in label else 1
        try:
            pts = frame_polygon(pts, height, width)
        except ValueError as e:
            raise BadSampleError(sample_id, where, f"bad polygon: shape {k} ({label!r}): {e}") from e
        num_found += 1
        if len(pts):  # else entirely outside the image: nothing to draw
            polygons.append((_polygon_area(pts), value, pts.astype(np.int32)))
    if not num_found:
        raise BadSampleError(sample_id, where,
                             "no polygons: the file has no target or ignore shape")
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, value, pts in sorted(polygons, key=lambda t: -t[0]):  # largest area first (stable)
        cv2.polylines(mask, [pts], isClosed=True, color=value, thickness=1)
        cv2.fillPoly(mask, [pts], color=value)
    return mask


def _read_json(path: str, sample_id: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise BadSampleError(sample_id, path, f"unreadable json: {e}") from e
    if not isinstance(meta, dict):
        raise BadSampleError(sample_id, path, f"bad value: the top level must be an object, got "
                                              f"{type(meta).__name__}")
    for key in ("text", "shapes"):
        if key not in meta:
            raise BadSampleError(sample_id, path, f"missing key: {key!r}")
    return meta


def _first_text(meta: dict, path: str, sample_id: str) -> str:
    text = meta["text"]
    if isinstance(text, list):
        if not text:
            raise BadSampleError(sample_id, path, "missing key: 'text' is an empty list")
        text = text[0]
    try:
        return check_text(text, "'text'")
    except ValueError as e:
        raise BadSampleError(sample_id, path, f"bad query: {e}") from None


class LisaReasonSeg:
    """A LISA ReasonSeg folder (e.g. ``ReasonSeg/val``) as a SampleSource; ids are file stems."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise ValueError(f"no such LISA ReasonSeg folder: {self.folder}")
        annotations = sorted(glob.glob(os.path.join(self.folder, "*.json")))
        # every name.json is a sample; one whose name.jpg is missing is a bad one
        self._pairs = [(os.path.splitext(p)[0] + ".jpg", p) for p in annotations]
        if not any(os.path.isfile(image) for image, _ in self._pairs):
            raise ValueError(f"no name.jpg + name.json pairs in {self.folder}")
        self.ids = [os.path.splitext(os.path.basename(p))[0] for _, p in self._pairs]

    def __len__(self) -> int:
        return len(self._pairs)

    def scan(self) -> list[BadSampleError]:
        """JSON-level problems of every file (no polygon, short polygon, missing key), without
        decoding images."""
        bad = []
        for sample_id, (image_path, json_path) in zip(self.ids, self._pairs):
            try:
                with reading_sample(sample_id, json_path):
                    if not os.path.isfile(image_path):
                        raise BadSampleError(sample_id, image_path, "missing image: no such file")
                    meta = _read_json(json_path, sample_id)
                    _first_text(meta, json_path, sample_id)
                    polygons_to_mask(meta["shapes"], 1, 1, json_path, sample_id)
            except BadSampleError as e:
                bad.append(e)
        return bad

    def __getitem__(self, index: int) -> Sample:
        image_path, json_path = self._pairs[index]
        sample_id = self.ids[index]
        with reading_sample(sample_id, json_path):
            meta = _read_json(json_path, sample_id)
            query = _first_text(meta, json_path, sample_id)
            if not os.path.isfile(image_path):
                raise BadSampleError(sample_id, image_path, "missing image: no such file")
            try:
                image = load_image(image_path)
            except ValueError as e:
                raise BadSampleError(sample_id, image_path, f"unreadable image: {e}") from e
            h, w = image.shape[:2]
            mask = polygons_to_mask(meta["shapes"], h, w, json_path, sample_id)
            is_sentence = meta.get("is_sentence")
            sample = Sample(id=sample_id, image=image, query=query, mask=mask,
                            is_sentence=None if is_sentence is None else bool(is_sentence),
                            meta={"file": image_path, "json": json_path,
                                  "texts": meta["text"] if isinstance(meta["text"], list) else None})
        return check_sample(sample, json_path)


def mask_to_shapes(mask: np.ndarray) -> list[dict]:
    """uint8 mask (1 target, 255 ignore) -> LISA shapes via cv2.findContours (outer contours)."""
    mask = np.asarray(mask)
    shapes = []
    for value, label in ((1, "target"), (IGNORE, "ignore")):
        region = (mask == value).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            pts = c.reshape(-1, 2).tolist()  # [K, 1, 2] -> [K, 2] (x, y)
            while len(pts) < 3:  # a 1- or 2-pixel blob: repeat a vertex to make a polygon
                pts.append(pts[-1])
            shapes.append({"label": label, "points": pts, "shape_type": "polygon"})
    return shapes


def write_lisa_folder(source: SampleSource | Iterable[Sample], folder: str | os.PathLike,
                      jpeg_quality: int = 95) -> int:
    """Write samples with masks as LISA ``name.jpg`` + ``name.json`` pairs; returns the count.
    File names are the sample ids with '/' replaced by '_'."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    n = 0
    samples = (source[i] for i in range(len(source))) if hasattr(source, "__getitem__") else source
    for sample in samples:
        if sample.mask is None:
            raise ValueError(f"sample {sample.id!r} has no mask to write")
        name = sample.id.replace("/", "_").replace(os.sep, "_")
        with open(os.path.join(folder, name + ".jpg"), "wb") as f:
            f.write(encode_image(sample.image, "JPEG", quality=jpeg_quality))
        meta = {"text": [sample.query], "is_sentence": bool(sample.is_sentence),
                "shapes": mask_to_shapes(sample.mask)}
        with open(os.path.join(folder, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
        n += 1
    return n
