"""Multi-object data (SPEC.md section 9; VisionReasoner, arXiv 2505.12081): ground truth from
instance masks, readers, and synthetic scenes whose queries refer to several shapes or to none.

Ground truth
------------
A multi-object sample's ``solution`` is the LIST of its objects in the 840 frame,
``[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...]`` (``[]`` = no object referred to), the
``solution`` argument of ``rewards.multi_object_accuracy_reward``. From the instance masks
(:func:`objects_from_masks`), per object (SPEC section 9, using section 5's definitions):

    bbox  = [min x, min y, max x, max y] over the instance's pixels
    point = argmax of scipy.ndimage.distance_transform_edt(instance), first in row-major order
            (the interior pixel farthest from the border: section 5's first point)
    both scaled to the 840 frame with v' = int(v * 840 / size + 0.5)

``Sample.mask`` is the UNION of the instance masks (uint8 0/1; all zero for an empty target), the
mask the predicted union is scored against (SPEC section 7; IoU 1 for an empty prediction on an
empty target).

Readers (all :class:`data.types.SampleSource`)
----------------------------------------------
- :class:`MultiObjectParquet`: the authors' ``VisionReasoner_multi_object_*_840`` parquet, read as
  is: columns ``id, problem, solution, image (840 x 840), img_height, img_width`` with ``solution`` a
  JSON list of objects in the 840 frame. No mask; ``Sample.image`` is the 840 image (as for the
  single-object training parquet).
- :class:`GRefDataset`: gRefCOCO in its refer layout, ``ROOT/[grefcoco/]grefs(unc).json`` +
  ``instances.json`` + COCO train2014 images. A ref is ``{"ref_id", "ann_id": [ids], "image_id",
  "split", "sentences": [{"sent", "sent_id", ...}], "no_target": bool}``; a no-target ref has
  ``no_target`` true (its ``ann_id`` is ``[-1]``). Every sentence is one sample, id
  ``"{ref_id}_{sent_id}"``; the objects are the ref's annotations, one per instance.
- :class:`MultiObjectSynthetic`: scenes drawn with ``data.synthetic``'s shapes (see its docstring).
- :class:`SingleAsMultiObject`: any single-object reader (ReasonSeg, LISA folders, RefCOCO,
  the single-object training parquet) seen in multi-object mode: its one target is the one object.

:func:`open_multi_object_dataset` picks the reader for a spec, like ``data.open_dataset``.
"""
from __future__ import annotations

import glob
import json
import os
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq
from scipy.ndimage import distance_transform_edt

from data.ground_truth import scale_to_frame
from data.image import encode_image, resize_to_frame
from data.parquet import (TRAIN_COLUMNS, TRAIN_SCHEMA, AuthorsTrainParquet, _AtomicParquetWriter, _iter_samples,
                          parquet_files)
from data.refer import annotation_to_mask, load_coco_image, resolve_image_dir
from data.synthetic import BACKGROUNDS, COLORS, KINDS, MIN_VISIBLE, MULTI_QUERY_FAMILIES, SIZES, Shape
from data.types import FRAME, BadSampleError, Sample, SampleSource, check_objects_solution

#: Number words of the "the two circles" queries.
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


# ------------------------------------------------------------------------------------ ground truth

def object_from_mask(mask, frame: int = FRAME) -> dict:
    """One instance mask [H, W] (non-zero = object) -> ``{"bbox_2d": [...], "point_2d": [x, y]}``
    in the ``frame`` square (module docstring). ValueError for a non-2-D or empty mask."""
    target = np.asarray(mask)
    if target.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {target.shape}")
    target = target != 0
    ys, xs = np.nonzero(target)
    if ys.size == 0:
        raise ValueError(f"empty instance mask (shape {target.shape}): no pixel to derive an object from")
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    dist = distance_transform_edt(target)  # [H, W]; > 0 exactly on the object
    py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)  # first maximum in row-major order
    h, w = target.shape
    bbox, (point,) = scale_to_frame(bbox, [[int(px), int(py)]], w, h, frame)
    return {"bbox_2d": bbox, "point_2d": point}


def objects_from_masks(masks: Iterable, frame: int = FRAME) -> list[dict]:
    """The solution list of several instance masks (each [H, W], same size), in order."""
    return [object_from_mask(m, frame) for m in masks]


