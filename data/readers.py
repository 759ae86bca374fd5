"""``open_dataset``: one entry point that picks the reader for what a user points at (SPEC.md
section 6).

    "synthetic[:N][:FAMILY]"           -> SyntheticDataset(N, seed) (N defaults to 1000) of the query
                                          family referring, reasoning or mixed (the default)
    FILE.parquet | folder of parquet   -> AuthorsTrainParquet (columns problem, solution, image)
                                          or ReasonSegParquet (columns image, text, mask)
    folder of name.jpg + name.json     -> LisaReasonSeg (FOLDER/split when it exists), with the
                                          ignore-region protocol ``ignore_regions``
    folder with [dataset/]instances.json -> ReferDataset(dataset, split_by, split)

Anything else is a ValueError naming the path. So is a split that a folder does not hold: a
LISA parent folder (``ReasonSeg`` holding ``train/ val/ test/``) without ``split``, or without a
sub-folder ``split`` (the error lists the sub-folders there); a LISA folder given itself
(``ReasonSeg/val``) with a ``split`` other than its own name; a refer root without the folder of
``dataset`` (the error names the folder looked for and the refer datasets there).
"""
from __future__ import annotations

import glob
import os

from data.lisa import LisaReasonSeg, check_ignore_regions
from data.parquet import (REASONSEG_COLUMNS, TRAIN_COLUMNS, AuthorsTrainParquet, ReasonSegParquet,
                          open_parquet, parquet_files)
from data.refer import ReferDataset
from data.synthetic import MULTI_QUERY_FAMILIES, QUERY_FAMILIES, SyntheticDataset
from data.types import SampleSource

DEFAULT_SYNTHETIC_SIZE = 1000


def parse_synthetic_spec(spec: str, task: str | None = None) -> tuple[int | None, str] | None:
    """"synthetic[:N][:FAMILY]" -> (N or None, FAMILY, default "mixed"); None when ``spec`` does not
    name the synthetic set; ValueError when it does but is malformed. E.g. "synthetic:64:reasoning"
    -> (64, "reasoning"), "synthetic::referring" or "synthetic:referring" -> (None, "referring").
    FAMILY is a single-object family (QUERY_FAMILIES) or a multi-object one (MULTI_QUERY_FAMILIES,
    "present"); with ``task`` "single" or "multi" a family of the other mode is a ValueError."""
    parts = spec.split(":")
    if parts[0] != "synthetic":
        return None
    n, family = None, None
    rest = [p for p in parts[1:] if p != ""]
    if len(parts) > 3:
        raise ValueError(f"bad synthetic spec {spec!r}: expected 'synthetic[:N][:FAMILY]'")
    for part in rest:
        if (part in QUERY_FAMILIES or part in MULTI_QUERY_FAMILIES) and family is None:
            family = part
        elif part.isdigit() and n is None:
            n = int(part)
        else:
            raise ValueError(f"bad synthetic spec {spec!r}: {part!r} is neither a sample count N nor a "
                             f"query family ({', '.join(QUERY_FAMILIES | MULTI_QUERY_FAMILIES)}); expected "
                             "'synthetic[:N][:FAMILY]'")
    family = family or "mixed"
    if task is not None:
        families, other = (MULTI_QUERY_FAMILIES, "single") if task == "multi" else (QUERY_FAMILIES, "multi")
        if family not in families:
            raise ValueError(f"synthetic spec {spec!r}: {family!r} is a {other}-object query family, not a "
                             f"{task}-object one (--task {task}); use one of {', '.join(families)}")
    return n, family


def _is_lisa_folder(folder: str) -> bool:
    return any(os.path.isfile(os.path.splitext(p)[0] + ".json")
               for p in glob.glob(os.path.join(folder, "*.jpg")))


