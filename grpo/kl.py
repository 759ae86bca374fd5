"""Per-token estimators of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

Source: J. Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html).
With x ~ pi (the sampled token), logr = log pi_ref(x) - log pi(x) = ref_logp - logp:

    "k1" = -logr = logp - ref_logp               unbiased, high variance, can be negative
    "k2" = 0.5 * logr^2                          biased, low variance, >= 0
    "k3" = exp(logr) - logr - 1                  unbiased, low variance, >= 0

GRPO (arXiv 2402.03300, eq. 4) uses k3 as a loss term per token; the released Seg-Zero code calls
it "low_var_kl" (after veRL) and clamps its value to [-10, 10]; we do the same.

Departure, values unchanged: for k3 the log-ratio is also clamped to [-20, 20] before exp. Any
|logr| >= 20 already gives k3 >= 19 > 10 (clamped to 10), so no value changes, but exp can no
longer overflow to inf, whose gradient through the clamp would be 0 * inf = NaN.

Shapes: logp and ref_logp are the same shape (typically [N, L]); the result has that shape.
Padding positions are computed like any other and must be masked by the caller.
"""
from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
K3_CLAMP = 10.0
LOG_RATIO_CLAMP = 20.0


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate of ``estimator`` in {"k1", "k2", "k3"}; see the module docstring."""
    assert estimator in KL_ESTIMATORS, f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}"
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp shape {tuple(logp.shape)} != ref_logp shape {tuple(ref_logp.shape)}")
    log_ratio = ref_logp - logp  # log pi_ref(x) / pi(x)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
