"""Run logging (issue 5, section 4): ``metrics.jsonl`` (one JSON object per step), a tqdm bar and
optional TensorBoard on rank 0, phase timers, peak memory.

Each line of ``metrics.jsonl`` holds the step, every diagnostic returned by the update (clipfrac,
kl, entropy, grad norm...), each reward term's mean, tokens/s, the step time split into phases
(``time/rollout``, ``time/reward``, ``time/reference``, ``time/update``) and ``peak_memory_bytes``.
Non-finite floats are written as null so that the file stays valid JSON.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class PhaseTimer:
    """Wall-clock seconds per named phase of one step: ``with timer("rollout"): ...``."""

    def __init__(self, sync_cuda: bool = False):
        self.sync_cuda = sync_cuda
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        out["time/step"] = sum(self.seconds.values())
        return out


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # torch / numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


class Tracker:
    """Writes metrics on the main process only; a no-op object on the other ranks.

    ``phase`` names the rows this tracker writes ("train", or "warmstart_sft" for the warm start).
    """

    def __init__(self, output_dir: str | Path, *, is_main: bool, total_steps: int,
                 start_step: int = 0, progress: bool = True, tensorboard: bool = False,
                 desc: str = "train", phase: str = "train"):
        self.is_main = is_main
        self.phase = phase
        self.path = Path(output_dir) / "metrics.jsonl"
        self._bar = None
        self._tb = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_rows_after(start_step)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard): logging to "
                      "metrics.jsonl only", flush=True)
            else:
                self._tb = SummaryWriter(str(Path(output_dir) / "tb"))

    def _drop_rows_after(self, start_step: int) -> None:
        """Drop this tracker's rows (its ``phase``, and the "val" rows of the training tracker) of
        steps > start_step: a resumed run re-logs the steps that its crashed predecessor logged after
        its last checkpoint, and a fresh run (start_step 0), such as a warm start redone after a crash,
        starts its curve anew. Rows of other phases stay; a torn last line (crash mid-write) is
        dropped. Rewritten atomically."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            phases = (self.phase, "val") if self.phase == "train" else (self.phase,)
            if isinstance(row, dict) and not (row.get("phase") in phases and row.get("step", 0) > start_step):
                kept.append(line + "\n")
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, Any], phase: str | None = None) -> None:
        if not self.is_main:
            return
        phase = phase or self.phase
        row = {"step": step, "phase": phase, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{phase}/{k}", v, step)
        if self._bar is not None and phase != "val":  # validation rows are not steps
            self._bar.update(1)
            shown = {k: metrics[k] for k in ("reward/total", "loss", "kl", "iou_proxy")
                     if isinstance(metrics.get(k), (int, float))}
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()})

    def print(self, msg: str) -> None:
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a metrics.jsonl file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def heldout_report(policy, samples, *, max_new_tokens: int, think: bool, strict: bool,
                   soft: bool, task: str = "single") -> dict[str, float]:
    """Greedy completions on held-out samples -> mean reward terms and the box-IoU proxy.

    ``iou_proxy`` is the mean IoU (SPEC 4 inclusive-pixel convention) of the predicted box against
    the ground-truth box, 0 for an unparseable answer: a stand-in for gIoU, which needs SAM2 masks
    (training never loads SAM2). Each rank scores its own ``samples``; the result is averaged over
    all ranks' samples. Call inside ``grpo.parallel.unsharded_for_generation`` under FSDP2.
    """
    from rewards import box_iou, parse_answer, score_completions

    from grpo.parallel import all_gather_objects

    texts = policy.complete([s.image for s in samples], [s.query for s in samples],
                            max_new_tokens=max_new_tokens, greedy=True) if samples else []
    if task == "multi":  # the object list (SPEC 9): its rewards, and the matched-box IoU proxy
        from rewards import matched_box_iou, score_multi_object

        rb = score_multi_object(texts, [s.solution for s in samples])
        ious = [matched_box_iou(text, s.solution) for text, s in zip(texts, samples)]
    else:
        rb = score_completions(texts, [s.solution for s in samples], strict=strict, soft=soft, think=think)
        ious = []
        for text, s in zip(texts, samples):
            parsed = parse_answer(text)
            ious.append(box_iou(parsed.bbox, s.solution["bbox"]) if parsed.bbox is not None else 0.0)
    local = {"n": len(samples), "total": float(rb.total.sum()), "iou_proxy": float(sum(ious)),
             "parse_fail": float(sum(st != "ok" for st in rb.statuses)),
             **{f"reward/{k}": float(v.sum()) for k, v in rb.terms.items()}}
    parts = all_gather_objects(local)
    n = max(sum(p["n"] for p in parts), 1)
    out = {k: sum(p[k] for p in parts) / n for k in local if k != "n"}
    out["reward/total"] = out.pop("total")
    out["n"] = float(sum(p["n"] for p in parts))
    out["example"] = texts[0] if texts else ""  # type: ignore[assignment]
    return out


def format_report(title: str, report: dict) -> str:
    """One line: reward terms, total, box-IoU proxy, parse-failure rate."""
    keys = [k for k in report if k.startswith("reward/")]
    body = "  ".join(f"{k[7:]}={report[k]:.3f}" for k in keys)
    return (f"[{title}] held-out n={int(report['n'])}: {body}  box_iou_proxy(not gIoU)="
            f"{report['iou_proxy']:.3f}  parse_fail={report['parse_fail']:.2f}\n"
            f"    example: {str(report.get('example', ''))[:160]!r}")
