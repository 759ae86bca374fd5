"""Checkpoints: distributed save / exact resume, and the Hugging Face export (issue 5, section 3).

Layout of ``<output_dir>/checkpoints``::

    step_000010/              one complete checkpoint
        .metadata, __*.distcp model + optimizer, sharded (torch.distributed.checkpoint)
        extra_rank00000.pt    per rank: step, scheduler, data position, RNG states (python,
                              numpy, torch CPU, torch CUDA), anything the trainer adds
        COMPLETE              written last
    latest                    text file: the name of the newest complete checkpoint

Atomicity: everything is written into ``step_XXXXXX.tmp``; after a barrier (every rank done) rank 0
writes ``COMPLETE``, renames the folder to ``step_XXXXXX`` (one ``os.rename``) and replaces
``latest`` through a temporary file and ``os.replace``. A crash mid-write leaves a ``.tmp`` folder,
which is never read (:func:`latest_checkpoint` only trusts folders with ``COMPLETE``) and is
removed by the next save of the same step.

Model and optimizer state go through ``get_state_dict`` / ``set_state_dict``
(torch.distributed.checkpoint.state_dict): sharded DTensors under FSDP2, so no rank ever holds the
full model; the checkpoint can be reloaded on a different number of ranks (DCP reshards).
Exact resume needs every RNG and the data position: the trainer seeds sampling per (step, prompt),
so a resumed run draws the same samples as an uninterrupted one; RNG states are restored as well
for anything else that draws random numbers.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from grpo.parallel import barrier, unwrapped_class

COMPLETE = "COMPLETE"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: str | os.PathLike, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> Path:
    """Collective: every rank calls it. Returns the final folder ``ckpt_root/step_XXXXXX``.

    ``extra`` (per rank, picklable): scheduler state, data position... RNG states are added here.
    """
    root = Path(ckpt_root)
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # debris of a crashed save of this step
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save({"step": step, "rng": rng_state(), **extra}, tmp / f"extra_rank{_rank():05d}.pt")
    barrier()
    if _rank() == 0:
        (tmp / COMPLETE).write_text(f"{step}\n")
        if final.exists():  # re-saving the same step (e.g. resumed at the final step)
            shutil.rmtree(final)
        os.rename(tmp, final)
        pointer_tmp = root / "latest.tmp"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, root / "latest")
    barrier()
    return final


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint (``latest`` pointer, else the highest complete step folder)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / COMPLETE).is_file():
            return cand
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / COMPLETE).is_file())
    return done[-1] if done else None


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: loads model + optimizer in place, restores this rank's RNG states; returns extra."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"checkpoint {str(path)!r} is incomplete (no {COMPLETE} marker)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    # strict=False: parameters that never received a gradient (e.g. unused by the inputs so far)
    # have no AdamW state yet, in the saved and in the fresh optimizer alike.
    set_optimizer_state_dict(model, optimizer, state["optim"], options=StateDictOptions(strict=False))
    extra_file = path / f"extra_rank{_rank():05d}.pt"
    if not extra_file.is_file():
        raise ValueError(f"checkpoint {str(path)!r} has no {extra_file.name}: it was written by a run "
                         "with fewer ranks; resume with the same number of processes")
    extra = torch.load(extra_file, weights_only=False)
    set_rng_state(extra.pop("rng"))
    return extra


def export_hf(out_dir: str | os.PathLike, model: nn.Module, processor: Any | None,
              dtype: torch.dtype | None = None) -> Path | None:
    """Collective: gather the full state dict on rank 0 and ``save_pretrained`` it (safetensors).

    Rank 0 builds an unsharded copy of the model class on CPU from ``model.config``, loads the
    gathered weights, and saves it together with the processor. Written to ``out_dir.tmp`` then
    renamed, like checkpoints. Returns the folder on rank 0, None elsewhere.
    """
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = Path(out_dir)
    result = None
    if _rank() == 0:
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        cls = unwrapped_class(model)
        config = model.config  # type: ignore[attr-defined]
        plain = cls._from_config(config)  # type: ignore[attr-defined]
        missing, unexpected = plain.load_state_dict(full, strict=False)
        # Tied weights (e.g. lm_head = embed_tokens) may appear under one name only.
        tied = set(getattr(plain, "_tied_weights_keys", None) or [])
        bad = [k for k in missing if k not in tied]
        assert not bad and not unexpected, f"export state dict mismatch: missing {bad}, unexpected {unexpected}"
        if dtype is not None:
            plain.to(dtype)
        plain.save_pretrained(tmp, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
        result = out
    barrier()
    return result
