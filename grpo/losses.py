"""The GRPO objective: clipped surrogate + KL penalty - entropy bonus, and how tokens are averaged.

Notation (shapes): N responses, L padded response length; logp, old_logp, ref_logp [N, L] are the
log-probs of the sampled tokens under the current, the "old" (the policy that sampled, as the
trainer's own forward computes it) and the frozen reference policy; rollout_logp [N, L] are the
sampler's own numbers for the same tokens (only used by 5. below); adv is [N] (one advantage per
response, broadcast over its tokens) or [N, L]; mask [N, L] is 1 on real response tokens (up to
and including EOS) and 0 on padding.

1. Clipped surrogate, per token (PPO, Schulman et al. 2017, arXiv 1707.06347, eq. 7; GRPO,
   Shao et al. 2024, arXiv 2402.03300, eq. 3), written as a loss to MINIMISE:

       ratio   = exp(clamp(logp - old_logp, -20, 20))
       l_pg    = max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps_high))
       clipped = the second (clipped) term is the larger one, i.e. the clip is binding

   clip_eps_high > clip_eps is the asymmetric "clip-higher" of DAPO (arXiv 2503.14476, eq. 10);
   clip_eps_high = 0 means clip_eps_high = clip_eps (symmetric, the paper).
   Departure: the log-ratio is clamped to [-20, 20] before exp. Besides guarding exp against
   overflow, the clamp ZEROES THE GRADIENT of every token with |logp - old_logp| > 20 (clamp passes
   no gradient outside its range): a second, silent clip. Where the PPO clip binds the gradient is
   0 anyway; the clamp adds the tokens where it does not: A < 0 with log ratio > 20 (the unclipped
   term -A * ratio, whose gradient -A * ratio > |A| e^20 becomes 0) and A > 0 with log ratio < -20
   (gradient -A * ratio, of size below A e^-20, becomes 0). ``clipped`` (and so clipfrac) does not
   count these tokens. The clamp cannot bind with one optimizer step per rollout, where
   old_logp = logp.detach() and the log ratio is exactly 0; with several steps it binds only on a
   token whose probability moved by a factor above e^20 (4.9e8) since sampling.

2. KL penalty to the reference, per token: kl_estimate(logp, ref_logp, kl_estimator), k3 by default
   (GRPO eq. 4), added to the loss as ``kl_coef * KL`` (GRPO's beta; 5e-3 in the Seg-Zero recipe).

3. Entropy bonus: ``- entropy_coef * H`` (the released Seg-Zero code subtracts 1e-3 x entropy; the
   paper is silent; default here 0).

4. Aggregation over tokens (``aggregate``), the same for every term of the loss, three ways
   (``aggregation``; default "seq-mean-token-mean", the recipe's):

       "token-mean"              sum_{i,t} m_it l_it / T            T = number of valid tokens
                                 (DAPO, arXiv 2503.14476, eq. 8: each response weighs by its length)
       "seq-mean-token-mean"     sum_i [ sum_t m_it l_it / sum_t m_it ] / S     S = number of
                                 sequences (GRPO paper, eq. 3: 1/G sum_i 1/|o_i| sum_t). This is
                                 what the released Seg-Zero configs compute (SPEC.md section 8):
                                 micro-batches of ONE response, a masked token mean in each,
                                 divided by the number of micro-batches, averaged over ranks
       "seq-mean-token-sum-norm" sum_{i,t} m_it l_it / (S * L_max)   (Dr. GRPO, arXiv 2503.20783,
                                 eq. 3: a constant normaliser, L_max = ``max_new_tokens``, the
                                 response-length budget)

   The normalisers T, S and L_max are GLOBAL: the caller passes the counts of the whole
   (mini-)batch over all micro-batches and ranks, so that the micro-batch losses, each divided by
   the same constant, SUM to the full-batch loss, and so do their gradients. When the counts are
   omitted the local ones are used (one full batch in one pass).

   What ``grpo_loss`` logs: the loss's own terms (policy_loss, kl, entropy) follow ``aggregation``,
   so that loss = policy_loss + kl_coef x kl - entropy_coef x entropy holds in every mode (under
   "seq-mean-token-sum-norm" they are therefore scaled by mean length / L_max, like the loss); the
   pure diagnostics (clipfrac, approx_kl_old, tis_weight) are token means whatever
   ``aggregation``, sum_{i,t} m_it x_it / T with the same global T, so clipfrac is the fraction of
   the valid tokens whose clip binds. Every logged value sums over micro-batches and ranks.

5. Optional truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework
   Secretly Brings You Off-Policy RL Training"): the samples were drawn by the sampler, whose
   log-probs rollout_logp differ from the trainer's old_logp for the same policy (another kernel,
   batch shape, precision). The policy-gradient term of each token is weighted by

       w = min(pi_old / pi_rollout, C) = min(exp(old_logp - rollout_logp), C)     (detached)

   before aggregation (``truncated_is_weight``; ``is_weight`` of grpo_loss); KL and entropy terms
   are not weighted. Off unless a weight is passed; the released Seg-Zero code has no such term.

The objective in the GRPO paper is maximised; here everything is a loss (its negation).
"""
from __future__ import annotations

