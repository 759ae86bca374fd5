"""Readers and writers for the authors' parquet datasets (SPEC.md section 6).

Two layouts, both as written by Hugging Face ``datasets`` (an ``Image`` feature is stored as a
struct ``{bytes: binary, path: string}``; raw ``bytes`` columns are accepted too):

- training sets (e.g. refCOCOg_9k_840), :class:`AuthorsTrainParquet`:
  ``id, problem, solution, image (840 x 840), img_height, img_width``; ``problem`` is the query and
  ``solution`` the string of :mod:`data.solution` in the 840 frame. These files keep no original
  image, so ``Sample.image`` is the 840 x 840 image; ``meta["frame"] = 840`` and
  ``meta["original_size"] = (img_width, img_height)`` say so.
- ReasonSeg val / test, :class:`ReasonSegParquet`:
  ``image, text, mask (bool H x W), image_id, ann_id, img_height, img_width``. ``mask`` is a
  nested list (list<list<bool>>) in the HF layout; numpy arrays and encoded mask images are
  accepted too. In this conversion LISA's "ignore" regions count as target (SPEC section 6), so
  ``Sample.mask`` is 0 / 1 only.

Files are read one row group at a time (the last one is cached), so a 9,000-image training set
is never decoded whole; ``ids`` come from the id columns only.

Bad input: a file that is not parquet, or lacks a column, is one ValueError naming the file. A row
whose values are wrong (``img_height`` that is not a positive integer, a query that is not text, a
solution whose box is not ordered or leaves the 840 frame, a mask of another size than the image)
is a BadSampleError for that row (:func:`data.types.check_sample`).
"""
from __future__ import annotations

import glob
import json
import numbers
import os
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.ground_truth import solution_from_mask
from data.image import encode_image, load_image, resize_to_frame
from data.solution import format_solution, parse_solution
from data.types import FRAME, BadSampleError, Sample, SampleSource, check_sample, check_text, reading_sample

TRAIN_COLUMNS = ("id", "problem", "solution", "image", "img_height", "img_width")
REASONSEG_COLUMNS = ("image", "text", "mask", "image_id", "ann_id", "img_height", "img_width")


def open_parquet(path: str) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``; ValueError naming the file when it is not a readable parquet file."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None


#: Split names recognised in the HF parquet layouts (a file name's prefix before "-", or a folder).
SPLIT_NAMES = ("train", "validation", "val", "test", "testA", "testB")


def _split_of(relpath: str) -> str | None:
    """The split a parquet file's path (relative to its dataset folder) names, if any: a folder
    in SPLIT_NAMES, else the file name's prefix before the first "-" (``test-00000-of-00001``)."""
    *folders, name = relpath.split(os.sep)
    for folder in reversed(folders):
        if folder in SPLIT_NAMES:
            return folder
    prefix = name.split("-", 1)[0].removesuffix(".parquet")
    return prefix if prefix in SPLIT_NAMES else None


