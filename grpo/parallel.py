"""Distributed setup and FSDP2 sharding. The only module besides train.py that
imports torch.distributed: model code stays single-device.

- :func:`init_distributed`: a process group under ``torchrun`` (env vars RANK, WORLD_SIZE, ...) or a
  1-process group without it (so ``python train.py`` runs the same code path); gloo on CPU, NCCL on
  GPU; a 1-D device mesh over all ranks (pure data parallel / ZeRO-3 style sharding).
- :func:`shard_model`: ``fully_shard`` on every vision block and every decoder block, then on the
  root (torchtitan's parallelize pattern). With ``mixed_precision`` (CPU + gloo and GPU + NCCL
  alike, so that CPU tests run the GPU precision path): bf16 parameters and compute, fp32 gradient
  reduction (``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``), fp32 master
  weights and optimizer state. Without it: fp32 throughout.
  Gradient division is turned OFF (``set_gradient_divide_factor(1.0)``): our losses are normalised
  by one GLOBAL count (grpo.update), so the per-rank gradients must be SUMMED, not averaged.
- the root is the module whose ``forward`` is the training forward (for Seg-Zero a small module
  around Qwen2.5-VL that returns response log-probs): every piece of the model that forward
  touches outside the blocks (embeddings, vision patch embedding and merger, lm_head) belongs to
  the root and is gathered for the whole call.
- the frozen reference model is sharded the same way (optionally with its shards in CPU memory).
"""
from __future__ import annotations

import datetime
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, device and the data-parallel mesh."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Initialise (or reuse) the default process group; works with and without torchrun.

    ``device``: 'cpu' (gloo), 'cuda' (nccl, the GPU of the local rank), 'cuda:K' or 'auto'.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"config field device={device!r} but no CUDA device is available; use --device cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        dev = torch.device("cuda", int(device.partition(":")[2] or local_rank))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        alone = {} if "RANK" in os.environ else dict(  # plain `python train.py`: a group of one
            init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s), **alone)
    world = dist.get_world_size()
    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("dp",))
    return DistInfo(rank=dist.get_rank(), world_size=world, local_rank=local_rank, device=dev, mesh=mesh)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a single-process or test rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown(barrier: bool = True) -> None:
    """Leave the process group; ``barrier=False`` on an error path (other ranks may not get here)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (the same on every rank: model init must agree across ranks)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a Qwen2.5-VL model: vision blocks then decoder layers.

    Found by structure (any ModuleList named ``blocks`` or ``layers``), so that it works for the
    transformers layout (model.visual.blocks, model.language_model.layers) without naming classes.
    """
    blocks: list[nn.Module] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("blocks", "layers"):
            blocks.extend(mod)
    if not blocks:
        raise ValueError(f"no transformer blocks (ModuleList named 'blocks' or 'layers') found in "
                         f"{type(model).__name__}")
    return blocks


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant checkpoint wrapper)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as _apply,
    )

    targets = {id(b) for b in transformer_blocks(model)}
    _apply(model, check_fn=lambda m: id(m) in targets)


def shard_model(model: nn.Module, info: DistInfo, *, mixed_precision: bool = True,
                cpu_offload: bool = False, activation_checkpointing: bool = False,
                frozen: bool = False) -> nn.Module:
    """FSDP2: shard each vision / decoder block found under ``model``, then ``model`` as the root.
    Returns the (same) module. ``model``'s own ``forward`` is the call that gathers the root's
    parameters; parts of it called directly need :func:`unsharded_for_generation`.

    ``frozen`` (the reference model): parameters get requires_grad=False and the model eval mode.
    ``mixed_precision``: bf16 compute, fp32 reduction, on any device (module docstring).
    """
    if activation_checkpointing and not frozen:
        apply_activation_checkpointing(model)
    if frozen:
        model.requires_grad_(False)
        model.eval()
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if mixed_precision else MixedPrecisionPolicy())
    # on a CPU device the shards are in CPU memory already (and pinning needs CUDA)
    offload: OffloadPolicy = (CPUOffloadPolicy() if (cpu_offload and info.device.type == "cuda")
                              else OffloadPolicy())
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=info.mesh, mp_policy=mp, offload_policy=offload)
    # The root keeps its parameters gathered from its forward to its backward
    # (reshard_after_forward=False): they are used by several model pieces inside one forward.
    fully_shard(model, mesh=info.mesh, mp_policy=mp, offload_policy=offload, reshard_after_forward=False)
    for mod in [model, *blocks]:
        # Sum, not average, the gradients over ranks: losses are normalised by a global count.
        mod.set_gradient_divide_factor(1.0)  # type: ignore[operator]
        # plain SUM collectives (gloo has no PREMUL_SUM; with factor 1.0 nothing is scaled anyway)
        mod.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    return model


