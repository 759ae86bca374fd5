"""The evaluation loop behind ``evaluate.py``: one rank's share of a dataset -> prediction records.

What it implements (SPEC.md sections 1 and 7)
------------------------------------------------------------------
For every sample of this rank's shard that has no record yet:

    images [B] (original, uint8 [H, W, 3]), queries [B]
      -> pipeline(images, queries)                 batched greedy generation + SAM2 on the originals
      -> Prediction per sample (completion, status, bbox/points in the 840 and original frames,
         mask bool [H, W])
      -> I, U = intersection_union(mask if parsed else None, gt)     ("ignore" pixels excluded)
      -> one PredictionRecord per sample, the batch appended to predictions.rank{r}.jsonl + fsync

Sharding: rank ``r`` of ``world`` takes the dataset indices ``r, r + world, ...`` below ``limit``
(strided, not contiguous blocks, so that every rank gets the same mix of a dataset sorted by
difficulty or image size). The shard is computed over ALL indices and then the ids already done
(by any rank, in any earlier run, whatever its world size) are skipped, so a resume with a different
number of ranks neither repeats nor misses a sample. No collective runs inside the loop: ranks
may finish at different times; ``evaluate.py`` merges the rank files on rank 0 after a barrier.

Unparseable answers (SPEC section 1.6 / 7): whatever mask the pipeline returned is ignored, the
prediction counts as an empty mask: I = 0, U = target area, IoU = 0 -- also when the target is
empty (U = 0), where a parsed empty prediction would score 1: an answer that did not parse never
earns IoU (section 7 "unparseable predictions count as IoU 0").

Bad samples: a ``BadSampleError`` from the dataset (corrupt image, missing annotation), a sample
without a ground-truth mask, or a query that is empty once normalised (e.g. "..."), becomes a record with ``status == "bad_sample"`` and the reason; it is
logged, written like any other record, counted in the table, and never stops the run. An all-zero
ground-truth mask is not a bad sample: it is an empty target, scored by the same formula (IoU 1
for a parsed empty prediction, 0 for a prediction with pixels outside the ignore regions). Any other
exception (from the model, say) is a bug and propagates: the batches already written survive it.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from data.types import BadSampleError, Sample
from models.prompt import normalize_query
from eval.results import BAD_SAMPLE, PredictionRecord, PredictionWriter, done_ids, encode_mask, rank_file


def shard_indices(num_samples: int, rank: int, world_size: int) -> range:
    """Dataset indices of rank ``rank``: ``rank, rank + world_size, ... < num_samples``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return range(rank, num_samples, world_size)