def parquet_files(path: str | os.PathLike, split: str | None = None) -> list[str]:
    """A parquet file, or the sorted parquet files under a folder (recursively).

    With ``split``, keep the files whose name starts with ``split`` or that lie in a folder named
    ``split`` (the HF layouts ``data/test-00000-of-00001.parquet`` and ``test/0.parquet``). Without
    it, a folder whose files belong to more than one split (:data:`SPLIT_NAMES`, read from those
    layouts) is a ValueError listing them: reading them together would mix, say, val and test.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"no such parquet file or folder: {path}")
    files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    if split is not None:
        files = [f for f in files
                 if os.path.basename(f).startswith(split)
                 or split in os.path.relpath(f, path).split(os.sep)[:-1]]
    elif len(splits := sorted({name for f in files if (name := _split_of(os.path.relpath(f, path)))})) > 1:
        raise ValueError(f"{path} holds the parquet files of the splits {', '.join(splits)}: give the split "
                         "(--split) to read one of them")
    if not files:
        raise ValueError(f"no parquet files{'' if split is None else f' for split {split!r}'} "
                         f"under {path}")
    return files


class _ParquetRows:
    """Row access over one or more parquet files, one row group decoded at a time."""

    def __init__(self, files: Sequence[str], required: Sequence[str]):
        self.files = list(files)
        self._index: list[tuple[int, int, int]] = []  # global row -> (file, row group, row)
        self.columns: list[str] | None = None
        for fi, f in enumerate(self.files):
            pf = open_parquet(f)
            cols = pf.schema_arrow.names
            missing = [c for c in required if c not in cols]
            if missing:
                raise ValueError(f"{f}: missing column(s) {missing}; found {cols}")
            self.columns = cols if self.columns is None else self.columns
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                self._index.extend((fi, g, r) for r in range(n))
        self._cache_key: tuple[int, int] | None = None
        self._cache: pa.Table | None = None

    def __len__(self) -> int:
        return len(self._index)

    def column(self, name: str) -> list:
        """One column of every file, as Python values (used for ids: no image is decoded)."""
        out: list = []
        for f in self.files:
            try:
                out.extend(pq.read_table(f, columns=[name]).column(name).to_pylist())
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{f}: cannot read column {name!r} ({e})") from None
        return out

    def where(self, index: int) -> tuple[str, int]:
        fi, _, _ = self._index[index]
        return self.files[fi], index

    def row(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        fi, g, r = self._index[index]
        if self._cache_key != (fi, g):
            try:
                self._cache = pq.ParquetFile(self.files[fi]).read_row_group(g)
            except (pa.ArrowException, OSError) as e:  # a corrupt row group: its rows are bad samples
                raise ValueError(f"row group {g} is unreadable ({e})") from None
            self._cache_key = (fi, g)
        return {name: self._cache.column(name)[r].as_py() for name in self._cache.column_names}


def _image_bytes(value, where: str, sample_id: str) -> bytes:
    """The encoded bytes of an HF Image struct {bytes, path} or a raw binary value."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and os.path.isfile(value["path"]):
            with open(value["path"], "rb") as f:
                return f.read()
        raise BadSampleError(sample_id, where, "missing image: image struct has no bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise BadSampleError(sample_id, where, f"missing image: unexpected image value of type "
                                           f"{type(value).__name__}")


def _decode(value, where: str, sample_id: str) -> np.ndarray:
    data = _image_bytes(value, where, sample_id)
    try:
        return load_image(data, name=f"{where} image of {sample_id}")
    except ValueError as e:
        raise BadSampleError(sample_id, where, f"unreadable image: {e}") from e


def _get(row: dict, key: str, where: str, sample_id: str):
    if row.get(key) is None:
        raise BadSampleError(sample_id, where, f"missing key: {key!r} is empty")
    return row[key]


def _size(row: dict, key: str, where: str, sample_id: str) -> int:
    """A positive integer column value (img_width, img_height; an int or a string of digits)."""
    value = _get(row, key, where, sample_id)
    number = None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    if number is None or number <= 0:
        raise BadSampleError(sample_id, where, f"bad value: {key}={value!r:.40} is not a positive integer")
    return number


def _query(row: dict, key: str, where: str, sample_id: str) -> str:
    try:
        return check_text(_get(row, key, where, sample_id), f"{key!r}")
    except ValueError as e:
        raise BadSampleError(sample_id, where, f"bad query: {e}") from None