@contextmanager
def unsharded_for_generation(model: nn.Module) -> Iterator[None]:
    """Gather every FSDP2 shard of ``model`` once, keep the full parameters during the block, reshard.

    Why: decoding stops when all rows of THIS rank finished (models.rollout), so ranks run different
    numbers of forward calls; under plain FSDP2 each forward all-gathers (a collective), so ranks
    would wait on each other forever. Here every rank issues the same all-gathers up front
    (``unshard`` on each FSDP module), and with ``reshard_after_forward=False`` the forwards inside
    the block find the parameters gathered and communicate nothing. Costs the memory of one full
    copy of the (bf16 under mixed precision) parameters during generation; it also makes decoding faster.
    No-op for a model that is not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if isinstance(model, FSDPModule):
        # Mark ``model`` as the root before any block runs on its own: FSDP2 takes the first
        # module to run forward as the root, and decoding calls the blocks, not the root's forward.
        model._get_fsdp_state()._lazy_init()  # idempotent (private API of FSDP2, torch 2.6-2.14)
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)  # root: False (shard_model)


@contextmanager
def gathered_between_steps(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
    """Keep each FSDP2 module of ``model`` gathered from its first forward in the block until the
    next optimizer step (or the end of the block): one all-gather per module per optimizer step,
    not one per forward and one per backward of every micro-batch.

    Inside the block every FSDP module has ``reshard_after_forward`` and ``reshard_after_backward``
    False; a step post-hook on ``optimizer`` reshards them all after each ``optimizer.step()``, so
    the next forward gathers the updated weights (gathered parameters are copies of the shards and
    would otherwise go stale). Gradients are still reduce-scattered after each backward, in the
    same order, so the result is bit-for-bit that of plain FSDP2. Costs the memory of one full copy
    of the (bf16 under mixed precision) parameters during the block, as generation does; worth it
    when collectives, not compute, bound a step (small models, gloo). No-op for a model that is not
    sharded. ``optimizer`` None: a frozen model (the reference's forwards).
    """
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not mods:
        yield
        return

    def reshard_all(*_args) -> None:
        for m in mods:
            m.reshard()

    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.set_reshard_after_backward(False, recurse=False)
    handle = optimizer.register_step_post_hook(reshard_all) if optimizer is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        reshard_all()
        for m in mods:
            m.set_reshard_after_forward(m is not model, recurse=False)  # root: False (shard_model)
            m.set_reshard_after_backward(True, recurse=False)


def unwrapped_class(model: nn.Module) -> type:
    """The model's own class (FSDP2 swaps in a subclass named FSDP<cls>)."""
    from torch.distributed.fsdp import FSDPModule

    for cls in type(model).__mro__:
        if not issubclass(cls, FSDPModule) and issubclass(cls, nn.Module):
            return cls
    return type(model)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks (no-op in a 1-process run); returns x."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj):
    """List over ranks of a picklable object (for metrics and held-out reports)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: max_memory_allocated on CUDA, peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


class StepSampler:
    """Which dataset indices each rank reads at each step: deterministic, resumable, sharded.

    The training order is a permutation of ``range(num_samples)`` per epoch, seeded by
    ``(seed, epoch)``; the epochs are concatenated into one stream. Step ``s`` consumes stream
    positions ``[s * B, (s + 1) * B)`` (B = global prompts per step, so a batch may straddle two
    epochs) and rank r takes the r-th of ``world_size`` equal contiguous slices of it. The position
    is a function of the step alone, so resuming at step s needs nothing but s; the number of ranks
    does not change which prompts make up a global batch (1 rank with B prompts == 2 ranks with
    B / 2 each).
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int):
        if num_samples < 1:
            raise ValueError(f"the training set is empty (num_samples={num_samples}); check data_path")
        if global_batch % world_size != 0:
            raise ValueError(f"prompts_per_step={global_batch} is not divisible by the {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks (0..{world_size - 1})")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(self.num_samples, generator=g).tolist()}
        return self._perm_cache[epoch]

    def stream_index(self, position: int) -> int:
        """Dataset index at a position of the concatenated-epochs stream."""
        epoch, offset = divmod(position, self.num_samples)
        return self._perm(epoch)[offset]

    def epoch(self, step: int) -> float:
        """Epochs completed at the START of ``step`` (fractional)."""
        return step * self.global_batch / self.num_samples

    def positions(self, step: int) -> list[int]:
        """Stream positions of this rank's prompts at ``step`` (length local_batch)."""
        start = step * self.global_batch + self.rank * self.local_batch
        return list(range(start, start + self.local_batch))

    def indices(self, step: int) -> list[int]:
        """Dataset indices of this rank's prompts at ``step``."""
        return [self.stream_index(p) for p in self.positions(step)]