def union_mask(masks: Sequence, shape: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] union of instance masks (all zero for none)."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= np.asarray(m) != 0
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------- parquet

def _solution_list(text, where: str, sample_id: str) -> list[dict]:
    """The parquet's JSON solution string -> validated list of objects; BadSampleError if malformed."""
    try:
        check_objects_solution(text)
    except ValueError as e:
        raise BadSampleError(sample_id, where, f"bad solution: {e}") from e
    return json.loads(text) if isinstance(text, str) else list(text)


def is_multi_object_parquet(path: str | os.PathLike, split: str | None = None) -> bool:
    """True when the first row's ``solution`` of a training-layout parquet is a JSON list."""
    files = parquet_files(path, split)
    columns = set(pq.ParquetFile(files[0]).schema_arrow.names)
    if not set(TRAIN_COLUMNS) <= columns:
        return False
    first = pq.ParquetFile(files[0]).read_row_group(0, columns=["solution"]).column("solution")
    return len(first) > 0 and str(first[0].as_py() or "").lstrip().startswith("[")


class MultiObjectParquet(AuthorsTrainParquet):
    """The authors' multi-object training parquet (one file or a folder) as a SampleSource: the
    columns and checks of the single-object training parquet, with ``solution`` a JSON list of
    objects (SPEC 9) and ``meta["num_objects"]``."""

    @staticmethod
    def _solution(value, where: str, sample_id: str) -> list[dict]:
        return _solution_list(value, where, sample_id)

    def __getitem__(self, index: int) -> Sample:
        sample = super().__getitem__(index)
        sample.meta["num_objects"] = len(sample.solution)
        return sample


def write_multi_object_parquet(source: SampleSource | Iterable[Sample], path: str | os.PathLike,
                               image_format: str = "PNG") -> int:
    """Write samples in the authors' multi-object layout (840 image, problem, JSON solution list,
    img_height, img_width, id), atomically; returns the number of rows. A sample without a
    solution list gets the one-object list of :func:`single_object_solution`."""
    with _AtomicParquetWriter(path, TRAIN_SCHEMA) as w:
        for sample in _iter_samples(source):
            solution = sample.solution if isinstance(sample.solution, list) else single_object_solution(sample)
            w.add({"id": sample.id, "problem": sample.query, "solution": json.dumps(solution),
                   "image": {"bytes": encode_image(resize_to_frame(sample.image), image_format), "path": None},
                   "img_height": sample.height, "img_width": sample.width})
    return w.num_rows


# ---------------------------------------------------------------------------------------- gRefCOCO

def _find_gref_dir(root: str, split_by: str) -> str:
    name = f"grefs({split_by}).json"
    for d in (os.path.join(root, "grefcoco"), root):
        if os.path.isfile(os.path.join(d, name)) and os.path.isfile(os.path.join(d, "instances.json")):
            return d
    raise ValueError(f"no {name} with instances.json in {os.path.join(root, 'grefcoco')} or {root}")


def is_gref_root(root: str | os.PathLike) -> bool:
    """True when ``root`` (or ``root/grefcoco``) holds a ``grefs(*).json``."""
    root = os.fspath(root)
    return any(glob.glob(os.path.join(d, "grefs(*).json")) for d in (root, os.path.join(root, "grefcoco")))