def check_source_ids(source) -> list[str]:
    """``source.ids`` as a list; ValueError when it does not have one id per sample or when an id
    occurs more than once (records, resume and merge identify a sample by its id, so a repeated
    id would be evaluated once and reported once). Cheap: no sample is decoded."""
    ids = list(source.ids)
    if len(ids) != len(source):
        raise ValueError(f"dataset has {len(source)} samples but {len(ids)} ids")
    counts = Counter(ids)
    repeated = [(i, n) for i, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(f"{i!r} x{n}" for i, n in repeated[:5])
        raise ValueError(f"dataset has {len(repeated)} sample id(s) that occur more than once ({shown}"
                         f"{', ...' if len(repeated) > 5 else ''}); every sample needs its own id, since "
                         f"predictions are recorded and resumed by id")
    return ids


@dataclass
class ShardStats:
    """What one rank did in this run (not counting samples done by earlier runs)."""

    rank: int
    num_assigned: int  # indices of this shard below the limit
    num_skipped: int  # already in the output dir (resume)
    num_evaluated: int  # readable samples run through the pipeline now
    num_bad: int  # unreadable samples recorded now
    seconds: float


def _as_list(value) -> list | None:
    if value is None:
        return None
    return np.asarray(value, dtype=np.float64).tolist()


def bad_record(index: int, sample_id: str, query: str, reason: str, rank: int) -> PredictionRecord:
    return PredictionRecord(index=index, id=sample_id, query=query, status=BAD_SAMPLE, reason=reason,
                            rank=rank)


def score_prediction(index: int, sample: Sample, prediction: Any, seconds: float, rank: int = 0
                     ) -> PredictionRecord:
    """One record from a sample and the pipeline's prediction for it (see the module docstring).

    ``prediction`` needs the attributes of ``models.pipeline.Prediction``: completion, reasoning,
    status, bbox_840, points_840, bbox, points, mask (bool [H, W] or None).
    """
    from eval.metrics import intersection_union, sample_iou

    parsed = prediction.status == "ok"
    mask = prediction.mask if parsed else None
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != sample.mask.shape:
            raise ValueError(f"sample {sample.id!r}: predicted mask {mask.shape} but ground truth "
                             f"{sample.mask.shape}: the segmenter must run on the original image")
    inter, union = intersection_union(mask, sample.mask)
    return PredictionRecord(
        index=index,
        id=sample.id,
        query=sample.query,
        status=str(prediction.status),
        is_sentence=sample.is_sentence,
        completion=prediction.completion,
        reasoning=prediction.reasoning,
        bbox_840=_as_list(prediction.bbox_840),
        points_840=_as_list(prediction.points_840),
        bbox=_as_list(prediction.bbox),
        points=_as_list(prediction.points),
        intersection=int(inter),
        union=int(union),
        iou=float(sample_iou(inter, union, parsed)),
        seconds=float(seconds),
        height=sample.height,
        width=sample.width,
        mask_rle=encode_mask(mask) if mask is not None else None,
        rank=rank,
        target_area=int(np.count_nonzero(np.asarray(sample.mask) == 1)),
        pred_area=int(np.count_nonzero(mask)) if mask is not None else 0,
    )


def evaluate_shard(
    pipeline: Callable[[list, list], Sequence[Any]],
    source,
    output_dir: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 1,
    limit: int | None = None,
    done: set[str] | None = None,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
) -> ShardStats:
    """Evaluate this rank's shard of ``source`` into ``output_dir/predictions.rank{rank}.jsonl``.

    Args:
        pipeline: ``(images, queries) -> predictions`` (``models.pipeline.SegZeroPipeline``).
        source: a :class:`data.types.SampleSource` (``ids`` without decoding, ``[i]`` -> Sample);
            ValueError when its ids are not one per sample and unique (:func:`check_source_ids`),
            or when a sample read has another id than ``ids`` gives for its index.
        limit: evaluate only the first ``limit`` dataset indices (before sharding).
        done: ids to skip; default: every id already recorded in ``output_dir``. Pass it when
            several ranks share the directory, computed BEFORE any of them starts writing.
        log: where bad samples and progress lines go (None: silent).
        progress: show a tqdm bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ids = check_source_ids(source)
    num = len(ids) if limit is None else min(limit, len(ids))
    done = done_ids(output_dir) if done is None else done
    assigned = shard_indices(num, rank, world_size)
    todo = [i for i in assigned if ids[i] not in done]

    start_time = time.perf_counter()
    num_evaluated = num_bad = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"eval rank {rank}", unit="sample")
    with PredictionWriter(rank_file(output_dir, rank)) as writer:
        for start in range(0, len(todo), batch_size):
            records: list[PredictionRecord] = []
            batch: list[tuple[int, Sample]] = []
            for index in todo[start:start + batch_size]:
                try:
                    sample = source[index]
                except BadSampleError as err:
                    records.append(bad_record(index, ids[index], "", f"{err.source}: {err.reason}", rank))
                    continue
                if sample.id != ids[index]:
                    raise ValueError(f"dataset index {index}: the sample read has id {sample.id!r} but the "
                                     f"dataset's ids list {ids[index]!r} there; the reader is inconsistent")
                if sample.mask is None:
                    records.append(bad_record(index, sample.id, sample.query,
                                              "no ground-truth mask in this dataset format", rank))
                    continue
                try:
                    normalize_query(sample.query)  # the prompt's rule (SPEC 2): a query must remain
                except ValueError as err:
                    records.append(bad_record(index, sample.id, str(sample.query), str(err), rank))
                    continue
                batch.append((index, sample))
            for r in records:
                if log:
                    log(f"[rank {rank}] bad sample {r.id!r} (index {r.index}): {r.reason}")
            t0 = time.perf_counter()
            predictions = pipeline([s.image for _, s in batch], [s.query for _, s in batch]) if batch else []
            if len(predictions) != len(batch):
                raise ValueError(f"pipeline returned {len(predictions)} predictions for {len(batch)} samples")
            per_sample = (time.perf_counter() - t0) / max(1, len(batch))
            for (index, sample), prediction in zip(batch, predictions):
                records.append(score_prediction(index, sample, prediction, per_sample, rank))
            records.sort(key=lambda r: r.index)
            writer.write_batch(records)
            num_evaluated += len(batch)
            num_bad += len(records) - len(batch)
            if bar is not None:
                bar.update(len(records))
    if bar is not None:
        bar.close()
    return ShardStats(rank=rank, num_assigned=len(assigned), num_skipped=len(assigned) - len(todo),
                      num_evaluated=num_evaluated, num_bad=num_bad,
                      seconds=time.perf_counter() - start_time)
