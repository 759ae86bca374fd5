"""The supervised baseline (``--algo sft``) and the tiny run's warm start.

Seg-Zero (arXiv 2503.06520, Table 1) compares GRPO with supervised fine-tuning on the same data.
Here SFT trains the policy to write the ground-truth answer text:

    target(sample) = rewards.format_answer(bbox_gt, points_gt, reasoning, think)
                     + EOS (<|im_end|>)
    reasoning      = "{query} is the target." (a short templated sentence: the datasets carry
                     no reasoning text; the paper's SFT baseline has none either, so with
                     think=True this only teaches the tag format)

    loss = - sum_{i,t} m_it log pi(y_it | prompt_i, y_i,<t) / T     T = GLOBAL number of target
                                                                   tokens (all micro-batches, ranks)

i.e. token-mean negative log-likelihood with the same global-count contract as grpo.update: the
gradient of 1 rank with the whole batch equals the SUM over ranks of the gradients with half each
(FSDP2's own averaging is turned off in grpo.parallel). Shapes: B prompts, L target tokens.

Departure: the paper's SFT baseline details (epochs, lr) are not given; we reuse the GRPO data,
optimizer and checkpoint machinery unchanged.

The tiny run's warm start (``train.warmstart_sft_steps``, train.py ``warm_start``) is this same
step on the SAME synthetic training rows that GRPO then uses (another shuffling seed): it only has
to teach the random tiny policy the answer format. The reasoning is kept to one short sentence so
that the whole target (~70-80 tiny-tokenizer tokens, digits one per token) fits the tiny preset's
96-token response budget.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist

from data.types import Sample
from models.policy import SegZeroPolicy
from models.prompt import normalize_query
from rewards import format_answer


def reasoning_text(query: str) -> str:
    """The templated reasoning of the SFT target (think variant)."""
    return f"{normalize_query(query).strip()} is the target."


def sft_target(sample: Sample, think: bool = True) -> str:
    """The answer text the SFT baseline is trained to write for ``sample`` (module docstring)."""
    if sample.solution is None:
        raise ValueError(f"sample {sample.id!r} has no 840-frame solution to build an SFT target from")
    sol = sample.solution
    if isinstance(sol, list):  # the multi-object mode's list of objects (SPEC 9)
        from rewards import format_objects_answer

        return format_objects_answer(sol, reasoning=reasoning_text(sample.query))
    return format_answer(sol["bbox"], sol["points"], reasoning=reasoning_text(sample.query) if think else None,
                         think=think)


def tokenize_targets(tokenizer, texts: Sequence[str], eos_token_id: int, pad_token_id: int,
                     max_new_tokens: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Target texts -> (ids [B, L], mask [B, L]) right-padded, each row ending with EOS.

    Rows longer than ``max_new_tokens`` (the response budget) are cut, keeping no EOS (as a truncated
    rollout would be).
    """
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos_token_id] for t in texts]
    if max_new_tokens is not None:
        rows = [r[:max_new_tokens] for r in rows]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)  # [B, L]
    mask = torch.zeros((len(rows), length), dtype=torch.long)  # [B, L]
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def sft_step(policy: SegZeroPolicy, samples: Sequence[Sample], optimizer: torch.optim.Optimizer, *,
             think: bool = True, micro_batch_size: int = 8, max_grad_norm: float = 1.0,
             max_new_tokens: int | None = None) -> dict[str, float]:
    """One optimizer step of token-mean NLL on this rank's ``samples`` (collective under dist).

    Every rank must pass the same number of samples (same number of forward calls). Returns
    ``loss`` (global token-mean NLL), ``num_tokens`` (global), ``grad_norm``, ``skipped_steps``.
    """
    tok = policy.processor.tokenizer
    ids, mask = tokenize_targets(tok, [sft_target(s, think) for s in samples], policy.eos_token_id,
                                 policy.pad_token_id, max_new_tokens=max_new_tokens, device=policy.device)
    count = torch.tensor([float(mask.sum())], dtype=torch.float64, device=policy.device)
    if dist.is_initialized():
        dist.all_reduce(count)
    num_tokens = max(float(count.item()), 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=policy.device)
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, len(samples), micro_batch_size):
        chunk = list(samples[start: start + micro_batch_size])
        batch = policy.prepare([s.image for s in chunk], [s.query for s in chunk])
        mb_ids, mb_mask = ids[start: start + len(chunk)], mask[start: start + len(chunk)]
        logp = policy.logprobs(batch, mb_ids, mb_mask, group_size=1)  # [b, L]
        loss = -(logp * mb_mask).sum() / num_tokens
        loss.backward()
        loss_sum += loss.detach().double()
    if dist.is_initialized():
        dist.all_reduce(loss_sum)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    skipped = 0.0
    if math.isfinite(norm) and math.isfinite(float(loss_sum)):
        optimizer.step()
    else:
        skipped = 1.0
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(loss_sum), "num_tokens": num_tokens, "grad_norm": norm, "skipped_steps": skipped}