class GRefDataset:
    """One split of gRefCOCO (module docstring) as a SampleSource, one sample per sentence.

    Args:
        root: folder holding ``[grefcoco/]grefs({split_by}).json`` and ``instances.json``.
        split_by: "unc" (gRefCOCO's only one).
        split: "train", "val", "testA", "testB"; None = every ref.
        image_dir: the COCO train2014 folder (default, and ValueError when it does not exist, as
            ``data.refer.ReferDataset``).
    """

    def __init__(self, root: str | os.PathLike, split_by: str = "unc", split: str | None = "val",
                 image_dir: str | os.PathLike | None = None):
        self.root = os.fspath(root)
        data_dir = _find_gref_dir(self.root, split_by)
        self.refs_path = os.path.join(data_dir, f"grefs({split_by}).json")
        self.instances_path = os.path.join(data_dir, "instances.json")
        with open(self.refs_path, encoding="utf-8") as f:
            refs = json.load(f)
        if not isinstance(refs, list):
            raise ValueError(f"{self.refs_path}: expected a list of refs, got {type(refs).__name__}")
        with open(self.instances_path, encoding="utf-8") as f:
            instances = json.load(f)
        self._images = {im["id"]: im for im in instances["images"]}
        self._anns = {a["id"]: a for a in instances["annotations"]}
        splits = Counter(r.get("split") for r in refs)
        if split is not None and split not in splits:
            raise ValueError(f"split {split!r} not in {self.refs_path}; available: {sorted(map(str, splits))}")
        self.image_dir = resolve_image_dir(self.root, image_dir)
        self._items = [(ref, sent) for ref in refs if split is None or ref.get("split") == split
                       for sent in ref.get("sentences", [])]
        self.ids = [f"{ref['ref_id']}_{sent.get('sent_id', k)}" for k, (ref, sent) in enumerate(self._items)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        ref, sent = self._items[index]
        sample_id = self.ids[index]
        image, image_path = load_coco_image(sample_id, ref.get("image_id"), self._images, self.image_dir,
                                            self.instances_path)
        h, w = image.shape[:2]
        ann_ids = ref.get("ann_id")
        ann_ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
        no_target = bool(ref.get("no_target")) or all(a in (-1, None) for a in ann_ids)
        masks = []
        if not no_target:
            for ann_id in ann_ids:
                ann = self._anns.get(ann_id)
                if ann is None:
                    raise BadSampleError(sample_id, self.instances_path,
                                         f"missing key: annotation {ann_id} not in instances")
                m = annotation_to_mask(ann.get("segmentation"), h, w, self.instances_path, sample_id)
                if not m.any():
                    raise BadSampleError(sample_id, self.instances_path,
                                         f"empty mask: annotation {ann_id} covers no pixel")
                masks.append(m)
        query = sent.get("sent", sent.get("raw"))
        if query is None:
            raise BadSampleError(sample_id, self.refs_path, "missing key: sentence has no 'sent'")
        return Sample(id=sample_id, image=image, query=str(query), mask=union_mask(masks, (h, w)),
                      solution=objects_from_masks(masks), is_sentence=False,
                      meta={"file": image_path, "ref_id": ref["ref_id"], "ann_ids": [] if no_target else ann_ids,
                            "image_id": ref["image_id"], "split": ref.get("split"), "no_target": no_target,
                            "num_objects": len(masks)})


# --------------------------------------------------------------------------- single as multi-object

def single_object_solution(sample: Sample) -> list[dict]:
    """The one-object solution list of a single-object sample: from its mask (empty mask -> []),
    else from its single-object solution ``{"bbox", "points"}`` (the first point is the same
    distance-transform maximum, SPEC section 5)."""
    if sample.mask is not None:
        mask = np.asarray(sample.mask)
        return [object_from_mask(mask)] if (mask != 0).any() else []
    if isinstance(sample.solution, dict) and "bbox" in sample.solution and "points" in sample.solution:
        return [{"bbox_2d": list(sample.solution["bbox"]), "point_2d": list(sample.solution["points"][0])}]
    raise ValueError(f"sample {sample.id!r} has neither a mask nor a single-object solution")


class SingleAsMultiObject:
    """A single-object SampleSource whose samples carry the one-object solution list."""

    def __init__(self, source: SampleSource):
        self.source = source
        self.ids = source.ids
        self.has_masks = getattr(source, "has_masks", True)  # as the wrapped reader says

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        sample.solution = single_object_solution(sample)
        sample.meta = {**sample.meta, "num_objects": len(sample.solution)}
        return sample


# -------------------------------------------------------------------------------------- synthetic

def _plural(kind: str) -> str:
    return kind + "s"


def scene_multi_queries(shapes: Sequence[Shape]) -> list[tuple[str, list[int]]]:
    """Every multi-object query of a scene as (text, target indices), targets possibly empty.

    - "every {colour} shape" (all shapes of a colour present in the scene),
    - "every {size} shape" (small / large, when present),
    - "the {two, three, ...} {kind}s" (a kind present 2-6 times) and "the {kind}" (present once),
    - "the {colour} {kind}" for a colour-kind pair absent from the scene: the empty target.
    """
    out: list[tuple[str, list[int]]] = []
    for color in sorted({s.color for s in shapes}):
        out.append((f"every {color} shape", [k for k, s in enumerate(shapes) if s.color == color]))
    for size in sorted({s.size for s in shapes}):
        out.append((f"every {size} shape", [k for k, s in enumerate(shapes) if s.size == size]))
    for kind in sorted({s.kind for s in shapes}):
        idx = [k for k, s in enumerate(shapes) if s.kind == kind]
        if len(idx) == 1:
            out.append((f"the {kind}", idx))
        elif len(idx) in NUMBER_WORDS:
            out.append((f"the {NUMBER_WORDS[len(idx)]} {_plural(kind)}", idx))
    present = {(s.color, s.kind) for s in shapes}
    for color in COLORS:
        for kind in KINDS:
            if (color, kind) not in present:
                out.append((f"the {color} {kind}", []))
    return out


class MultiObjectSynthetic:
    """Synthetic scenes for the multi-object mode (a SampleSource).

    A scene holds ``min_shapes``..``max_shapes`` shapes (``data.synthetic.Shape``) whose colours
    come from a small per-scene palette (2-3 colours) so that colours repeat; each shape keeps at
    least ``data.synthetic.MIN_VISIBLE`` of its pixels visible. The query (:func:`scene_multi_queries`)
    is drawn so that about ``empty_fraction`` of the samples refer to nothing, ``multi_fraction``
    of the others to two or more shapes, the rest to one. Each object is a shape's VISIBLE pixels;
    the solution lists the objects left to right (by box x1, then y1), so that an answer copied from
    it is a function of the scene (the accuracy reward's matching ignores the order).
    ``meta``: ``targets`` (shape indices), ``shapes``, ``family`` ("none", "one", "several"),
    ``num_objects``. Sample ``i`` depends on (seed, i) only.
    """

    def __init__(self, num_samples: int, seed: int = 0, image_size: tuple[int, int] = (224, 224),
                 min_shapes: int = 3, max_shapes: int = 6, empty_fraction: float = 0.2,
                 multi_fraction: float = 0.6):
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if len(image_size) != 2 or min(image_size) < 64:
            raise ValueError(f"image_size must be (H, W) with both sides >= 64, got {image_size}")
        if not 2 <= min_shapes <= max_shapes <= 8:
            raise ValueError(f"need 2 <= min_shapes <= max_shapes <= 8, got {min_shapes}, {max_shapes}")
        for name, value in (("empty_fraction", empty_fraction), ("multi_fraction", multi_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.empty_fraction, self.multi_fraction = float(empty_fraction), float(multi_fraction)
        self.ids = [f"synthetic-multi-{self.seed}-{i}" for i in range(self.num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def _scene(self, rng: np.random.Generator) -> tuple[list[Shape], np.ndarray]:
        """(shapes, label map uint8 [H, W], 0 = background, k + 1 = shape k's visible pixels)."""
        h, w = self.image_size
        palette = list(rng.choice(list(COLORS), size=int(rng.integers(2, 4)), replace=False))
        shapes: list[Shape] = []
        full: list[int] = []
        label = np.zeros((h, w), dtype=np.uint8)
        for _ in range(int(rng.integers(self.min_shapes, self.max_shapes + 1))):
            for _try in range(30):
                size = str(rng.choice(list(SIZES)))
                r = float(rng.uniform(*SIZES[size])) * min(h, w)
                s = Shape(kind=str(rng.choice(KINDS)), color=str(rng.choice(palette)), size=size,
                          cx=float(rng.uniform(r, w - 1 - r)), cy=float(rng.uniform(r, h - 1 - r)),
                          radius=r, angle=float(rng.uniform(0, 2 * np.pi)))
                alone = np.zeros((h, w), dtype=np.uint8)
                s.draw(alone, 1)
                trial = label.copy()
                s.draw(trial, len(shapes) + 1)
                if alone.any() and all((trial == k + 1).sum() >= MIN_VISIBLE * full[k] for k in range(len(shapes))):
                    shapes.append(s)
                    full.append(int(alone.sum()))
                    label = trial
                    break
        return shapes, label

    def __getitem__(self, index: int) -> Sample:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        rng = np.random.default_rng([self.seed, index, 15])
        for _attempt in range(100):
            shapes, label = self._scene(rng)
            if len(shapes) < self.min_shapes:
                continue
            queries = scene_multi_queries(shapes)
            u = rng.random()
            if u < self.empty_fraction:
                pool = [q for q in queries if not q[1]]
            elif rng.random() < self.multi_fraction:
                pool = [q for q in queries if len(q[1]) >= 2]
            else:
                pool = [q for q in queries if len(q[1]) == 1]
            pool = pool or [q for q in queries if q[1]]
            text, targets = pool[int(rng.integers(len(pool)))]
            masks = [label == t + 1 for t in targets]
            solution = objects_from_masks(masks)
            order = sorted(range(len(targets)), key=lambda k: solution[k]["bbox_2d"][:2])  # left to right
            targets, solution = [targets[k] for k in order], [solution[k] for k in order]  # the union ignores it
            image = self._paint(rng, shapes, label)
            family = "none" if not targets else ("one" if len(targets) == 1 else "several")
            return Sample(id=self.ids[index], image=image, query=text, mask=union_mask(masks, label.shape),
                          solution=solution,
                          meta={"targets": targets, "shapes": [s.as_dict() for s in shapes], "family": family,
                                "num_objects": len(targets)})
        raise RuntimeError(f"could not draw a scene for sample {index} (seed {self.seed}) in 100 attempts")

    @staticmethod
    def _paint(rng: np.random.Generator, shapes: Sequence[Shape], label: np.ndarray) -> np.ndarray:
        """uint8 RGB [H, W, 3]: a light background, each shape its colour jittered by +-12."""
        h, w = label.shape
        image = np.empty((h, w, 3), dtype=np.float32)
        image[:] = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.float32)
        for k, s in enumerate(shapes):
            image[label == k + 1] = np.array(COLORS[s.color], dtype=np.float32) + rng.uniform(-12, 12, size=3)
        return np.clip(np.round(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- dispatch

def open_multi_object_dataset(spec: str | os.PathLike, split: str | None = None, *, seed: int = 0,
                              dataset: str = "refcocog", split_by: str | None = None,
                              image_dir: str | os.PathLike | None = None,
                              ignore_regions: str = "exclude") -> SampleSource:
    """A dataset in multi-object mode (every sample's ``solution`` is a list of objects).

        "synthetic[:N][:FAMILY]"                  -> MultiObjectSynthetic(N, seed) (N defaults to 1000;
                                                     FAMILY "mixed" or "present": data.synthetic.
                                                     MULTI_QUERY_FAMILIES)
        folder with [grefcoco/]grefs(*).json       -> GRefDataset(split_by or "unc", split or "val")
        training-layout parquet, JSON-list solution -> MultiObjectParquet
        anything ``data.open_dataset`` reads        -> SingleAsMultiObject(that reader)
    """
    from data.readers import DEFAULT_SYNTHETIC_SIZE, open_dataset, parse_synthetic_spec

    spec_str = os.fspath(spec)
    if (synthetic := parse_synthetic_spec(spec_str, task="multi")) is not None:
        n, family = synthetic
        return MultiObjectSynthetic(DEFAULT_SYNTHETIC_SIZE if n is None else n, seed=seed,
                                    empty_fraction=MULTI_QUERY_FAMILIES[family])
    if os.path.isdir(spec_str) and is_gref_root(spec_str):
        return GRefDataset(spec_str, split_by=split_by or "unc", split=split if split is not None else "val",
                           image_dir=image_dir)
    is_parquet = spec_str.endswith(".parquet") or (
        os.path.isdir(spec_str) and glob.glob(os.path.join(spec_str, "**", "*.parquet"), recursive=True))
    if os.path.exists(spec_str) and is_parquet and is_multi_object_parquet(spec_str, split):
        return MultiObjectParquet(spec_str, split)
    return SingleAsMultiObject(open_dataset(spec_str, split, seed=seed, dataset=dataset, split_by=split_by,
                                            image_dir=image_dir, ignore_regions=ignore_regions))
