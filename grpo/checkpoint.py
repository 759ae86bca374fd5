"""Checkpoints: distributed save / exact resume, and the Hugging Face export.

Layout of ``<output_dir>/checkpoints``::

    step_000010/              one complete checkpoint
        .metadata, __*.distcp model + optimizer, sharded (torch.distributed.checkpoint)
        extra_rank00000.json  per rank: step, scheduler, data position, python and numpy RNG
                              states, anything the trainer adds (JSON values only)
        rng_rank00000.safetensors  per rank: torch CPU and CUDA RNG states (uint8 tensors)
        COMPLETE              written last
    latest                    text file: the name of the newest complete checkpoint (informative)

What a resume reads: the per-rank state is JSON and safetensors, formats that hold data only, so
reading them cannot run code. The model and optimizer go through torch.distributed.checkpoint,
whose ``.metadata`` file torch itself unpickles: a checkpoint directory is trusted input, like any
torch checkpoint. :func:`load_checkpoint` refuses a directory holding any file this module does
not write (a planted ``.pt`` is never read), and :func:`latest_checkpoint` only takes names
``step_XXXXXX`` inside the checkpoint root.

Atomicity: everything is written into ``step_XXXXXX.tmp`` and flushed to disk (fsync; the
torch.distributed.checkpoint writer flushes its own files); after a barrier (every rank done) rank 0
writes ``COMPLETE``, flushes the folder, renames it to ``step_XXXXXX`` (one ``os.rename``) and
replaces ``latest`` through a flushed temporary file and ``os.replace``. A folder of the same step
saved before (a resume at the final step saves it again) is renamed aside to
``step_XXXXXX.old`` first and deleted only once the new one is in place. A crash mid-write leaves a
``.tmp`` folder, which is never read (:func:`latest_checkpoint` takes the newest folder with
``COMPLETE``, so a resume falls back to the newest complete step) and is removed by the next save
of the same step. The Hugging Face export (:func:`export_hf`) is written and replaced the same way.

Model and optimizer state go through ``get_state_dict`` / ``set_state_dict``
(torch.distributed.checkpoint.state_dict): sharded DTensors under FSDP2, so no rank ever holds the
full model; the checkpoint can be reloaded on a different number of ranks (DCP reshards).
Exact resume needs every RNG and the data position: the trainer seeds sampling per (step, prompt),
so a resumed run draws the same samples as an uninterrupted one; RNG states are restored as well
for anything else that draws random numbers.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from grpo.parallel import all_gather_objects, barrier, unwrapped_class
from grpo.tracking import fsync_dir, fsync_file, write_atomic

COMPLETE = "COMPLETE"
#: Names of the complete checkpoint folders (the only folders :func:`latest_checkpoint` takes).
STEP_DIR = re.compile(r"step_\d{6,}")
#: Every file a checkpoint folder may hold: torch.distributed.checkpoint's metadata and shards,
#: the per-rank JSON and safetensors files, the COMPLETE marker.
CHECKPOINT_FILES = re.compile(r"\.metadata|__\d+_\d+\.distcp|extra_rank\d{5}\.json|"
                              r"rng_rank\d{5}\.safetensors|" + COMPLETE)


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and every folder's entries to disk."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``final`` so that a crash at any moment leaves a
    complete folder on disk: an existing ``final`` is renamed aside (``final.old``), ``tmp`` renamed
    to ``final``, the parent's entries flushed, and only then the set-aside folder deleted."""
    aside = final.with_name(final.name + ".old")
    if final.exists():
        if aside.exists():  # debris of a crash after an earlier replacement
            shutil.rmtree(aside)
        os.rename(final, aside)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if aside.exists():
        shutil.rmtree(aside)


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's RNG states as (JSON values: python, numpy; uint8 tensors: torch CPU, CUDA)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    as_json = {"python": [version, list(internal), gauss],
               "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    return as_json, tensors


