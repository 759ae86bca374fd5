"""The evaluation's results on disk: ``predictions.jsonl``, resume, merge, and the metrics table.

What this file implements (SPEC.md section 7)
------------------------------------------------------
Every evaluated sample becomes one JSON line (a :class:`PredictionRecord`). The line holds all that
the metrics need (``intersection``, ``union``, ``status``, ``is_sentence``), so the final table is a
pure function of the file: :func:`table_from_predictions` (``python evaluate.py --recompute DIR``)
gives exactly the numbers the run printed.

Files in ``--output-dir``
-------------------------
- ``predictions.rank{r}.jsonl``: what rank ``r`` produced, appended batch by batch; after each batch
  the file is flushed and fsync'ed (:class:`PredictionWriter`), so a crash loses at most the batch in
  flight. Rank ``r`` evaluates the dataset indices ``r, r + world, r + 2 * world, ...`` (strided,
  so that every rank sees the same mix of easy and hard samples when a dataset is sorted).
- ``predictions.jsonl``: the merged file, written by rank 0 at the end (atomically: temporary file
  then ``os.replace``), one line per sample, ordered by dataset index. The rank files are deleted
  once it is in place. A sample that could not be read (``BadSampleError``) is a line with
  ``status == "bad_sample"`` and the ``reason``: the table counts it, gIoU / cIoU leave it out.

Resume
------
The ids already done are the union of the ids in ``predictions.jsonl`` and in every
``predictions.rank*.jsonl`` (:func:`done_ids`), whatever world size wrote them; the same command
run again skips them. A record counts once its line ends with a newline: whatever follows the last
newline is the remains of a write cut by a crash, which readers ignore (with a warning) and
:func:`truncate_partial_line` cuts off before a writer appends to that file again, so the next
record never lands glued to a torn one and the sample is evaluated again. A corrupt line that ends
with a newline cannot come from an interrupted append: that is a ValueError naming the file and
the line, and so is a record whose fields have the wrong types (:meth:`PredictionRecord.from_dict`).
A bad sample counts as done (a corrupt file stays corrupt; delete its line to retry it).

Masks
-----
The predicted mask is stored as COCO run-length encoding (``pycocotools.mask.encode``, the
compressed ``counts`` string, a few hundred bytes for a typical object), so that the panels of the
first K and worst K samples can be drawn after the run, also after a resume, without running the
models again. The ground-truth mask is not stored (it is in the dataset).
"""
from __future__ import annotations

import glob
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Sequence

import numpy as np

from grpo.tracking import write_atomic

#: ``status`` of a sample whose image / annotation could not be read (BadSampleError).
BAD_SAMPLE = "bad_sample"

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


def rank_file(output_dir: str, rank: int) -> str:
    """Path of rank ``rank``'s own prediction file."""
    return os.path.join(output_dir, f"predictions.rank{rank}.jsonl")


