"""Diagnostics of one rollout and one update, reduced across ranks to python floats.

Rollout metrics (``rollout_metrics``), from a RolloutBuffer: reward mean/std and the mean of each
reward term (reward/total: their sum), advantage mean/std, the fraction of groups whose rewards all
tie (those groups get zero advantage and teach nothing: the "zero-variance" or "solve_none/solve_all" groups of DAPO,
arXiv 2503.14476, section 3.2), response length mean/min/max, and the token / sequence counts.
Update metrics (loss terms, clipfrac, KL, entropy, grad norm, skipped steps) are gathered by
``grpo.update.grpo_update``, which merges both into one flat dict.

Reduction: every mean is a ratio of all-reduced SUMS (so 2 ranks with half the rows each report
what 1 rank with all rows reports, up to the order of float64 additions); minima and maxima use
MAX (of x and of -x). Standard deviations are unbiased and two-pass: all-reduce the sum and the count,
then all-reduce sum_i (x_i - mean)^2 around the global mean, std = sqrt(that / (n - 1)) (no
cancellation of sum x^2 - n mean^2 when |mean| >> std). Without an initialised
torch.distributed process group the functions are purely local. Every rank gets the same dict.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def distributed_active() -> bool:
    """True when torch.distributed is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def all_reduce(tensor: torch.Tensor, op: str = "sum", process_group=None) -> torch.Tensor:
    """In-place all-reduce ("sum", "max" or "min") when distributed is active; returns the tensor."""
    if distributed_active():
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        dist.all_reduce(tensor, op=reduce_op, group=process_group)
    return tensor


def zero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[int, int]:
    """(number of groups whose rewards are all equal, number of groups) among these rows."""
    groups = torch.unique(group_ids)
    tied = 0
    for g in groups.tolist():
        r = rewards[group_ids == g]  # [G] rewards of group g
        tied += int(bool((r == r[0]).all()))
    return tied, int(groups.numel())


def _mean_std(total: float, sq_dev: float, count: float) -> tuple[float, float]:
    """Mean total / count and unbiased std sqrt(sq_dev / (count - 1)), sq_dev being the sum of
    squared deviations from that mean (two-pass; NaN mean when count is 0, NaN std when count < 2)."""
    if count <= 0:
        return math.nan, math.nan
    if count < 2:
        return total / count, math.nan
    return total / count, math.sqrt(sq_dev / (count - 1))


def rollout_metrics(buffer, process_group=None) -> dict[str, float]:
    """Reward, advantage, tie and length statistics of a RolloutBuffer, reduced across ranks."""
    rewards = buffer.rewards.double()  # [N]
    adv = buffer.advantages.double()  # [N]
    lengths = buffer.response_mask.double().sum(-1)  # [N] valid tokens per response
    tied, num_groups = zero_variance_groups(buffer.rewards, buffer.group_ids)
    term_names = sorted(buffer.reward_terms)  # same order on every rank
    sums = torch.tensor(  # pass 1: sums and counts
        [
            float(buffer.num_seqs), float(rewards.sum()), float(adv.sum()), float(lengths.sum()),
            float(tied), float(num_groups),
        ]
        + [float(buffer.reward_terms[k].double().sum()) for k in term_names],
        dtype=torch.float64,
        device=buffer.rewards.device,
    )
    all_reduce(sums, "sum", process_group)
    n, r_sum, a_sum, len_sum, tied_sum, groups_sum, *term_sums = sums.tolist()
    r_mean, a_mean = (r_sum / n, a_sum / n) if n else (0.0, 0.0)
    sq_devs = torch.tensor(  # pass 2: squared deviations from the global means
        [float((rewards - r_mean).square().sum()), float((adv - a_mean).square().sum())],
        dtype=torch.float64,
        device=buffer.rewards.device,
    )
    all_reduce(sq_devs, "sum", process_group)
    big = float("inf")
    extremes = torch.tensor(  # [max length, -min length] in one MAX reduction
        [float(lengths.max()) if lengths.numel() else -big, -float(lengths.min()) if lengths.numel() else -big],
        dtype=torch.float64,
        device=buffer.rewards.device,
    )
    all_reduce(extremes, "max", process_group)
    reward_mean, reward_std = _mean_std(r_sum, sq_devs[0].item(), n)
    adv_mean, adv_std = _mean_std(a_sum, sq_devs[1].item(), n)
    out = {
        "reward_mean": reward_mean,
        "reward_std": reward_std,
        "adv_mean": adv_mean,
        "adv_std": adv_std,
        "zero_var_group_frac": tied_sum / groups_sum if groups_sum else math.nan,
        "response_len_mean": len_sum / n if n else math.nan,
        "response_len_max": extremes[0].item(),
        "response_len_min": -extremes[1].item(),
        "num_seqs": n,
        "num_tokens": len_sum,
    }
    for name, total in zip(term_names, term_sums):
        out[f"reward/{name}"] = total / n if n else math.nan
    if term_names:
        out["reward/total"] = reward_mean
    return out
