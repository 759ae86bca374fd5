"""ReasonSeg as released by LISA: folders of ``name.jpg`` + ``name.json`` (SPEC.md section 6).

JSON keys: ``text`` (a list of queries; evaluation uses ``text[0]``), ``is_sentence``, and
``shapes = [{"label": ..., "points": [[x, y], ...]}, ...]``.

Ground truth: :func:`polygons_to_mask` rasterises the shapes into a uint8 mask [H, W] with the
rule of LISA's ``get_mask_from_json`` (utils/data_processing.py of the LISA repository; the
Seg-Zero authors' ReasonSeg conversion calls the same function): 0 background, 1 target, 255
ignore. A file with no polygon left once "flag" shapes are skipped has an all-zero mask: an EMPTY
TARGET, a valid evaluation sample (IoU 1 for an empty prediction, SPEC section 7). Training cannot
derive a box from it, so the trainer reports and skips it (``train.read_sample``).

Ignore regions, two protocols (``ignore_regions``, :data:`IGNORE_REGION_PROTOCOLS`):

- ``"exclude"`` (default): the mask keeps 255 for ignore pixels, which the metrics leave out of
  intersection and union -- LISA's evaluation, the protocol of LISA's ReasonSeg tables.
- ``"as-target"``: every non-zero pixel becomes 1, i.e. ignore regions count as target -- what the
  Seg-Zero authors' ReasonSeg parquet holds (their conversion casts LISA's mask to bool), the
  protocol of the Seg-Zero paper's ReasonSeg numbers.

Bad files raise BadSampleError naming the file: a polygon with fewer than 3 points or with
non-finite coordinates, a missing key or a value of the wrong type (``shapes`` not a list, a top
level that is not an object, an ``is_sentence`` that is not a flag: a bool, 0 / 1, or the string
"true" / "false" / "1" / "0"), unreadable JSON, an unreadable or missing image (a ``name.json``
without its ``name.jpg`` is a sample too, counted as bad). :meth:`LisaReasonSeg.scan` lists the
JSON-level problems without decoding any image. A polygon reaching far beyond the image is
clipped near it before rasterisation (:func:`data.polygon.frame_polygon`; real annotations are
never that far out, so they are drawn exactly as LISA draws them).

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

#: How a LISA folder's ignore regions enter the ground truth (module docstring).
IGNORE_REGION_PROTOCOLS = ("exclude", "as-target")

#: Coordinates are cast to int32 for OpenCV; larger magnitudes are refused instead of wrapping.
_INT32_LIMIT = 2 ** 31 - 1


def check_ignore_regions(ignore_regions: str) -> str:
    """``ignore_regions`` if it names a protocol of :data:`IGNORE_REGION_PROTOCOLS`, else ValueError."""
    if ignore_regions not in IGNORE_REGION_PROTOCOLS:
        raise ValueError(f"ignore_regions must be one of {list(IGNORE_REGION_PROTOCOLS)}, "
                         f"got {ignore_regions!r}")
    return ignore_regions


def apply_ignore_regions(mask: np.ndarray, ignore_regions: str) -> np.ndarray:
    """A 0 / 1 / 255 mask under an ignore-region protocol: ``"exclude"`` returns it unchanged,
    ``"as-target"`` returns ``(mask != 0)`` as uint8 (ignore pixels become target)."""
    if check_ignore_regions(ignore_regions) == "exclude":
        return mask
    return (np.asarray(mask) != 0).astype(np.uint8)


def _polygon_points(shape, k: int, height: int, width: int) -> np.ndarray:
    """The vertices of shape ``k`` as int32 [K, 2] (x, y), truncated toward zero as
    ``np.array(points, dtype=np.int32)`` does in LISA's loader, after clipping a polygon that
    reaches far beyond the ``height`` x ``width`` image (:func:`data.polygon.frame_polygon`; K may
    then be 0: nothing of it is near the image); ValueError on bad points."""
    try:
        pts = np.asarray(shape["points"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad polygon: shape {k}: points are not numbers: {e}") from e
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError(f"polygon with fewer than 3 points: shape {k} ({shape['label']!r}) has "
                         f"points of shape {pts.shape}, expected [K >= 3, 2]")
    if not np.isfinite(pts).all() or (np.abs(pts) > _INT32_LIMIT).any():
        raise ValueError(f"bad polygon: shape {k} ({shape['label']!r}) has a coordinate that is "
                         f"not finite or does not fit int32: {pts.tolist()}")
    return frame_polygon(pts, height, width).astype(np.int32)  # [K, 2], truncation toward zero


def _draw(canvas: np.ndarray, pts: np.ndarray, value: int) -> None:
    """Closed 1-pixel outline, then the filled interior, both with ``value`` (LISA's order)."""
    cv2.polylines(canvas, [pts], isClosed=True, color=value, thickness=1)
    cv2.fillPoly(canvas, [pts], color=value)


def polygons_to_mask(shapes: list, height: int, width: int) -> np.ndarray:
    """LISA shapes -> uint8 mask [H, W]: 0 background, 1 target, 255 ignore.

    The rule of LISA's ``get_mask_from_json`` (utils/data_processing.py in the LISA repository):

    1. Labels are compared lower-cased. A shape whose label equals "flag" is skipped; a label that
       contains "ignore" gives 255; any other label gives 1.
    2. Vertices are cast to int32 (truncation toward zero). (Before that, a polygon reaching more
       than one image size beyond the image is clipped to that margin, which LISA does not do: it
       changes nothing inside the image, and spares OpenCV coordinates it cannot handle.)
    3. Each remaining polygon's RASTERISED area is the number of pixels of the image it covers when
       drawn alone (closed 1-pixel outline plus fill): pixels outside the image do not count, and
       a thin or degenerate polygon counts its outline, so this ranking can differ from the
       shoelace area's.
    4. Polygons are drawn in the order ``argsort(areas)[::-1]``: largest raster area first, so a
       smaller polygon drawn later wins where they overlap. Ties follow numpy's classic
       (non-SIMD) introsort, the order LISA's numpy produced: for up to 16 polygons it is stable,
       so among equal areas the shape listed LAST is drawn first and the one listed first ends on
       top. The sort runs on an object array, which numpy always sorts with that generic
       algorithm; newer numpy builds sort int64 arrays with SIMD kernels on AVX2 / AVX-512 CPUs
       that order ties differently, which would make the ground truth depend on the machine.
    5. Each polygon is drawn as its closed 1-pixel outline (cv2.polylines) then filled
       (cv2.fillPoly) with its value.

    A list with no polygon once "flag" shapes are skipped gives an all-zero mask (an empty target).

    Args:
        shapes: ``[{"label": str, "points": [[x, y], ...]}, ...]`` (extra keys are ignored).
        height, width: size of the image, in pixels.

    Raises:
        ValueError: a size that is not a positive integer, ``shapes`` that is not a list, a shape
            without "label" / "points", a label that is not a string, a polygon with fewer than
            3 points, or a coordinate that is not finite or does not fit int32.
    """
    for size in (height, width):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"height and width must be positive integers, got height={height!r}, "
                             f"width={width!r}")
    if not isinstance(shapes, list):
        raise ValueError(f"bad shapes: 'shapes' must be a list of shapes, got "
                         f"{type(shapes).__name__}")
    polygons = []  # (value, int32 points [K, 2]) in file order
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or "points" not in shape or "label" not in shape:
            raise ValueError(f"missing key: shape {k} needs 'label' and 'points'")
        if not isinstance(shape["label"], str):
            raise ValueError(f"bad label: shape {k} has label {shape['label']!r}, expected a string")
        label = shape["label"].lower()
        if label == "flag":
            continue
        pts = _polygon_points(shape, k, height, width)
        if len(pts):  # else entirely outside the image: nothing to draw
            polygons.append((IGNORE if "ignore" in label else 1, pts))

    canvas = np.zeros((height, width), dtype=np.uint8)  # [H, W], one polygon at a time
    areas = []
    for _, pts in polygons:
        canvas[:] = 0
        _draw(canvas, pts, 1)
        areas.append(int(np.count_nonzero(canvas)))
    order = np.argsort(np.array(areas, dtype=object))[::-1]  # largest first; ties: see step 4

    mask = canvas
    mask[:] = 0
    for i in order:
        value, pts = polygons[int(i)]
        _draw(mask, pts, value)
    return mask


