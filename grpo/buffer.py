"""RolloutBuffer: everything one GRPO rollout produced, as one typed container.

Shape legend (DESIGN.md): B prompts, G samples per prompt, N = B * G rows, P prompt tokens,
L response tokens (padded width). Row i is one sampled response; the G samples of one prompt are
adjacent rows, and ``group_ids[i]`` is the index of row i's prompt in ``prompts``.

Fields:
    response_ids   [N, L] long   sampled tokens; padding positions hold any valid id (masked)
    response_mask  [N, L] bool/float  1 on real tokens, up to and including EOS; 0 on padding
    old_logp       [N, L] float32 or None   log pi_old(token): the policy that sampled, as the
                   TRAINER's forward computes it (grpo.update.compute_old_logprobs, same temperature).
                   None with one optimizer step per rollout: the update then uses its own forward's
                   detached log-probs (ratio exactly 1; grpo.update module docstring)
    rollout_logp   [N, L] float32 or None   log-probs the sampler reported for its tokens (same
                   temperature); never used as pi_old: only for the sampler-vs-trainer mismatch
                   diagnostic and the optional truncated importance-sampling weight
    rewards        [N] float     total reward of each response
    advantages     [N] float     from grpo.advantages.group_advantages(rewards, G)
    group_ids      [N] long      prompt index of each row, in [0, B); rows of one group adjacent
    ref_logp       [N, L] float32 or None   reference-policy log-probs (None: no KL term)
    reward_terms   dict name -> [N] float    per-term breakdown of ``rewards`` (for logging)
    prompts        list (length B) of opaque per-prompt model inputs (e.g. pixel values, image
                   grid, prompt ids of that prompt); the update never looks inside, it only keeps
                   them aligned with their rows through select/micro_batches

Every field is keyword-only. Padding is carried by the masks; no value in a padded position is
ever used in the math.
Sub-buffers (``select``) re-index ``prompts`` so that group_ids stay valid indices into the
sub-buffer's own list (in order of first appearance).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass(kw_only=True)
class RolloutBuffer:
    """One rollout; see the module docstring for every field's shape and meaning."""

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    group_ids: torch.Tensor
    old_logp: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    reward_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    prompts: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.response_ids.dim() != 2:
            raise ValueError(f"response_ids must be [N, L], got shape {tuple(self.response_ids.shape)}")
        n, length = self.response_ids.shape
        for name in ("response_mask", "old_logp", "rollout_logp", "ref_logp"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (n, length):
                raise ValueError(f"{name} must be [N, L] = {(n, length)}, got {tuple(value.shape)}")
        for name in ("rewards", "advantages", "group_ids"):
            value = getattr(self, name)
            if tuple(value.shape) != (n,):
                raise ValueError(f"{name} must be [N] = ({n},), got {tuple(value.shape)}")
        for name, value in self.reward_terms.items():
            if tuple(value.shape) != (n,):
                raise ValueError(f"reward_terms[{name!r}] must be [N] = ({n},), got {tuple(value.shape)}")
        if self.group_ids.is_floating_point():
            raise ValueError(f"group_ids must be integer, got dtype {self.group_ids.dtype}")
        if self.prompts and n and int(self.group_ids.max()) >= len(self.prompts):
            raise ValueError(
                f"group_ids go up to {int(self.group_ids.max())} but there are only "
                f"{len(self.prompts)} prompts"
            )
        if n and int(self.group_ids.min()) < 0:
            raise ValueError(f"group_ids must be >= 0, got min {int(self.group_ids.min())}")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_seqs(self) -> int:
        """N, the number of responses (rows)."""
        return self.response_ids.shape[0]

    @property
    def padded_len(self) -> int:
        """L, the padded response width (the Dr. GRPO normaliser when no budget is given)."""
        return self.response_ids.shape[1]

    @property
    def num_valid_tokens(self) -> int:
        """Number of real (unpadded) response tokens."""
        return int(self.response_mask.sum())

    def __len__(self) -> int:
        return self.num_seqs

    # ---- splitting ---------------------------------------------------------------------------
    def select(self, rows: Sequence[int] | torch.Tensor | slice) -> "RolloutBuffer":
        """Sub-buffer of ``rows`` (in that order), with ``prompts`` re-indexed to the groups kept."""
        if isinstance(rows, slice):
            rows = torch.arange(self.num_seqs)[rows]
        rows = torch.as_tensor(rows, dtype=torch.long)
        if rows.dim() != 1:
            raise ValueError(f"rows must be 1-D, got shape {tuple(rows.shape)}")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.num_seqs):
            raise ValueError(f"rows must lie in [0, {self.num_seqs}), got {rows.tolist()}")
        index = rows.to(self.response_ids.device)
        old_groups = self.group_ids[index].tolist()
        kept = list(dict.fromkeys(old_groups))  # distinct groups, in order of first appearance
        remap = {g: k for k, g in enumerate(kept)}
        new = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "group_ids":
                value = torch.tensor([remap[g] for g in old_groups], dtype=value.dtype, device=value.device)
            elif f.name == "prompts":
                value = [value[g] for g in kept] if value else []
            elif f.name == "reward_terms":
                value = {k: v[index.to(v.device)] for k, v in value.items()}
            elif isinstance(value, torch.Tensor):
                value = value[index.to(value.device)]
            new[f.name] = value
        return RolloutBuffer(**new)

    def micro_batches(self, size: int) -> Iterator["RolloutBuffer"]:
        """Consecutive sub-buffers of ``size`` rows (the last one may be smaller)."""
        if int(size) < 1:
            raise ValueError(f"micro-batch size must be >= 1, got {size}")
        for start in range(0, self.num_seqs, int(size)):
            yield self.select(slice(start, start + int(size)))