def set_rng_state(as_json: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = as_json["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = as_json["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(sum(k.startswith("cuda") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(ckpt_root: str | os.PathLike, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> Path:
    """Collective: every rank calls it. Returns the final folder ``ckpt_root/step_XXXXXX``.

    ``extra`` (per rank, JSON values: dicts, lists, strings, numbers): scheduler state, data
    position... The step and the RNG states are added here.
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
    rng_json, rng_tensors = rng_state()
    write_atomic(tmp / f"extra_rank{_rank():05d}.json", json.dumps({"step": step, "rng": rng_json, **extra}))
    rng_file = tmp / f"rng_rank{_rank():05d}.safetensors"
    save_file(rng_tensors, str(rng_file))
    fsync_file(rng_file)
    barrier()
    if _rank() == 0:
        write_atomic(tmp / COMPLETE, f"{step}\n")  # flushes the folder's entries too
        _replace_dir(tmp, final)  # re-saving the same step (e.g. resumed at the final step) replaces it
        write_atomic(root / "latest", final.name + "\n")
    barrier()
    return final


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint: the complete step folder (with ``COMPLETE``) of the highest step,
    None when there is none. Folders without the marker (a save cut short, a ``.tmp`` or ``.old``
    folder) are skipped, so a crash between a save's rename and its ``latest`` update, or one that
    left the newest folder incomplete, falls back to the newest complete one. The ``latest`` file
    names the same folder after every save (for people and tools); it is not needed to find it.

    Only folders named ``step_XXXXXX`` directly in ``ckpt_root`` count (whatever ``latest`` says,
    e.g. ``../elsewhere``)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    done = sorted((p for p in root.iterdir()
                   if STEP_DIR.fullmatch(p.name) and p.is_dir() and (p / COMPLETE).is_file()),
                  key=lambda p: int(p.name[5:]))
    return done[-1] if done else None


def check_checkpoint(path: str | os.PathLike, world_size: int | None = None) -> None:
    """ValueError naming ``path`` unless it holds a whole checkpoint as :func:`save_checkpoint`
    writes it: the ``COMPLETE`` marker, nothing else than its files
    (:func:`check_checkpoint_files`), the ``.metadata`` index and at least one shard of
    torch.distributed.checkpoint, and the per-rank state files of ranks 0 .. world_size - 1
    (default: the current number of ranks). Reads no file's content: run before the models are
    built, it finds a damaged or foreign checkpoint in seconds."""
    path = Path(path)
    world_size = _world_size() if world_size is None else world_size
    if not path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is not a directory")
    if not (path / COMPLETE).is_file():
        raise ValueError(f"checkpoint {str(path)!r} is incomplete (no {COMPLETE} marker)")
    check_checkpoint_files(path)
    damaged = "it is damaged; move it out of the checkpoints folder to resume from the checkpoint before it"
    if not (path / ".metadata").is_file():
        raise ValueError(f"checkpoint {str(path)!r} has no .metadata (the index of its model and optimizer "
                         f"shards): {damaged}")
    if not any(p.name.endswith(".distcp") for p in path.iterdir()):
        raise ValueError(f"checkpoint {str(path)!r} has no model and optimizer shards (__*.distcp): {damaged}")
    for rank in range(world_size):
        names = (f"extra_rank{rank:05d}.json", f"rng_rank{rank:05d}.safetensors")
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise ValueError(f"checkpoint {str(path)!r} has no {' / '.join(missing)}: it is damaged, or was "
                             f"written by a run of fewer ranks than this run's {world_size}; resume with the same "
                             "number of processes, or move it out of the checkpoints folder to resume from the "
                             "checkpoint before it")


def _load_failure(err: BaseException) -> str:
    """One line saying why torch.distributed.checkpoint could not load: the exception of each rank
    that failed (a CheckpointException holds them), without tracebacks."""
    errors = [exc for exc, _ in err.failures.values()] if isinstance(err, CheckpointException) else [err]
    causes = list(dict.fromkeys(f"{type(exc).__name__}: {' '.join(str(exc).split())}" for exc in errors))
    text = "; ".join(causes)
    return text if len(text) <= 800 else text[:800] + "..."


class _DropCheckpointWarnings(logging.Filter):
    """Drops the records torch.distributed.checkpoint logs with tracebacks on the root logger while
    it looks for a metadata file (its exception reaches :func:`load_checkpoint`, which says why)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}distributed{os.sep}checkpoint{os.sep}" not in record.pathname


def check_checkpoint_files(path: str | os.PathLike) -> None:
    """ValueError unless ``path`` holds only what :func:`save_checkpoint` writes (no other file,
    no sub-folder): a checkpoint directory is trusted input, and anything added to it is refused."""
    path = Path(path)
    unexpected = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()
                        if not (p.is_file() and CHECKPOINT_FILES.fullmatch(p.name)))
    if unexpected:
        raise ValueError(f"checkpoint {str(path)!r} holds files the trainer did not write: {unexpected}; "
                         "a checkpoint directory is trusted input (torch unpickles its .metadata): "
                         "resume only from checkpoints this trainer wrote, and remove anything added")


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: loads model + optimizer in place, restores this rank's RNG states; returns extra.

    Any failure is a ValueError naming the checkpoint and the cause: a folder that is not a whole
    checkpoint (:func:`check_checkpoint`), an unreadable state file, and whatever
    torch.distributed.checkpoint refuses (a truncated or missing shard, a model of another shape)."""
    path = Path(path)
    check_checkpoint(path)
    extra_file = path / f"extra_rank{_rank():05d}.json"
    rng_file = path / f"rng_rank{_rank():05d}.safetensors"
    try:
        extra = json.loads(extra_file.read_text())
        rng_tensors = load_file(str(rng_file))
    except (ValueError, OSError, SafetensorError) as err:  # also JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"checkpoint {str(path)!r}: unreadable {extra_file.name} / {rng_file.name}: {err}") from err
    if not isinstance(extra, dict) or not isinstance(extra.get("rng"), dict):
        raise ValueError(f"checkpoint {str(path)!r}: {extra_file.name} is not a saved training state")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    quiet = _DropCheckpointWarnings()
    logging.getLogger().addFilter(quiet)
    try:
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
        # strict=False: parameters that never received a gradient (e.g. unused by the inputs so far)
        # have no AdamW state yet, in the saved and in the fresh optimizer alike.
        set_optimizer_state_dict(model, optimizer, state["optim"], options=StateDictOptions(strict=False))
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        raise ValueError(f"checkpoint {str(path)!r} could not be loaded into this model and optimizer "
                         f"({_load_failure(err)}); resume only with the model and settings that wrote it, "
                         "or move the folder out of the checkpoints folder to resume from the one "
                         "before it") from err
    finally:
        logging.getLogger().removeFilter(quiet)
    set_rng_state(extra.pop("rng"), rng_tensors)
    return extra


class TrainingDiverged(RuntimeError):
    """The model's numbers are no longer finite (or no step could be applied): nothing to keep."""


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Collective: names of the parameters holding a NaN or an infinity on any rank (each rank
    checks its own shards), sorted; the same list on every rank."""
    local = []
    for name, p in model.named_parameters():
        data = p.to_local() if hasattr(p, "to_local") else p  # a DTensor shard under FSDP2
        if not torch.isfinite(data.detach()).all():
            local.append(name)
    return sorted({name for names in all_gather_objects(local) for name in names})


def export_hf(out_dir: str | os.PathLike, model: nn.Module, processor: Any | None,
              dtype: torch.dtype | None = None, extra_files: dict[str, str] | None = None) -> Path | None:
    """Collective: gather the full state dict on rank 0 and ``save_pretrained`` it (safetensors).

    Rank 0 builds an unsharded copy of the model class on CPU from ``model.config``, loads the
    gathered weights, and saves it together with the processor and ``extra_files`` (name -> text).
    Written to ``out_dir.tmp``, flushed to disk, then put in place of ``out_dir`` like checkpoints
    (an earlier export is renamed aside and deleted once the new one is in place). Returns the folder on rank 0, None
    elsewhere. Weights holding a NaN or an infinity are never exported: TrainingDiverged on every
    rank, naming them.
    """
    bad = nonfinite_parameters(model)
    if bad:
        raise TrainingDiverged(f"refusing to export {out_dir}: {len(bad)} parameter tensors hold NaN or inf "
                         f"(e.g. {bad[:3]}); training diverged: lower the learning rate or check the "
                         f"other numbers of the config")
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
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _fsync_tree(tmp)
        _replace_dir(tmp, out)
        result = out
    barrier()
    return result
