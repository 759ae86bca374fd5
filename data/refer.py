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
"""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
from pycocotools import mask as mask_utils

from data.image import load_image
from data.safe_pickle import safe_load
from data.types import BadSampleError, Sample

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def _find_data_dir(root: str, dataset: str) -> str:
    for d in (os.path.join(root, dataset), root):
        if os.path.isfile(os.path.join(d, "instances.json")):
            return d
    raise ValueError(f"no instances.json in {os.path.join(root, dataset)} or {root}")


def _default_image_dir(root: str) -> str:
    for d in (os.path.join(root, "images", "mscoco", "images", "train2014"),
              os.path.join(root, "images", "train2014"), os.path.join(root, "images")):
        if os.path.isdir(d):
            return d
    return os.path.join(root, "images")


def annotation_to_mask(segmentation, height: int, width: int, where: str = "?",
                       sample_id: str = "?") -> np.ndarray:
    """COCO segmentation (polygon list, uncompressed or compressed RLE) -> uint8 0/1 [H, W]."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise BadSampleError(sample_id, where, "empty mask: annotation has no polygon")
        for k, poly in enumerate(segmentation):
            # pycocotools would read a 4-number list as a box: reject short polygons first.
            if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) // 2 if isinstance(poly, (list, tuple)) else "?"
                raise BadSampleError(sample_id, where, f"polygon with fewer than 3 points: "
                                                       f"polygon {k} has {n} points")
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise BadSampleError(sample_id, where, f"mismatched sizes: RLE size "
                                                   f"{segmentation['size']} vs image "
                                                   f"[{height}, {width}]")
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": [height, width],
                   "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
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
            ``root/images/train2014`` or ``root/images``, the first that exists.
    """

    def __init__(self, root: str | os.PathLike, dataset: str = "refcocog",
                 split_by: str | None = None, split: str | None = "val",
                 image_dir: str | os.PathLike | None = None):
        self.root = os.fspath(root)
        self.dataset = dataset
        self.split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "umd")
        self.split = split
        data_dir = _find_data_dir(self.root, dataset)
        self.image_dir = os.fspath(image_dir) if image_dir is not None else _default_image_dir(
            self.root)
        refs_path = os.path.join(data_dir, f"refs({self.split_by}).p")
        if not os.path.isfile(refs_path):
            raise ValueError(f"no refs file {refs_path} (split_by={self.split_by!r})")
        self.refs_path = refs_path
        self.instances_path = os.path.join(data_dir, "instances.json")

        refs = safe_load(refs_path)
        if not isinstance(refs, list):
            raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
        with open(self.instances_path, encoding="utf-8") as f:
            instances = json.load(f)
        self._images = {im["id"]: im for im in instances["images"]}
        self._anns = {a["id"]: a for a in instances["annotations"]}
        self._categories = {c["id"]: c["name"] for c in instances.get("categories", [])}

        splits = Counter(r.get("split") for r in refs)
        if split is not None and split not in splits:
            raise ValueError(f"split {split!r} not in {refs_path}; available: {sorted(splits)}")
        self._items: list[tuple[dict, dict]] = []  # (ref, sentence)
        for ref in refs:
            if split is None or ref.get("split") == split:
                for sent in ref.get("sentences", []):
                    self._items.append((ref, sent))
        self.ids = [f"{ref['ref_id']}_{sent.get('sent_id', k)}"
                    for k, (ref, sent) in enumerate(self._items)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        ref, sent = self._items[index]
        sample_id = self.ids[index]
        ann = self._anns.get(ref.get("ann_id"))
        if ann is None:
            raise BadSampleError(sample_id, self.instances_path,
                                 f"missing key: annotation {ref.get('ann_id')} not in instances")
        info = self._images.get(ref.get("image_id"))
        if info is None:
            raise BadSampleError(sample_id, self.instances_path,
                                 f"missing key: image {ref.get('image_id')} not in instances")
        image_path = os.path.join(self.image_dir, info["file_name"])
        try:
            image = load_image(image_path)
        except ValueError as e:
            raise BadSampleError(sample_id, image_path, f"unreadable image: {e}") from e
        h, w = int(info["height"]), int(info["width"])
        if image.shape[:2] != (h, w):
            raise BadSampleError(sample_id, image_path, f"mismatched sizes: image is "
                                                        f"{image.shape[1]}x{image.shape[0]}, "
                                                        f"instances.json says {w}x{h}")
        mask = annotation_to_mask(ann.get("segmentation"), h, w, self.instances_path, sample_id)
        if not mask.any():
            raise BadSampleError(sample_id, self.instances_path,
                                 f"empty mask: annotation {ann['id']} covers no pixel")
        query = sent.get("sent", sent.get("raw"))
        if query is None:
            raise BadSampleError(sample_id, self.refs_path, "missing key: sentence has no 'sent'")
        return Sample(id=sample_id, image=image, query=str(query), mask=mask, is_sentence=False,
                      meta={"file": image_path, "ref_id": ref["ref_id"], "ann_id": ann["id"],
                            "image_id": info["id"], "split": ref.get("split"),
                            "category": self._categories.get(ann.get("category_id"))})
