"""Group-relative advantages: one scalar per sampled response, shared by all its tokens.

Rewards r [N] hold G = ``group_size`` samples per prompt, the samples of one prompt adjacent
(rows g*G .. g*G + G - 1 belong to prompt g; N = B * G). Three estimators:

- ``estimator="grpo", scale_by_std=True`` (GRPO, Shao et al. 2024, arXiv 2402.03300, section 4.1.2,
  "outcome supervision"; the Seg-Zero recipe, SPEC.md section 8):

      A_i = (r_i - mean_g(r)) / (std_g(r) + eps),    std unbiased (divides by G - 1; torch.std
                                                      with correction=1, as in the released code)

  The paper writes std without saying which; we follow the released code (unbiased, eps 1e-6).
- ``estimator="grpo", scale_by_std=False`` (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783, eq. 3
  without the std division, which they show biases learning towards too easy / too hard prompts):

      A_i = r_i - mean_g(r)

- ``estimator="rloo"`` (REINFORCE leave-one-out, Ahmadian et al. 2024, arXiv 2402.14740, eq. 4;
  Kool et al. 2019): each sample's baseline is the mean of the OTHER G - 1 samples,

      A_i = r_i - (sum_g(r) - r_i) / (G - 1)  =  G / (G - 1) * (r_i - mean_g(r))

  ``scale_by_std`` is ignored for RLOO (the estimator is unbiased precisely because it is not
  rescaled by a statistic of the group).

A group whose rewards all tie gets A = 0 for every sample (no learning signal from it); see
``zero_var_group_frac`` of ``grpo.metrics.rollout_metrics``.

Precision: the group statistics (mean, std, leave-one-out sums) are computed in float64 and the
result is cast back to the rewards' dtype. In float32 a group of G equal non-dyadic rewards
gets a rounded mean (0.7 x 8: mean 0.69999993, each reward 0.69999999), so r - mean = 6.0e-8,
std = 6.4e-8 and A = 6.0e-8 / (6.4e-8 + 1e-6) = 0.056 for all 8 samples, one sign, from a
group that carries no signal. In float64 the sum of G equal
float32 values is exact (24 + log2(G) significant bits < 53), so the mean equals them exactly and
a tied group gets exactly 0.
"""
from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo")


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    eps: float = 1e-6,
    scale_by_std: bool = True,
    estimator: str = "grpo",
) -> torch.Tensor:
    """Advantages [N] (the rewards' float dtype, or float32) from rewards [N]; see module doc.

    Computed in float64 (module doc, "Precision"), returned in the rewards' dtype.

    Raises ValueError when rewards is not 1-D or not finite, when N is not a multiple of
    ``group_size``, when ``group_size`` < 2 where a std or a leave-one-out mean needs two samples,
    or for an unknown ``estimator``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    group_size = int(group_size)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    needs_two = estimator == "rloo" or scale_by_std
    if needs_two and group_size < 2:
        raise ValueError(
            f"group_size={group_size}: estimator={estimator!r} with scale_by_std={scale_by_std} "
            "needs at least 2 samples per group"
        )
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards {rewards.numel()} is not a multiple of group_size={group_size}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")

    out_dtype = rewards.dtype
    grouped = rewards.double().view(-1, group_size)  # [B, G] float64
    mean = grouped.mean(dim=1, keepdim=True)  # [B, 1]
    if estimator == "rloo":
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [B, G]
        return (grouped - baseline).reshape(-1).to(out_dtype)  # [N]
    adv = grouped - mean  # [B, G]
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True, correction=1)  # [B, 1], unbiased
        adv = adv / (std + eps)
    return adv.reshape(-1).to(out_dtype)  # [N]