@dataclass
class PredictionRecord:
    """One line of ``predictions.jsonl``.

    Coordinates: ``bbox_840`` / ``points_840`` are what the policy wrote (840 frame, SPEC section 1.3);
    ``bbox`` / ``points`` are the same mapped to the original image (section 1.4), as given to SAM2.
    ``intersection`` / ``union`` are pixel counts with "ignore" pixels excluded (section 7); both are
    None for a bad sample. ``iou`` = I / U, or 1.0 when U = 0, for an answer that parsed
    (``status == "ok"``); 0.0 for one that did not, also when U = 0 (SPEC section 7).
    ``seconds`` = the batch's wall time divided by its size (generation is batched, so per-sample
    time is not observable).
    In the multi-object mode ``bbox_840`` / ``points_840`` / ``bbox`` / ``points`` hold every
    predicted object ([K, 4] / [K, 2] lists, [] for the "nothing here" answer). ``target_area`` and
    ``pred_area`` give the no-target / target accuracies (:mod:`eval.multi_object`).
    """

    index: int
    id: str
    query: str
    status: str
    is_sentence: bool | None = None
    completion: str | None = None
    reasoning: str | None = None
    bbox_840: list | None = None
    points_840: list | None = None
    bbox: list | None = None
    points: list | None = None
    intersection: int | None = None
    union: int | None = None
    iou: float | None = None
    seconds: float = 0.0
    height: int | None = None
    width: int | None = None
    mask_rle: dict | None = field(default=None, repr=False)
    reason: str | None = None
    rank: int = 0
    target_area: int | None = None  # ground-truth target pixels (gt == 1); 0 = empty target
    pred_area: int | None = None  # predicted mask pixels (0 for an unparsed answer)

    @property
    def is_bad(self) -> bool:
        return self.status == BAD_SAMPLE

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "PredictionRecord":
        """A record from one parsed JSON line. ValueError naming the field when a required key is
        missing or a value has the wrong type (:data:`_FIELD_TYPES`), or when a record that is not
        a bad sample lacks ``intersection`` / ``union`` / ``iou`` or has I > U: the metrics and the
        panels read those fields as they are."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = {"index", "id", "query", "status"} - data.keys()
        if missing:
            raise ValueError(f"prediction record lacks {sorted(missing)}: {data!r:.200}")
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            kind, optional = _FIELD_TYPES[key]
            if value is None and optional:
                continue
            if not _is_kind(value, kind) or (kind == "count" and value < 0):
                raise ValueError(f"field {key!r} is {value!r:.80}, expected {_KIND_NAMES[kind]}"
                                 + (" or null" if optional else ""))
        if values["status"] != BAD_SAMPLE:
            absent = [k for k in ("intersection", "union", "iou") if values.get(k) is None]
            if absent:
                raise ValueError(f"record {values['id']!r} with status {values['status']!r} lacks "
                                 f"{absent} (only a {BAD_SAMPLE} record may)")
            if values["intersection"] > values["union"]:
                raise ValueError(f"record {values['id']!r}: intersection {values['intersection']} > "
                                 f"union {values['union']}")
        return cls(**values)


#: JSON type of each field of a record read from a file: (kind, null allowed). Kinds: "count" a
#: non-negative integer, "number" a finite integer or float, "str", "bool", "list", "dict" (JSON
#: true / false are not numbers here).
_FIELD_TYPES = {
    "index": ("count", False), "id": ("str", False), "query": ("str", False), "status": ("str", False),
    "is_sentence": ("bool", True), "completion": ("str", True), "reasoning": ("str", True),
    "bbox_840": ("list", True), "points_840": ("list", True), "bbox": ("list", True), "points": ("list", True),
    "intersection": ("count", True), "union": ("count", True), "iou": ("number", True),
    "seconds": ("number", False), "height": ("count", True), "width": ("count", True),
    "mask_rle": ("dict", True), "reason": ("str", True), "rank": ("count", False),
    "target_area": ("count", True), "pred_area": ("count", True),
}
_KIND_NAMES = {"count": "a non-negative integer", "number": "a finite number", "str": "a string",
               "bool": "true or false", "list": "a list", "dict": "an object"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


# ----------------------------------------------------------------------------------------- masks

def encode_mask(mask: np.ndarray | None) -> dict | None:
    """bool/uint8 mask [H, W] -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE)."""
    if mask is None:
        return None
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict | None, shape: Sequence[int] | None = None) -> np.ndarray | None:
    """Inverse of :func:`encode_mask` -> bool [H, W]; None -> all-False of ``shape`` (or None)."""
    if rle is None:
        return None if shape is None else np.zeros(tuple(shape), dtype=bool)
    from pycocotools import mask as mask_utils

    coco = {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(coco).astype(bool)


# ------------------------------------------------------------------------------- write and read

def truncate_partial_line(path: str) -> int:
    """Cut what follows the last newline of ``path`` (a write cut by a crash); return its bytes."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1  # 0 when there is no complete line at all
        if keep < len(data):
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - keep


class PredictionWriter:
    """Appends records to one jsonl file; :meth:`write_batch` ends with flush + fsync."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        removed = truncate_partial_line(path)
        if removed:
            warnings.warn(f"{path}: dropped a torn last line ({removed} bytes) before appending")
        self._file = open(path, "a", encoding="utf-8")

    def write_batch(self, records: Iterable[PredictionRecord]) -> None:
        self._file.write("".join(r.to_json() + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str) -> list[PredictionRecord]:
    """The records of one jsonl file, every line that ends with a newline (module docstring)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        *lines, torn = f.read().split("\n")
    if torn:
        warnings.warn(f"{path}: ignoring a torn last line ({len(torn)} chars)")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(PredictionRecord.from_dict(json.loads(line)))
        except (ValueError, RecursionError) as err:  # not JSON, not an object, a field of the wrong type
            raise ValueError(f"{path}, line {number}: corrupt prediction record: {err}") from err
    return records


def read_predictions(output_dir_or_file: str) -> list[PredictionRecord]:
    """Every record of a run, merged file and rank files together, one per id, by dataset index.

    ``output_dir_or_file`` is an ``--output-dir`` or one jsonl file. When an id appears twice (a
    rank file and the merged file of an earlier run), the first one read is kept (the merged file
    is read first); the two are results of the same command, so either is correct.
    """
    if os.path.isdir(output_dir_or_file):
        paths = [os.path.join(output_dir_or_file, PREDICTIONS)]
        paths += sorted(glob.glob(os.path.join(output_dir_or_file, "predictions.rank*.jsonl")))
    elif os.path.exists(output_dir_or_file):
        paths = [output_dir_or_file]
    else:
        raise ValueError(f"no predictions at {output_dir_or_file!r}")
    by_id: dict[str, PredictionRecord] = {}
    for path in paths:
        for record in read_records(path):
            by_id.setdefault(record.id, record)
    return sorted(by_id.values(), key=lambda r: (r.index, r.id))