class AuthorsTrainParquet:
    """The authors' training parquet (one file or a folder of files) as a SampleSource.

    Its samples carry a solution (box and points) and no mask: ``has_masks`` is False, which
    ``evaluate.py`` reads to refuse it as an evaluation set before loading any model."""

    #: Samples carry no ground-truth mask (the training layout keeps only the 840-frame solution).
    has_masks = False

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.path = os.fspath(path)
        self._rows = _ParquetRows(parquet_files(path, split), TRAIN_COLUMNS)
        self.ids = [str(i) for i in self._rows.column("id")]

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def _solution(value, where: str, sample_id: str) -> dict:
        """The ``solution`` column -> the ground truth; BadSampleError when malformed."""
        try:
            return parse_solution(value)
        except ValueError as e:
            raise BadSampleError(sample_id, where, f"bad solution: {e}") from e

    def __getitem__(self, index: int) -> Sample:
        where, _ = self._rows.where(index)
        sample_id = self.ids[index]
        with reading_sample(sample_id, where):
            row = self._rows.row(index)
            image = _decode(_get(row, "image", where, sample_id), where, sample_id)
            if image.shape[:2] != (FRAME, FRAME):
                raise BadSampleError(sample_id, where, f"mismatched sizes: training image is "
                                                       f"{image.shape[1]}x{image.shape[0]}, "
                                                       f"expected {FRAME}x{FRAME}")
            solution = self._solution(_get(row, "solution", where, sample_id), where, sample_id)
            w = _size(row, "img_width", where, sample_id)
            h = _size(row, "img_height", where, sample_id)
            sample = Sample(id=sample_id, image=image, query=_query(row, "problem", where, sample_id),
                            solution=solution,
                            meta={"file": where, "frame": FRAME, "original_size": (w, h)})
        return check_sample(sample, where)


def _mask_array(value, where: str, sample_id: str) -> np.ndarray:
    """HF nested list / numpy / encoded image mask -> bool [H, W]."""
    if isinstance(value, (dict, bytes, bytearray)):
        m = _decode(value, where, sample_id)[..., 0] != 0
    else:
        try:
            m = np.asarray(value)
            if m.dtype == object:  # ragged rows
                raise ValueError("rows of different lengths")
            m = m.astype(bool)
        except (ValueError, TypeError) as e:
            raise BadSampleError(sample_id, where, f"bad mask: {e}") from e
    if m.ndim != 2:
        raise BadSampleError(sample_id, where, f"bad mask: expected [H, W], got shape {m.shape}")
    return m


class ReasonSegParquet:
    """The authors' ReasonSeg val / test parquet (one file or a folder) as a SampleSource.

    ids are ``"{image_id}_{ann_id}"`` when those are unique, else ``"{file stem}/{row}"``.
    """

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.path = os.fspath(path)
        self._rows = _ParquetRows(parquet_files(path, split), REASONSEG_COLUMNS)
        ids = [f"{a}_{b}" for a, b in zip(self._rows.column("image_id"),
                                          self._rows.column("ann_id"))]
        if len(set(ids)) != len(ids):
            ids = [f"{os.path.splitext(os.path.basename(self._rows.where(i)[0]))[0]}/{i}"
                   for i in range(len(self._rows))]
        self.ids = ids

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Sample:
        where, _ = self._rows.where(index)
        sample_id = self.ids[index]
        with reading_sample(sample_id, where):
            row = self._rows.row(index)
            image = _decode(_get(row, "image", where, sample_id), where, sample_id)
            mask = _mask_array(_get(row, "mask", where, sample_id), where, sample_id)
            h, w = _size(row, "img_height", where, sample_id), _size(row, "img_width", where, sample_id)
            if image.shape[:2] != mask.shape or image.shape[:2] != (h, w):
                raise BadSampleError(sample_id, where, f"mismatched sizes: image "
                                                       f"{image.shape[1]}x{image.shape[0]}, mask "
                                                       f"{mask.shape[1]}x{mask.shape[0]}, "
                                                       f"img_width x img_height {w}x{h}")
            is_sentence = row.get("is_sentence")
            sample = Sample(id=sample_id, image=image, query=_query(row, "text", where, sample_id),
                            mask=mask.astype(np.uint8),
                            is_sentence=None if is_sentence is None else bool(is_sentence),
                            meta={"file": where, "image_id": row.get("image_id"),
                                  "ann_id": row.get("ann_id")})
        return check_sample(sample, where)


# ---------------------------------------------------------------------------------------------
# Writers (HF datasets layout, so that `datasets.load_dataset("parquet", ...)` also reads them).

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _hf_metadata(features: dict) -> dict:
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _iter_samples(source: SampleSource | Iterable[Sample]):
    """Samples of a SampleSource (by index) or of any iterable of samples."""
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        for i in range(len(source)):
            yield source[i]
    else:
        yield from source


