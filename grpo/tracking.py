"""Run logging: ``metrics.jsonl`` (one JSON object per step), a tqdm bar and
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
from typing import Any, Callable, Iterator


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
        phases = (self.phase, "val") if self.phase == "train" else (self.phase,)
        filter_jsonl(self.path, lambda row: not (row.get("phase") in phases and row.get("step", 0) > start_step))

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


def filter_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite the JSON-lines file ``path`` atomically with only its rows (JSON objects) for which
    ``keep(row)`` is true (:func:`write_atomic`); a line that is not a JSON object (a torn last
    line, from a crash mid-write) goes too. Nothing happens when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and keep(row):
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a file created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a file written by other code (e.g. a safetensors writer) to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``path`` so that it holds either its old content or all of ``data``, also after a
    crash or a power loss: a temporary file beside it, flushed to disk, then ``os.replace``, then
    the folder's entry flushed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a metrics.jsonl file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