def done_ids(output_dir: str) -> set[str]:
    """Ids with a record in ``output_dir`` (any rank file or the merged file): skipped on resume."""
    if not os.path.isdir(output_dir):
        return set()
    return {r.id for r in read_predictions(output_dir)}


def merge_predictions(output_dir: str) -> list[PredictionRecord]:
    """Rank 0, after every rank is done: rank files + old merged file -> ``predictions.jsonl``.

    The rank files are removed only after the merged file is in place, so an interruption at any
    point loses nothing.
    """
    records = read_predictions(output_dir)
    write_atomic(os.path.join(output_dir, PREDICTIONS), "".join(r.to_json() + "\n" for r in records))
    for path in glob.glob(os.path.join(output_dir, "predictions.rank*.jsonl")):
        os.remove(path)
    return records


# ---------------------------------------------------------------------------------------- table

#: Row names of the table. The query-type rows exist only when the dataset says (ReasonSeg).
ALL, SHORT, SENTENCE = "all", "short query", "sentence query"


def table_from_records(records: Sequence[PredictionRecord]) -> dict[str, dict[str, Any]]:
    """Metrics table (SPEC section 7) from records alone.

    Returns ``{row: {"gIoU", "cIoU", "parse_failure_rate", "num_samples", "num_bad"}}`` with gIoU,
    cIoU and the failure rate in percent (rounded only when printed). Rows: ``"all"``, and
    ``"short query"`` / ``"sentence query"`` when some record has ``is_sentence`` set. A parse
    failure is any status other than "ok"; it enters the metrics as the loop scored it: no mask,
    so I = 0 and U = the target area.
    """
    from eval.metrics import IoUAccumulator

    has_groups = any(r.is_sentence is not None for r in records)
    acc = IoUAccumulator(groups=(SHORT, SENTENCE))
    num_bad = {ALL: 0, SHORT: 0, SENTENCE: 0}
    for r in records:
        group = None if r.is_sentence is None else (SENTENCE if r.is_sentence else SHORT)
        if r.is_bad:
            num_bad[ALL] += 1
            if group is not None:
                num_bad[group] += 1
            continue
        acc.add(r.intersection, r.union, parsed=(r.status == "ok"), group=group)
    rows = {ALL: _row(acc.row(None), num_bad[ALL])}
    if has_groups:
        rows[SHORT] = _row(acc.row(SHORT), num_bad[SHORT])
        rows[SENTENCE] = _row(acc.row(SENTENCE), num_bad[SENTENCE])
    return rows


def _row(row, num_bad: int) -> dict[str, Any]:
    """One table row from an ``eval.metrics.IoURow``: fractions -> percent (NaN when empty)."""
    return {
        "gIoU": 100 * row.giou,
        "cIoU": 100 * row.ciou,
        "parse_failure_rate": 100 * row.parse_failure_rate,
        "num_samples": int(row.count),
        "num_bad": int(num_bad),
    }


def table_from_predictions(path: str, limit: int | None = None) -> dict[str, dict[str, Any]]:
    """The table of a run from its ``--output-dir`` (or one predictions file) alone.

    ``limit``: only the records of the dataset indices below it (as ``evaluate.py --limit`` reports).
    """
    records = read_predictions(path)
    if limit is not None:
        records = [r for r in records if r.index < limit]
    return table_from_records(records)


def format_table(table: dict[str, dict[str, Any]], title: str = "") -> str:
    """Fixed-width text table, percentages with one decimal (SPEC section 7)."""

    def pct(v: float) -> str:
        return "-" if v is None or math.isnan(v) else f"{v:.1f}"

    head = f"{'':<16}{'gIoU':>7}{'cIoU':>7}{'parse fail %':>14}{'samples':>9}{'bad':>6}"
    lines = ([title] if title else []) + [head]
    for name, row in table.items():
        lines.append(
            f"{name:<16}{pct(row['gIoU']):>7}{pct(row['cIoU']):>7}"
            f"{pct(row['parse_failure_rate']):>14}{row['num_samples']:>9}{row['num_bad']:>6}"
        )
    return "\n".join(lines)


def write_metrics(output_dir: str, table: dict, extra: dict | None = None) -> str:
    """``metrics.json`` (atomically): the table (NaN -> null) plus ``extra`` (the run config)."""
    clean = {
        name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for name, row in table.items()
    }
    path = os.path.join(output_dir, METRICS)
    write_atomic(path, json.dumps({"table": clean, **(extra or {})}, indent=2) + "\n")
    return path