def _subfolders(folder: str) -> list[str]:
    """The names of the sub-folders of ``folder``, sorted."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _check_split_folders(folder: str, split: str | None) -> None:
    """ValueError when ``folder`` is a LISA folder or a parent of LISA split folders that does not
    hold ``split`` (module docstring); nothing for any other folder."""
    if _is_lisa_folder(folder):
        name = os.path.basename(os.path.normpath(folder))
        if split is not None and name != split:
            raise ValueError(f"split {split!r} (--split) but {folder} is a LISA folder of split {name!r} "
                             f"itself; pass its parent folder with --split {split}, or this folder "
                             f"without --split")
        return
    lisa_splits = [d for d in _subfolders(folder) if _is_lisa_folder(os.path.join(folder, d))]
    if not lisa_splits:
        return
    if split is None:
        raise ValueError(f"{folder} holds the LISA split folders {', '.join(lisa_splits)}: give the split "
                         f"(--split) or one of those folders as the path")
    if split not in lisa_splits:
        sub = os.path.join(folder, split)
        what = ("holds no name.jpg + name.json pairs" if os.path.isdir(sub) else "does not exist")
        raise ValueError(f"split {split!r} (--split): {sub} {what}; the LISA split folders in {folder} "
                         f"are {', '.join(lisa_splits)}")


def _check_refer_dataset(folder: str, dataset: str) -> None:
    """ValueError when ``folder`` is a refer root whose sub-folders hold ``instances.json`` but
    none is named ``dataset``: names the folder looked for and the refer datasets there."""
    found = [d for d in _subfolders(folder) if os.path.isfile(os.path.join(folder, d, "instances.json"))]
    if found:
        raise ValueError(f"refer dataset {dataset!r} (--refer-dataset): no "
                         f"{os.path.join(folder, dataset, 'instances.json')}; the refer datasets in {folder} "
                         f"are {', '.join(found)}")


def open_dataset(spec: str | os.PathLike, split: str | None = None, *, seed: int = 0,
                 dataset: str = "refcocog", split_by: str | None = None,
                 image_dir: str | os.PathLike | None = None,
                 ignore_regions: str = "exclude") -> SampleSource:
    """Open a dataset by name or path (see the module docstring).

    Args:
        spec: "synthetic[:N][:FAMILY]" (see :func:`parse_synthetic_spec`) or a path.
        split: parquet: keep files named ``{split}*`` / under ``{split}/``; LISA: the
            sub-folder ``split`` of a parent folder (required there), or the name of the LISA
            folder given itself (optional); refer: the refs split (default "val").
        seed: synthetic dataset seed.
        dataset, split_by, image_dir: refer format only (see ReferDataset).
        ignore_regions: LISA folders only: "exclude" (LISA's evaluation: ignore regions stay 255
            and are left out of I and U) or "as-target" (ignore regions are target, as in the
            Seg-Zero authors' ReasonSeg conversion); see :mod:`data.lisa`. The other formats carry
            no ignore label (the authors' parquet already counts ignore regions as target) and
            are read as they are; the value is checked whatever the format.
    """
    check_ignore_regions(ignore_regions)
    spec_str = os.fspath(spec)
    if (synthetic := parse_synthetic_spec(spec_str, task="single")) is not None:
        n, family = synthetic
        return SyntheticDataset(DEFAULT_SYNTHETIC_SIZE if n is None else n, seed=seed,
                                reasoning_fraction=QUERY_FAMILIES[family])
    if not os.path.exists(spec_str):
        raise ValueError(f"unknown dataset {spec_str!r}: not 'synthetic[:N][:FAMILY]' and no such path")

    if os.path.isdir(spec_str):
        if os.path.isfile(os.path.join(spec_str, "instances.json")) or os.path.isfile(
                os.path.join(spec_str, dataset, "instances.json")):
            return ReferDataset(spec_str, dataset=dataset, split_by=split_by,
                                split=split if split is not None else "val", image_dir=image_dir)
        _check_refer_dataset(spec_str, dataset)
        sub = os.path.join(spec_str, split) if split is not None else None
        if sub is not None and os.path.isdir(sub) and _is_lisa_folder(sub):
            return LisaReasonSeg(sub, ignore_regions=ignore_regions)
        _check_split_folders(spec_str, split)
        if _is_lisa_folder(spec_str):
            return LisaReasonSeg(spec_str, ignore_regions=ignore_regions)
        if not glob.glob(os.path.join(spec_str, "**", "*.parquet"), recursive=True):
            where = ""
            if split is not None:
                subs = _subfolders(spec_str)
                where = (f" (split {split!r} (--split): {sub} is not a folder of name.jpg + name.json pairs "
                         f"either; sub-folders there: {', '.join(subs) if subs else 'none'})")
            raise ValueError(f"unknown dataset format in {spec_str}: no parquet files, no "
                             f"name.jpg + name.json pairs, no instances.json{where}")
    elif not spec_str.endswith(".parquet"):
        raise ValueError(f"unknown dataset file {spec_str!r}: expected a .parquet file")

    files = parquet_files(spec_str, split)
    columns = set(open_parquet(files[0]).schema_arrow.names)
    if set(TRAIN_COLUMNS) <= columns:
        return AuthorsTrainParquet(spec_str, split)
    if set(REASONSEG_COLUMNS) <= columns:
        return ReasonSegParquet(spec_str, split)
    raise ValueError(f"unknown parquet layout in {files[0]}: columns {sorted(columns)}; expected "
                     f"{list(TRAIN_COLUMNS)} (training) or {list(REASONSEG_COLUMNS)} (ReasonSeg)")