import torch

from grpo.kl import kl_estimate

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss [N, L], clipped bool [N, L]) of the PPO clipped surrogate; see module doc."""
    if logp.shape != old_logp.shape:
        raise ValueError(f"logp shape {tuple(logp.shape)} != old_logp shape {tuple(old_logp.shape)}")
    assert 0 <= clip_eps < 1 and clip_eps_high >= 0, f"clip_eps {clip_eps}, clip_eps_high {clip_eps_high}"
    if adv.shape == logp.shape[:1] and logp.dim() == 2:
        adv = adv.unsqueeze(-1)  # [N] -> [N, 1], broadcast over tokens
    elif adv.shape != logp.shape:
        raise ValueError(
            f"adv must be [N] or [N, L] for logp {tuple(logp.shape)}, got {tuple(adv.shape)}"
        )
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # [N, L]
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + (clip_eps_high or clip_eps))
    per_token = torch.maximum(loss_unclipped, loss_clipped)  # pessimistic bound
    clipped = loss_clipped > loss_unclipped
    return per_token, clipped


def truncated_is_weight(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token TIS weight min(exp(old_logp - rollout_logp), cap), detached, same shape; module doc.

    The log-ratio is clamped to [-20, 20] before exp (overflow guard only: any cap below e^20 binds first).
    """
    if old_logp.shape != rollout_logp.shape:
        raise ValueError(
            f"old_logp shape {tuple(old_logp.shape)} != rollout_logp shape {tuple(rollout_logp.shape)}"
        )
    assert cap > 0, f"cap must be > 0, got {cap}"
    log_ratio = (old_logp - rollout_logp).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio).clamp(max=cap)


def aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "seq-mean-token-mean",
    *,
    num_tokens: float | int | torch.Tensor | None = None,
    num_seqs: float | int | torch.Tensor | None = None,
    max_new_tokens: float | int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar from per-token values [N, L] and mask [N, L], with global normalisers; module doc.

    Local defaults: num_tokens = mask.sum() (at least 1), num_seqs = N (every row counts, even one
    with no valid token), max_new_tokens = L (the padded width). Passed counts must be > 0.
    """
    assert aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}"
    if per_token_loss.shape != mask.shape or per_token_loss.dim() != 2:
        raise ValueError(
            f"per_token_loss {tuple(per_token_loss.shape)} and mask {tuple(mask.shape)} must both be [N, L]"
        )
    for name, value in (("num_tokens", num_tokens), ("num_seqs", num_seqs), ("max_new_tokens", max_new_tokens)):
        assert value is None or float(value) > 0, f"{name} must be > 0, got {value}"
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask  # [N, L]; padding contributes exactly 0
    if aggregation == "token-mean":
        if num_tokens is None:
            num_tokens = mask.sum().clamp(min=1)
        return masked.sum() / num_tokens
    if num_seqs is None:
        num_seqs = per_token_loss.shape[0]
    if aggregation == "seq-mean-token-mean":
        seq_mean = masked.sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
        return seq_mean.sum() / num_seqs
    if max_new_tokens is None:
        max_new_tokens = per_token_loss.shape[1]
    return masked.sum() / (num_seqs * max_new_tokens)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 5e-3,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    clip_eps: float = 0.2,
    clip_eps_high: float = 0.0,
    aggregation: str = "seq-mean-token-mean",
    num_tokens: float | int | torch.Tensor | None = None,
    num_seqs: float | int | torch.Tensor | None = None,
    max_new_tokens: float | int | torch.Tensor | None = None,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = policy + kl_coef * kl - entropy_coef * entropy, every term aggregated by ``aggregation``.

    Shapes: logp, old_logp, ref_logp, mask, entropy, is_weight [N, L]; adv [N] or [N, L].
    Returns (loss, terms); terms holds detached 0-dim tensors, each a sum over this micro-batch
    divided by GLOBAL counts, so that each sums over micro-batches and ranks to its full-batch value:
      "loss", "policy_loss", "kl" (k-estimate to the reference, when ref_logp is given),
          "entropy" (when given)   aggregated by ``aggregation``: the numbers the loss is made of,
          loss = policy_loss + kl_coef * kl - entropy_coef * entropy;
      "clipfrac", "approx_kl_old", "tis_weight"   token means whatever ``aggregation``:
          sum_{i,t} m_it x_it / num_tokens (module doc, 4), x_it being 1 where the clip binds and 0
          elsewhere (so clipfrac is the fraction of the valid tokens that are clipped), k3 of the
          current policy against old_logp (how far the update moved) and the importance weight
          (when ``is_weight`` is given).
    ref_logp may be None only when kl_coef == 0; entropy may be None only when entropy_coef == 0.
    ``is_weight`` [N, L] (e.g. ``truncated_is_weight``) multiplies the per-token policy-gradient
    loss (module doc, 5); None: no weight.
    """
    if ref_logp is None and kl_coef != 0:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp, got None")
    if entropy is None and entropy_coef != 0:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy, got None")
    counts = dict(num_tokens=num_tokens, num_seqs=num_seqs, max_new_tokens=max_new_tokens)

    def agg(values: torch.Tensor) -> torch.Tensor:  # the loss's aggregation
        return aggregate(values, mask, aggregation, **counts)

    def token_mean(values: torch.Tensor) -> torch.Tensor:  # the diagnostics' (global T)
        return aggregate(values.detach(), mask, "token-mean", num_tokens=num_tokens)

    per_token_pg, clipped = clipped_surrogate(logp, old_logp, adv, clip_eps, clip_eps_high)
    if is_weight is not None:
        if is_weight.shape != logp.shape:
            raise ValueError(f"is_weight shape {tuple(is_weight.shape)} != logp shape {tuple(logp.shape)}")
        per_token_pg = per_token_pg * is_weight.detach()
    policy_loss = agg(per_token_pg)
    loss = policy_loss
    terms: dict[str, torch.Tensor] = {"policy_loss": policy_loss.detach()}
    if ref_logp is not None:
        kl = agg(kl_estimate(logp, ref_logp, kl_estimator))
        loss = loss + kl_coef * kl
        terms["kl"] = kl.detach()
    if entropy is not None:
        mean_entropy = agg(entropy)
        loss = loss - entropy_coef * mean_entropy
        terms["entropy"] = mean_entropy.detach()
    with torch.no_grad():
        terms["clipfrac"] = token_mean(clipped.to(per_token_pg.dtype))
        terms["approx_kl_old"] = token_mean(kl_estimate(logp, old_logp, "k3"))
        if is_weight is not None:
            terms["tis_weight"] = token_mean(is_weight.to(per_token_pg.dtype))
    terms["loss"] = loss.detach()
    return loss, terms
