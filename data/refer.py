"""RefCOCO / RefCOCO+ / RefCOCOg in the refer format (SPEC.md section 6).

Layout (as distributed with the ``refer`` toolkit)::

    ROOT/refcocog/instances.json        COCO-style {"images", "annotations", "categories"}
    ROOT/refcocog/refs(umd).p           pickled list of refs (refs(unc).p for RefCOCO/RefCOCO+)
    IMAGES/COCO_train2014_000000xxxxxx.jpg   COCO train2014 images (the ``image_dir`` argument)

``ROOT`` may also be the dataset folder itself (the one holding ``instances.json``). A ref is
``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent", "sent_id", ...}], ...}``;
EVERY sentence of every ref in the split is one sample, id ``"{ref_id}_{sent_id}"``, query = the
sentence's ``sent``. The target mask is the ref's COCO annotation, polygons or RLE, decoded with
pycocotools (``frPyObjects`` -> ``merge`` -> ``decode``), uint8 0/1 [H, W].

The refs pickle is an untrusted file: it is read with :func:`data.safe_pickle.safe_load`, which
refuses any pickle that imports code.

Bad input: a refs file or ``instances.json`` that cannot be read at all (a refused or corrupt
pickle, not JSON, not a list of refs, no ``images`` or ``annotations`` list) is one ValueError
naming the file, and so is an image folder that does not exist. Anything wrong with one ref or
one sentence (a ref that is not a dict or has no ``ref_id``, a sentence that is not a dict) or one
annotation (polygons that are not lists of finite numbers, an RLE whose run lengths do not add up
to the image size, a string RLE that is not in COCO's compressed alphabet) is a BadSampleError for
that sample, counted by the caller. A ref
that cannot be read is one sample, id ``refs[K]`` (its position in the refs list), present in
every split since its own split cannot be read.
"""
from __future__ import annotations

import json
import numbers
import os
import pickle
from collections import Counter

import numpy as np
from pycocotools import mask as mask_utils

from data.image import load_image
from data.polygon import frame_polygon
from data.safe_pickle import safe_load
from data.types import BadSampleError, Sample, check_sample, reading_sample

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def _find_data_dir(root: str, dataset: str) -> str:
    for d in (os.path.join(root, dataset), root):
        if os.path.isfile(os.path.join(d, "instances.json")):
            return d
    raise ValueError(f"no instances.json in {os.path.join(root, dataset)} or {root}")


#: Where the COCO train2014 images are looked for under a refer root when no image folder is given.
DEFAULT_IMAGE_SUBDIRS = (os.path.join("images", "mscoco", "images", "train2014"),
                         os.path.join("images", "train2014"), "images")


def resolve_image_dir(root: str, image_dir: str | os.PathLike | None) -> str:
    """The COCO image folder of a refer root: ``image_dir`` when given, else the first of
    :data:`DEFAULT_IMAGE_SUBDIRS` under ``root`` that exists. ValueError naming the folder (and
    the ``--image-dir`` option) when it is not a directory, so that a wrong folder is reported
    once, up front, and not as one unreadable image per sample."""
    if image_dir is not None:
        image_dir = os.fspath(image_dir)
        if not os.path.isdir(image_dir):
            raise ValueError(f"image folder {image_dir} (--image-dir) does not exist or is not a directory; "
                             f"pass the folder of the COCO train2014 images")
        return image_dir
    for sub in DEFAULT_IMAGE_SUBDIRS:
        if os.path.isdir(os.path.join(root, sub)):
            return os.path.join(root, sub)
    raise ValueError(f"no image folder under {root} (looked for "
                     f"{', '.join(os.path.join(root, sub) for sub in DEFAULT_IMAGE_SUBDIRS)}); pass "
                     f"the folder of the COCO train2014 images with --image-dir")


def compressed_rle_counts(counts: bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (the inverse of pycocotools' rleToString:
    6 bits per character from '0', 5 value bits and a continuation bit, the sign in the last
    character, runs after the second stored as differences to the run two before). Used to check
    a string before pycocotools decodes it (it trusts the string). ValueError on a character
    outside the alphabet or a string that ends inside a number."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("the string ends inside a run length")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(counts[p])!r} at {p} is not in the compressed RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)  # sign extension
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _check_runs(runs: list, height: int, width: int) -> None:
    """ValueError unless the run lengths are non-negative integers adding up to height * width
    (pycocotools decodes any list, reading past or short of the mask's memory)."""
    if not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) and r >= 0 for r in runs):
        raise ValueError("run lengths must be non-negative integers")
    if sum(runs) != height * width:
        raise ValueError(f"run lengths add up to {sum(runs)}, not height x width = {height * width}")


