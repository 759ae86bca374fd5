"""Validation during training with the real metric, and the best-checkpoint pointer.

:func:`validate` runs the evaluation loop of ``evaluate.py`` (:func:`eval.loop.evaluate_shard`:
policy -> greedy answer -> SAM2 -> mask -> I, U per sample, each rank its strided shard) on a
validation set with the policy being trained, and reduces over ranks:

    val/giou, val/ciou        SPEC section 7, percent (unparseable answer = empty mask), over all
                              val/n readable samples
    val/parse_fail            fraction of the val/n answers that did not parse
    val/iou_proxy             mean box IoU of the parsed box against the ground-truth box (0 when
                              unparseable), SPEC 4 convention: the training-side localisation figure
    val/reward/<term>         the five reward terms of the greedy answers (SPEC 4), and their total
    val/n, val/n_scored       readable samples; samples with a ground-truth box to score against

The box IoU and the reward terms score a sample against its ``solution``; a sample without one (the
ReasonSeg parquet, LISA folder and RefCOCO readers give only the mask) gets
``data.solution_from_mask(mask)``, the rule training uses (:func:`validation_solution`). A sample
whose target is empty (no non-zero mask pixel) has no box: it counts in gIoU / cIoU and parse_fail,
not in val/iou_proxy or val/reward/*, which are sums over the val/n_scored scored samples divided
by val/n_scored (0 when there are none).

With ``task`` "multi" (SPEC 9) the pipeline is models.multi_object.MultiObjectPipeline (the mask is
the union of one SAM2 mask per listed object; ``[]`` is the empty mask), gIoU / cIoU are over those
union masks, every sample is scored (its solution is an object list, ``[]`` for an empty target, so
val/n_scored = val/n), ``val/iou_proxy`` is rewards.matched_box_iou (Hungarian-matched box IoU
summed over pairs / max(M, N); 1 for ``[]`` on an empty target), the reward terms are the three
multi-object terms, and two more figures come from eval.multi_object.target_accuracies:

    val/no_target_acc         percent of empty-target samples answered with an empty mask
    val/target_acc            percent of the other samples answered with a non-empty mask

(each only when the validation set has such samples).

The predictions of each call are kept in ``output_dir`` (``predictions.jsonl`` merged by rank 0),
so every figure can be recomputed with ``python evaluate.py --recompute DIR``.

:class:`BestPointer` keeps ``best.json`` in the run directory: the step, val/giou and val/ciou of
the best validation so far and the checkpoint saved at that step.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from grpo.tracking import write_atomic


def validate(policy, segmenter, source, output_dir: str | os.PathLike, *, rank: int = 0, world_size: int = 1,
             batch_size: int = 16, max_new_tokens: int = 1024, strict: bool = True, soft: bool = False,
             think: bool = True, limit: int | None = None, task: str = "single") -> dict[str, float]:
    """Evaluate ``policy`` + ``segmenter`` on ``source`` (module docstring); collective when
    distributed (every rank must call it). ``policy`` needs ``complete(images, queries, *,
    max_new_tokens, greedy)`` (models.policy.SegZeroPolicy; under FSDP2 call this inside
    ``grpo.parallel.unsharded_for_generation``; with ``task`` "multi" a policy built with
    task="multi"). ``output_dir`` is emptied first."""
    from eval.loop import evaluate_shard
    from eval.multi_object import target_accuracies
    from eval.results import merge_predictions, rank_file, read_records, table_from_records
    from grpo.parallel import all_gather_objects, barrier
    from models.multi_object import MultiObjectPipeline
    from models.pipeline import SegZeroPipeline
    from rewards import box_iou, matched_box_iou, score_completions, score_multi_object

    if task not in ("single", "multi"):
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}")

    output_dir = str(output_dir)
    if rank == 0 and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    barrier()
    os.makedirs(output_dir, exist_ok=True)
    pipeline = (MultiObjectPipeline if task == "multi" else SegZeroPipeline)(policy, segmenter,
                                                                            max_new_tokens=max_new_tokens)
    evaluate_shard(pipeline, source, output_dir, rank=rank, world_size=world_size, batch_size=batch_size,
                   limit=limit, done=set(), log=None)
    mine = [r for r in read_records(rank_file(output_dir, rank)) if not r.is_bad]
    # the rows with a ground-truth answer to score (single: not an empty target); all rows count in gIoU / cIoU
    solutions = [validation_solution(source[r.index], task) for r in mine]
    scored = [(r, r.completion or "", sol) for r, sol in zip(mine, solutions) if sol is not None]
    texts = [text for _, text, _ in scored]
    if task == "multi":
        rb = score_multi_object(texts, [sol for _, _, sol in scored])
        ious = [matched_box_iou(text, sol) if r.status == "ok" else 0.0 for r, text, sol in scored]
    else:
        rb = score_completions(texts, [sol for _, _, sol in scored], strict=strict, soft=soft, think=think)
        ious = [box_iou(r.bbox_840, sol["bbox"]) if r.status == "ok" and r.bbox_840 is not None else 0.0
                for r, _, sol in scored]
    local = {"records": mine, "iou": float(sum(ious)), "n": len(mine), "n_scored": len(scored),
             "terms": {k: float(np.sum(v)) for k, v in rb.terms.items()}}
    parts = all_gather_objects(local)
    records = [r for p in parts for r in p["records"]]
    table = table_from_records(records)["all"]
    n = sum(p["n"] for p in parts)  # rows of gIoU / cIoU
    n_scored = sum(p["n_scored"] for p in parts)  # rows of the box IoU and reward-term means
    out = {"val/giou": float(table["gIoU"]), "val/ciou": float(table["cIoU"]),
           "val/parse_fail": float(table["parse_failure_rate"]) / 100,
           "val/iou_proxy": sum(p["iou"] for p in parts) / max(n_scored, 1),
           "val/n": float(n), "val/n_scored": float(n_scored)}
    if task == "multi":
        acc = target_accuracies(records)  # each figure only when the set has such samples
        for key, count in (("no_target_acc", "num_empty_targets"), ("target_acc", "num_targets")):
            if acc[count]:
                out[f"val/{key}"] = float(acc[key])
    for k in sorted(local["terms"]):
        out[f"val/reward/{k}"] = sum(p["terms"][k] for p in parts) / max(n_scored, 1)
    out["val/reward/total"] = sum(v for k, v in out.items() if k.startswith("val/reward/"))
    barrier()
    if rank == 0:
        merge_predictions(output_dir)
    example = next((r.completion for r in sorted(records, key=lambda r: r.index)), "")
    out["example"] = example or ""  # type: ignore[assignment]
    return out


def validation_solution(sample, task: str = "single"):
    """The ground truth that validation scores ``sample`` against (module docstring).

    task "single": ``sample.solution`` when set; else ``data.solution_from_mask(sample.mask)``;
    None (the sample is not scored) when the mask has no non-zero pixel or there is no mask.
    task "multi": ``sample.solution`` (an object list, ``[]`` for an empty target).
    """
    if task == "multi" or sample.solution is not None:
        return sample.solution
    from data import solution_from_mask

    if sample.mask is None or not np.any(np.asarray(sample.mask) != 0):
        return None
    return solution_from_mask(sample.mask)


def format_validation(title: str, rep: dict[str, Any]) -> str:
    """One line: gIoU, cIoU, box IoU, parse failures, (multi) target accuracies, reward terms."""
    terms = "  ".join(f"{k[11:]}={v:.3f}" for k, v in rep.items() if k.startswith("val/reward/"))
    acc = "".join(f"{k[4:]}={rep[k]:.1f}  " for k in ("val/no_target_acc", "val/target_acc") if k in rep)
    return (f"[{title}] validation n={int(rep['val/n'])}: gIoU={rep['val/giou']:.1f}  cIoU={rep['val/ciou']:.1f}  "
            f"box_iou={rep['val/iou_proxy']:.3f}  parse_fail={rep['val/parse_fail']:.2f}  {acc}{terms}\n"
            f"    example: {str(rep.get('example', ''))[:160]!r}")


class BestPointer:
    """``best.json`` in a run directory: the best validation gIoU so far, its step and checkpoint.

    ``update(step, rep, checkpoint)`` returns True (and rewrites the file atomically) when
    ``rep['val/giou']`` beats the recorded best (ties keep the earlier step). Every rank keeps the
    same in-memory state (call ``update`` on all ranks with the all-gathered figures, ``write``
    True on one), so the decision to save a best checkpoint, a collective, is the same on all
    ranks. A resumed run reads the file back, so the pointer survives restarts; a file that is
    not a JSON object with a numeric val/giou is a ValueError naming it.
    """

    def __init__(self, run_dir: str | os.PathLike, resume: bool = True):
        self.path = Path(run_dir) / "best.json"
        self.best: dict[str, Any] | None = self._read() if resume and self.path.exists() else None

    def _read(self) -> dict[str, Any]:
        """The recorded best; ValueError naming the file when it is not a JSON object with a
        numeric val/giou (a torn or hand-edited file)."""
        try:
            best = json.loads(self.path.read_text())
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{self.path} is not valid JSON ({err}); delete it to start the best pointer "
                             "afresh") from None
        if not isinstance(best, dict):
            raise ValueError(f"{self.path} is not a JSON object (got {type(best).__name__}); delete it to "
                             "start the best pointer afresh")
        giou = best.get("val/giou")
        if isinstance(giou, bool) or not isinstance(giou, (int, float)):
            raise ValueError(f"{self.path} has no numeric 'val/giou' (got {giou!r}); delete it to start the "
                             "best pointer afresh")
        return best

    @property
    def giou(self) -> float:
        return float("-inf") if self.best is None else float(self.best["val/giou"])

    def is_better(self, rep: dict[str, Any]) -> bool:
        return float(rep["val/giou"]) > self.giou

    def update(self, step: int, rep: dict[str, Any], checkpoint: str | os.PathLike | None,
               write: bool = True) -> bool:
        if not self.is_better(rep):
            return False
        self.best = {"step": int(step), "val/giou": float(rep["val/giou"]), "val/ciou": float(rep["val/ciou"]),
                     "val/iou_proxy": float(rep.get("val/iou_proxy", float("nan"))),
                     "checkpoint": None if checkpoint is None else str(checkpoint)}
        if write:
            write_atomic(self.path, json.dumps(self.best, indent=1) + "\n")
        return True