def _read_json(path: str, sample_id: str) -> dict:
    """The JSON of one file. UTF-8, with LISA's fallback: a file that is not valid UTF-8 is read
    as cp1252 (get_mask_from_json retries that encoding)."""
    try:
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except UnicodeDecodeError:
            with open(path, encoding="cp1252") as f:
                meta = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise BadSampleError(sample_id, path, f"unreadable json: {e}") from e
    if not isinstance(meta, dict):
        raise BadSampleError(sample_id, path, f"unreadable json: expected an object, got "
                                              f"{type(meta).__name__}")
    for key in ("text", "shapes"):
        if key not in meta:
            raise BadSampleError(sample_id, path, f"missing key: {key!r}")
    return meta


#: The values of ``is_sentence`` read as a flag (strings compared lower-cased, spaces stripped).
_FLAG_VALUES = {"true": True, "false": False, "1": True, "0": False}


def _is_sentence(meta: dict, path: str, sample_id: str) -> bool | None:
    """``is_sentence`` of a file: None when absent or null; a bool, the integer 0 / 1 or the string
    "true" / "false" / "1" / "0" (any case) as a bool; anything else is a BadSampleError naming
    the file (``bool("false")`` would be True)."""
    value = meta.get("is_sentence")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _FLAG_VALUES:
        return _FLAG_VALUES[value.strip().lower()]
    raise BadSampleError(sample_id, path, f"bad value: 'is_sentence' is {value!r}, expected true or false")


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
    """A LISA ReasonSeg folder (e.g. ``ReasonSeg/val``) as a SampleSource; ids are file stems.

    Args:
        folder: a folder of ``name.jpg`` + ``name.json`` pairs.
        ignore_regions: ``"exclude"`` (masks keep 255 for ignore regions: LISA's evaluation) or
            ``"as-target"`` (ignore regions become target: the Seg-Zero authors' ReasonSeg
            conversion); see the module docstring.
    """

    def __init__(self, folder: str | os.PathLike, ignore_regions: str = "exclude"):
        self.folder = os.fspath(folder)
        self.ignore_regions = check_ignore_regions(ignore_regions)
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
        """JSON-level problems of every file (short or non-finite polygon, missing key, a value of
        the wrong type, unreadable JSON), without decoding images. An all-"flag" file is not a problem: it is an
        empty target."""
        bad = []
        for sample_id, (image_path, json_path) in zip(self.ids, self._pairs):
            try:
                with reading_sample(sample_id, json_path):
                    if not os.path.isfile(image_path):
                        raise BadSampleError(sample_id, image_path, "missing image: no such file")
                    meta = _read_json(json_path, sample_id)
                    _first_text(meta, json_path, sample_id)
                    _is_sentence(meta, json_path, sample_id)
                    _mask_of(meta, 1, 1, json_path, sample_id)
            except BadSampleError as e:
                bad.append(e)
        return bad

    def __getitem__(self, index: int) -> Sample:
        image_path, json_path = self._pairs[index]
        sample_id = self.ids[index]
        with reading_sample(sample_id, json_path):
            meta = _read_json(json_path, sample_id)
            query = _first_text(meta, json_path, sample_id)
            is_sentence = _is_sentence(meta, json_path, sample_id)
            if not os.path.isfile(image_path):
                raise BadSampleError(sample_id, image_path, "missing image: no such file")
            try:
                image = load_image(image_path)
            except ValueError as e:
                raise BadSampleError(sample_id, image_path, f"unreadable image: {e}") from e
            h, w = image.shape[:2]
            mask = apply_ignore_regions(_mask_of(meta, h, w, json_path, sample_id), self.ignore_regions)
            sample = Sample(id=sample_id, image=image, query=query, mask=mask, is_sentence=is_sentence,
                            meta={"file": image_path, "json": json_path,
                                  "texts": meta["text"] if isinstance(meta["text"], list) else None,
                                  "ignore_regions": self.ignore_regions})
        return check_sample(sample, json_path)


def _mask_of(meta: dict, height: int, width: int, path: str, sample_id: str) -> np.ndarray:
    """polygons_to_mask of a file's shapes; its ValueError becomes a BadSampleError naming the file."""
    try:
        return polygons_to_mask(meta["shapes"], height, width)
    except ValueError as e:
        raise BadSampleError(sample_id, path, str(e)) from e


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
