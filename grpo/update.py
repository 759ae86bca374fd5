"""One GRPO update: PPO epochs x mini-batches, gradient accumulation with global normalisers.

    for epoch in ppo_epochs:
        for mini-batch in num_mini_batches strided row sets of the (local) rollout (see below):
            counts  = all-reduce SUM (valid tokens, sequences) of this mini-batch over ranks
            for micro-batch of micro_batch_size rows:
                logp, entropy = logprob_fn(micro)            current policy, with grad
                old_logp = buffer's, or logp.detach()         pi_old (see "Old log-probs")
                loss = grpo_loss(..., global counts)          grpo.losses (module docstring)
                loss.backward()                               grads accumulate
            grad_norm = clip_grad_norm_(params, max_grad_norm)
            if loss and grad_norm are finite: optimizer.step()   else: skip, and count it
            optimizer.zero_grad()

The normalisation contract. Each micro-batch loss is divided by counts of the WHOLE mini-batch
over ALL ranks, so summing the micro-batch losses over micro-batches and ranks gives exactly the
full-batch loss: 1 rank with the whole batch and 2 ranks with half each produce the same gradient
provided gradients are SUMMED across ranks. Consequences for the caller:
  - FSDP2 (``fully_shard``) AVERAGES gradients over ranks by default: turn that off with
    ``module.set_gradient_divide_factor(1.0)`` on every fully_shard-ed module (torchtitan does the
    same), or the gradients are 1 / world_size too small.
  - DDP also averages: multiply the loss by world size or use a SUM communication hook.
  - Every rank must run the same number of micro-batches (same local rows and micro_batch_size),
    and logprob_fn the same sequence of collectives whatever the responses of its rank, since
    each forward and backward may communicate (FSDP2 all-gathers and reduce-scatters).

Old log-probs (SPEC.md section 8). pi_old is the policy that sampled the rollout, as the TRAINER's
forward computes it, never the sampler's numbers: a KV-cached, batched, left-padded decode and the
shared-prefix training forward round differently (in bf16 |delta logp| ~1e-2, ratios 0.7-1.3), and
ratios built on the sampler's numbers would clip part of the gradient of exactly the sampled
tokens at a step where the policy has not moved.
  - One optimizer step per rollout (ppo_epochs == 1 and num_mini_batches == 1): leave
    ``buffer.old_logp`` None. Each micro-batch then uses its own training forward's detached
    log-probs, old_logp = logp.detach(), so ratio = exp(logp - logp.detach()) = 1 exactly,
    clipfrac = 0, approx_kl_old = 0 and the gradient is the on-policy -A * grad logp. No extra
    forward pass.
  - Several optimizer steps: fill ``buffer.old_logp = compute_old_logprobs(logprob_fn, buffer,
    micro_batch_size)`` BEFORE the update (a no-grad pass of the same forward at the same
    temperature), so that every step's ratio is measured against one fixed policy. A
    ``buffer.old_logp`` that is given is always used as is.
Sampler-vs-trainer mismatch. When ``buffer.rollout_logp`` (the sampler's log-probs) is given, the
result holds rollout_logp_diff_mean and rollout_logp_diff_max: the mean and the max over the valid
tokens of ALL ranks of |old_logp - rollout_logp| (the same policy computed two ways), taken in the
first epoch, where every row is visited once. ``tis_cap`` = C turns on the truncated
importance-sampling weight min(exp(old_logp - rollout_logp), C) on the policy-gradient term
(grpo.losses, 5), reported as tis_weight.

Mini-batches are strided row sets: mini-batch k holds the local rows i with i % num_mini_batches
== k (no shuffling). Why strided, not contiguous slices: rank r holds the global rows
r * n + i (n local rows, a multiple of num_mini_batches), and (r * n + i) % M == i % M, so the
global mini-batch k is the same set of rows whatever the number of ranks (contiguous local slices
would pair rows 0..n/M of EVERY rank, which differs from 1 rank's first slice). Rows of one group
stay adjacent inside a mini-batch; the update never needs whole groups, only the precomputed
advantages.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from grpo.buffer import RolloutBuffer
from grpo.kl import KL_ESTIMATORS
from grpo.losses import AGGREGATIONS, grpo_loss, truncated_is_weight
from grpo.metrics import all_reduce, rollout_metrics

LogprobFn = Callable[[RolloutBuffer], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(kw_only=True)
class UpdateConfig:
    """Knobs of grpo_update (defaults: the Seg-Zero recipe, SPEC.md section 8, except entropy).

    The names are those of the training config (grpo.recipe: GRPOConfig, and max_grad_norm,
    temperature, max_new_tokens), which validates user input; here a bad value is a programming
    error (an assertion)."""

    micro_batch_size: int = 4
    """Rows per forward/backward; gradients accumulate over the micro-batches of a mini-batch.
    Does not change the result; with a shared-prefix logprob_fn a multiple of the group size
    keeps whole groups together (each prompt computed once per micro-batch it appears in)."""
    ppo_epochs: int = 1
    """Passes over the rollout; > 1 needs old_logp recomputed (see compute_old_logprobs)."""
    num_mini_batches: int = 1
    """Optimizer steps per epoch; the local rows must divide evenly."""
    clip_eps: float = 0.2
    """Ratio clip: ratio >= 1 - clip_eps (and <= 1 + clip_eps unless clip_eps_high is set)."""
    clip_eps_high: float = 0.0
    """Ratio clip above: ratio <= 1 + clip_eps_high (DAPO's clip-higher); 0 = clip_eps."""
    kl_coef: float = 5e-3
    """beta, the weight of the KL-to-reference loss term (0 disables it; ref_logp may be None)."""
    kl_estimator: str = "k3"
    """KL estimator: "k1", "k2" or "k3" (grpo.kl)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (the released Seg-Zero code uses 1e-3)."""
    aggregation: str = "seq-mean-token-mean"
    """Aggregation: "token-mean", "seq-mean-token-mean" (what the released Seg-Zero configs
    compute) or "seq-mean-token-sum-norm" (grpo.losses)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient 2-norm to this; 0: no clipping (the norm is still reported)."""
    temperature: float = 1.0
    """Sampling temperature; logprob_fn must apply it (logits / temperature) as sampling did."""
    max_new_tokens: int | None = None
    """Dr. GRPO normaliser L_max (the generation budget); None: the padded width, max over ranks."""
    tis_cap: float = 0.0
    """Truncated importance sampling cap C (module docstring; needs buffer.rollout_logp);
    0: off (the recipe)."""

    def __post_init__(self) -> None:
        assert min(self.micro_batch_size, self.ppo_epochs, self.num_mini_batches) >= 1, self
        assert 0 <= self.clip_eps < 1 and self.clip_eps_high >= 0, self
        assert self.kl_estimator in KL_ESTIMATORS and self.aggregation in AGGREGATIONS, self
        assert self.kl_coef >= 0 and self.entropy_coef >= 0 and self.temperature > 0, self
        assert self.max_grad_norm >= 0 and self.tis_cap >= 0, self
        assert self.max_new_tokens is None or self.max_new_tokens >= 1, self

    @property
    def one_step_per_rollout(self) -> bool:
        """True when pi_old is the policy at the one update step (old_logp may be None)."""
        return self.ppo_epochs == 1 and self.num_mini_batches == 1


@torch.no_grad()
def compute_old_logprobs(logprob_fn: LogprobFn, buffer: RolloutBuffer, micro_batch_size: int) -> torch.Tensor:
    """log pi_old of the buffer's responses [N, L] float32, by a no-grad pass of logprob_fn."""
    parts = [logprob_fn(mb)[0].detach().float() for mb in buffer.micro_batches(micro_batch_size)]
    return torch.cat(parts, dim=0)  # [N, L]


def mini_batch_rows(num_rows: int, num_mini_batches: int, k: int) -> torch.Tensor:
    """Local rows [num_rows / num_mini_batches] of mini-batch k: i with i % num_mini_batches == k.

    Example: 6 rows, 2 mini-batches -> [0, 2, 4] and [1, 3, 5]. With 12 global rows on 2 ranks
    (global rows 0..5 and 6..11), rank 1's local [0, 2, 4] are global [6, 8, 10]: mini-batch 0 is
    the even global rows on 2 ranks as on 1 (module docstring).
    """
    return torch.arange(k, num_rows, num_mini_batches)


def _grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global grad 2-norm (clipping to max_norm unless 0); FSDP2 DTensor grads handled by torch."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf)
    if hasattr(norm, "full_tensor"):  # DTensor (FSDP2): the norm is already global, materialise it
        norm = norm.full_tensor()
    return norm


def grpo_update(
    logprob_fn: LogprobFn,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    cfg: UpdateConfig,
    *,
    process_group=None,
) -> dict[str, float]:
    """Run cfg.ppo_epochs x cfg.num_mini_batches optimizer steps on this rank's ``buffer``.

    logprob_fn(mb) -> (logp [n, L], entropy [n, L] or None): current-policy log-probs (with grad)
    of mb.response_ids, at cfg.temperature. Returns a flat dict of python floats, the same on every
    rank: the terms of grpo.losses.grpo_loss, each the mean over the optimizer steps (skipped ones
    included) of its value on the step's whole mini-batch over all ranks ("loss" and "policy_loss"
    aggregated by cfg.aggregation; "kl", "entropy", "clipfrac", "approx_kl_old", "tis_weight" token
    means over the mini-batch's valid tokens whatever cfg.aggregation); grad_norm (the
    pre-clipping global norm, mean over the APPLIED steps; NaN when every step was skipped);
    optimizer_steps (applied), skipped_steps (non-finite loss or gradient norm, no update);
    rollout_logp_diff_mean / _max (when buffer.rollout_logp is given) and the rollout metrics of
    grpo.metrics.rollout_metrics.
    ``buffer.old_logp`` None means pi_old = this update's own forward (module docstring); that
    needs exactly one optimizer step.
    """
    num_rows = buffer.num_seqs
    if num_rows == 0 or num_rows % cfg.num_mini_batches != 0:
        raise ValueError(
            f"the {num_rows} local rows must split evenly into num_mini_batches={cfg.num_mini_batches}"
        )
    if buffer.old_logp is None and not cfg.one_step_per_rollout:
        raise ValueError(
            f"buffer.old_logp is None but ppo_epochs={cfg.ppo_epochs} x num_mini_batches="
            f"{cfg.num_mini_batches} optimizer steps need a fixed pi_old: fill it with "
            "compute_old_logprobs before the update"
        )
    if cfg.tis_cap and buffer.rollout_logp is None:
        raise ValueError(f"tis_cap={cfg.tis_cap} needs buffer.rollout_logp (the sampler's log-probs), got None")
    device = buffer.response_ids.device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if cfg.max_new_tokens is not None:  # the Dr. GRPO normaliser L_max: the budget, or the widest rollout
        max_new_tokens = float(cfg.max_new_tokens)
    else:
        max_new_tokens = all_reduce(torch.tensor(float(buffer.padded_len), device=device), "max",
                                    process_group).item()

    totals: dict[str, float] = {}
    grad_norms: list[float] = []  # of the applied steps
    skipped = 0
    diff_sum = torch.zeros(2, dtype=torch.float64, device=device)  # [sum |delta logp|, valid tokens]
    diff_max = torch.zeros(1, dtype=torch.float64, device=device)
    optimizer.zero_grad(set_to_none=True)
    for epoch in range(cfg.ppo_epochs):
        for k in range(cfg.num_mini_batches):
            mini = buffer.select(mini_batch_rows(num_rows, cfg.num_mini_batches, k))  # module doc
            counts = torch.tensor([mini.num_valid_tokens, mini.num_seqs], dtype=torch.float64, device=device)
            num_tokens, num_seqs = all_reduce(counts, "sum", process_group).tolist()  # global counts
            step_terms: dict[str, torch.Tensor] = {}
            for micro in mini.micro_batches(cfg.micro_batch_size):
                logp, entropy = logprob_fn(micro)
                if logp.shape != micro.response_ids.shape:
                    raise ValueError(
                        f"logprob_fn returned logp {tuple(logp.shape)}, expected {tuple(micro.response_ids.shape)}"
                    )
                # pi_old: given, or this forward's own log-probs (one step per rollout: ratio 1)
                old_logp = micro.old_logp if micro.old_logp is not None else logp.detach()
                is_weight = None
                if micro.rollout_logp is not None:
                    if epoch == 0:  # sampler-vs-trainer mismatch, each row once
                        valid = micro.response_mask.bool()
                        diff = torch.where(valid, (old_logp.detach() - micro.rollout_logp).abs(), 0.0)
                        diff_sum += torch.stack([diff.double().sum(), valid.double().sum()])
                        diff_max = torch.maximum(diff_max, diff.double().max().view(1))
                    if cfg.tis_cap:
                        is_weight = truncated_is_weight(old_logp, micro.rollout_logp, cfg.tis_cap)
                loss, terms = grpo_loss(
                    logp, old_logp, micro.ref_logp, micro.advantages, micro.response_mask,
                    kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                    entropy=entropy, entropy_coef=cfg.entropy_coef,
                    clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high, aggregation=cfg.aggregation,
                    num_tokens=max(num_tokens, 1.0), num_seqs=max(num_seqs, 1.0), max_new_tokens=max_new_tokens,
                    is_weight=is_weight,
                )
                loss.backward()
                for name, value in terms.items():  # each term is already globally normalised
                    step_terms[name] = step_terms.get(name, 0.0) + value.double()
            names = sorted(step_terms)  # same keys, same order on every rank
            reduced = all_reduce(torch.stack([step_terms[n] for n in names]).to(device), "sum", process_group)
            step_values = dict(zip(names, reduced.tolist()))

            grad_norm = float(_grad_norm(params, cfg.max_grad_norm))
            if math.isfinite(step_values["loss"]) and math.isfinite(grad_norm):
                optimizer.step()
                grad_norms.append(grad_norm)
            else:
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
            for name, value in step_values.items():
                totals[name] = totals.get(name, 0.0) + value

    num_steps = cfg.ppo_epochs * cfg.num_mini_batches
    out = {name: value / num_steps for name, value in totals.items()}
    out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan  # applied steps only
    out["optimizer_steps"] = float(num_steps - skipped)
    out["skipped_steps"] = float(skipped)
    if buffer.rollout_logp is not None:
        all_reduce(diff_sum, "sum", process_group)
        all_reduce(diff_max, "max", process_group)
        out["rollout_logp_diff_mean"] = diff_sum[0].item() / max(diff_sum[1].item(), 1.0)
        out["rollout_logp_diff_max"] = diff_max.item()
    out.update(rollout_metrics(buffer, process_group))
    return out