def load_coco_image(sample_id: str, image_id, images: dict, image_dir: str,
                    instances_path: str) -> tuple[np.ndarray, str]:
    """(the RGB image [H, W, 3] of ``image_id`` read from ``image_dir``, its path); ``images`` maps
    an image id to its instances.json entry (file_name, height, width). BadSampleError (naming the
    sample and the file) when the entry is missing, the file unreadable, or its size not the
    recorded one."""
    info = images.get(image_id)
    if info is None:
        raise BadSampleError(sample_id, instances_path, f"missing key: image {image_id} not in instances")
    image_path = os.path.join(image_dir, info["file_name"])
    try:
        image = load_image(image_path)
    except ValueError as e:
        raise BadSampleError(sample_id, image_path, f"unreadable image: {e}") from e
    h, w = int(info["height"]), int(info["width"])
    if image.shape[:2] != (h, w):
        raise BadSampleError(sample_id, image_path, f"mismatched sizes: image is {image.shape[1]}x"
                                                    f"{image.shape[0]}, instances.json says {w}x{h}")
    return image, image_path


def annotation_to_mask(segmentation, height: int, width: int, where: str = "?",
                       sample_id: str = "?") -> np.ndarray:
    """COCO segmentation (polygon list, uncompressed or compressed RLE) -> uint8 0/1 [H, W].

    BadSampleError for anything malformed (see the module docstring), checked before pycocotools
    sees it."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise BadSampleError(sample_id, where, "empty mask: annotation has no polygon")
        polygons = []
        for k, poly in enumerate(segmentation):
            # pycocotools would read a 4-number list as a box: reject short polygons first.
            if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) // 2 if isinstance(poly, (list, tuple)) else "?"
                raise BadSampleError(sample_id, where, f"polygon with fewer than 3 points: "
                                                       f"polygon {k} has {n} points")
            if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in poly):
                raise BadSampleError(sample_id, where, f"bad polygon: polygon {k} holds values that are "
                                                       f"not numbers: {poly[:6]!r}")
            try:
                points = frame_polygon(np.asarray(poly, dtype=np.float64).reshape(-1, 2), height, width)
            except ValueError as e:
                raise BadSampleError(sample_id, where, f"bad polygon: polygon {k}: {e}") from e
            if len(points) >= 3:  # else it lies entirely outside the image
                polygons.append(points.reshape(-1).tolist())
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise BadSampleError(sample_id, where, f"mismatched sizes: RLE size "
                                                   f"{segmentation['size']} vs image "
                                                   f"[{height}, {width}]")
        counts = segmentation["counts"]
        try:
            if isinstance(counts, list):  # uncompressed RLE
                _check_runs(counts, height, width)
                rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            elif isinstance(counts, (str, bytes)):
                counts = counts.encode("ascii") if isinstance(counts, str) else counts
                _check_runs(compressed_rle_counts(counts), height, width)
                rle = {"size": [height, width], "counts": counts}
            else:
                raise ValueError(f"counts must be a list or a string, got {type(counts).__name__}")
        except (ValueError, UnicodeEncodeError) as e:
            raise BadSampleError(sample_id, where, f"bad RLE: {e}") from e
    else:
        raise BadSampleError(sample_id, where, f"bad segmentation: {type(segmentation).__name__}")
    m = mask_utils.decode(rle)  # [H, W] (or [H, W, 1]) uint8, Fortran order
    if m.ndim == 3:
        m = m.max(axis=2)
    return np.ascontiguousarray(m, dtype=np.uint8)


class ReferDataset:
    """One split of a refer-format dataset as a SampleSource (one sample per sentence).

    Args:
        root: folder holding ``{dataset}/instances.json`` (or ``instances.json`` itself).
        dataset: "refcoco", "refcoco+" or "refcocog" (the sub-folder name).
        split_by: "umd" / "unc" / "google" (selects ``refs({split_by}).p``); default per dataset.
        split: "train", "val", "test", "testA", "testB"; None = every ref.
        image_dir: the COCO train2014 folder; default ``root/images/mscoco/images/train2014``,
            ``root/images/train2014`` or ``root/images``, the first that exists. A folder that
            does not exist (given, or none of the defaults) is a ValueError naming it
            (:func:`resolve_image_dir`), raised once the annotation files are read.
    """

    def __init__(self, root: str | os.PathLike, dataset: str = "refcocog",
                 split_by: str | None = None, split: str | None = "val",
                 image_dir: str | os.PathLike | None = None):
        self.root = os.fspath(root)
        self.dataset = dataset
        self.split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "umd")
        self.split = split
        data_dir = _find_data_dir(self.root, dataset)
        refs_path = os.path.join(data_dir, f"refs({self.split_by}).p")
        if not os.path.isfile(refs_path):
            raise ValueError(f"no refs file {refs_path} (split_by={self.split_by!r})")
        self.refs_path = refs_path
        self.instances_path = os.path.join(data_dir, "instances.json")

        try:
            refs = safe_load(refs_path)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, OverflowError, MemoryError, RecursionError) as e:  # a corrupt or refused pickle
            raise ValueError(f"{refs_path}: not a readable refs file ({type(e).__name__}: {e})") from None
        if not isinstance(refs, list):
            raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
        try:
            with open(self.instances_path, encoding="utf-8") as f:
                instances = json.load(f)
        except (OSError, ValueError, RecursionError) as e:
            raise ValueError(f"{self.instances_path}: not a readable JSON file: {e}") from None
        for key in ("images", "annotations"):
            if not isinstance(instances, dict) or not isinstance(instances.get(key), list):
                raise ValueError(f"{self.instances_path}: expected an object with an {key!r} list "
                                 f"(COCO instances format)")
        # entries without an id cannot be referred to: a ref naming them is a bad sample
        self._images = {im["id"]: im for im in instances["images"] if isinstance(im, dict) and "id" in im}
        self._anns = {a["id"]: a for a in instances["annotations"] if isinstance(a, dict) and "id" in a}
        categories = instances.get("categories")
        self._categories = {c["id"]: c.get("name") for c in (categories if isinstance(categories, list) else [])
                            if isinstance(c, dict) and "id" in c}

        splits = Counter(r.get("split") for r in refs
                         if isinstance(r, dict) and isinstance(r.get("split"), (str, type(None))))
        if split is not None and split not in splits:
            raise ValueError(f"split {split!r} not in {refs_path}; available: "
                             f"{sorted(map(str, splits))}")
        self.image_dir = resolve_image_dir(self.root, image_dir)
        # (id, ref, sentence, reason the sample cannot be read or None)
        self._items: list[tuple[str, dict | None, dict | None, str | None]] = []
        for k, ref in enumerate(refs):
            if not isinstance(ref, dict) or "ref_id" not in ref:
                what = "has no 'ref_id'" if isinstance(ref, dict) else f"is a {type(ref).__name__}, not a dict"
                if split is None or not isinstance(ref, dict) or ref.get("split") == split:
                    self._items.append((f"refs[{k}]", None, None, f"missing key: ref {k} {what}"))
                continue
            if split is not None and ref.get("split") != split:
                continue
            sentences = ref.get("sentences", [])
            if not isinstance(sentences, list):
                self._items.append((f"{ref['ref_id']}_sentences", ref, None,
                                    f"bad value: 'sentences' of ref {ref['ref_id']} is a "
                                    f"{type(sentences).__name__}, not a list"))
                continue
            for j, sent in enumerate(sentences):
                if isinstance(sent, dict):
                    self._items.append((f"{ref['ref_id']}_{sent.get('sent_id', j)}", ref, sent, None))
                else:
                    self._items.append((f"{ref['ref_id']}_sentence{j}", ref, None,
                                        f"bad value: sentence {j} of ref {ref['ref_id']} is a "
                                        f"{type(sent).__name__}, not a dict"))
        self.ids = [item[0] for item in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        sample_id, ref, sent, reason = self._items[index]
        if reason is not None:
            raise BadSampleError(sample_id, self.refs_path, reason)
        with reading_sample(sample_id, self.instances_path):
            return self._read(sample_id, ref, sent)

    def _read(self, sample_id: str, ref: dict, sent: dict) -> Sample:
        ann = self._anns.get(ref.get("ann_id"))
        if ann is None:
            raise BadSampleError(sample_id, self.instances_path,
                                 f"missing key: annotation {ref.get('ann_id')} not in instances")
        image, image_path = load_coco_image(sample_id, ref.get("image_id"), self._images, self.image_dir,
                                            self.instances_path)
        h, w = image.shape[:2]
        mask = annotation_to_mask(ann.get("segmentation"), h, w, self.instances_path, sample_id)
        if not mask.any():
            raise BadSampleError(sample_id, self.instances_path,
                                 f"empty mask: annotation {ann['id']} covers no pixel")
        query = sent.get("sent", sent.get("raw"))
        if query is None:
            raise BadSampleError(sample_id, self.refs_path, "missing key: sentence has no 'sent'")
        sample = Sample(id=sample_id, image=image, query=query, mask=mask, is_sentence=False,
                        meta={"file": image_path, "ref_id": ref["ref_id"], "ann_id": ann["id"],
                              "image_id": ref["image_id"], "split": ref.get("split"),
                              "category": self._categories.get(ann.get("category_id"))})
        return check_sample(sample, self.refs_path)