class _AtomicParquetWriter:
    """Streams row batches to ``path + .tmp``, then os.replace() onto ``path`` on success."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, rows_per_group: int = 64):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.tmp = f"{self.path}.tmp-{os.getpid()}"
        self.schema = schema
        self.rows_per_group = rows_per_group
        self._writer = pq.ParquetWriter(self.tmp, schema)
        self._pending: list[dict] = []
        self.num_rows = 0

    def add(self, row: dict) -> None:
        self._pending.append(row)
        self.num_rows += 1
        if len(self._pending) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self.schema))
            self._pending = []

    def close(self) -> None:
        """Flush and move the file into place; on failure the temporary file is removed."""
        try:
            self._flush()
            self._writer.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
            raise

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


TRAIN_SCHEMA = pa.schema(
    [("id", pa.string()), ("problem", pa.string()), ("solution", pa.string()),
     ("image", _IMAGE_TYPE), ("img_height", pa.int64()), ("img_width", pa.int64())],
    metadata=_hf_metadata({
        "id": {"dtype": "string", "_type": "Value"},
        "problem": {"dtype": "string", "_type": "Value"},
        "solution": {"dtype": "string", "_type": "Value"},
        "image": {"_type": "Image"},
        "img_height": {"dtype": "int64", "_type": "Value"},
        "img_width": {"dtype": "int64", "_type": "Value"},
    }))

REASONSEG_SCHEMA = pa.schema(
    [("image", _IMAGE_TYPE), ("text", pa.string()), ("mask", pa.list_(pa.list_(pa.bool_()))),
     ("image_id", pa.string()), ("ann_id", pa.string()), ("img_height", pa.int64()),
     ("img_width", pa.int64())],
    metadata=_hf_metadata({
        "image": {"_type": "Image"},
        "text": {"dtype": "string", "_type": "Value"},
        "mask": {"feature": {"feature": {"dtype": "bool", "_type": "Value"}, "_type": "Sequence"},
                 "_type": "Sequence"},
        "image_id": {"dtype": "string", "_type": "Value"},
        "ann_id": {"dtype": "string", "_type": "Value"},
        "img_height": {"dtype": "int64", "_type": "Value"},
        "img_width": {"dtype": "int64", "_type": "Value"},
    }))


def authors_train_row(sample: Sample, image_format: str = "PNG") -> dict:
    """One row of the authors' training format from a Sample with an original image and a mask
    (or an already known 840-frame solution). ValueError when the mask is empty."""
    solution = sample.solution if sample.solution is not None else solution_from_mask(sample.mask)
    return {
        "id": sample.id,
        "problem": sample.query,
        "solution": format_solution(solution),
        "image": {"bytes": encode_image(resize_to_frame(sample.image), image_format), "path": None},
        "img_height": sample.height,
        "img_width": sample.width,
    }


def write_authors_train_parquet(source: SampleSource | Iterable[Sample], path: str | os.PathLike,
                                image_format: str = "PNG") -> int:
    """Write samples in the authors' training layout (840 images, problem, solution string,
    img_height, img_width, id), atomically. Returns the number of rows written; samples that
    raise BadSampleError are re-raised (use data.prepare_refcocog to count and skip them)."""
    with _AtomicParquetWriter(path, TRAIN_SCHEMA) as w:
        for sample in _iter_samples(source):
            w.add(authors_train_row(sample, image_format))
    return w.num_rows


def write_reasonseg_parquet(source: SampleSource | Iterable[Sample], path: str | os.PathLike,
                            image_format: str = "PNG") -> int:
    """Write samples with masks in the authors' ReasonSeg layout (original image, text, bool mask
    with ignore counted as target, image_id = sample id, ann_id = "0"), atomically."""
    with _AtomicParquetWriter(path, REASONSEG_SCHEMA, rows_per_group=16) as w:
        for sample in _iter_samples(source):
            if sample.mask is None:
                raise ValueError(f"sample {sample.id!r} has no mask to write")
            w.add({
                "image": {"bytes": encode_image(sample.image, image_format), "path": None},
                "text": sample.query,
                "mask": (np.asarray(sample.mask) != 0).tolist(),
                "image_id": sample.id,
                "ann_id": "0",
                "img_height": sample.height,
                "img_width": sample.width,
            })
    return w.num_rows
