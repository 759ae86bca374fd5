"""GRPO in pure PyTorch, model-agnostic: tensors in, tensors out.

The math lives in small pure functions (one formula per docstring, with its source); the update
step wires them together:

    advantages.py  group_advantages      GRPO / Dr. GRPO / RLOO advantages from grouped rewards
    kl.py          kl_estimate           Schulman's k1 / k2 / k3 per-token KL estimators
    losses.py      clipped_surrogate, aggregate, grpo_loss, truncated_is_weight   PPO-clip objective,
                                         token averaging, sampler-mismatch weight
    logprobs.py    token_logprobs, token_entropy             chunked float32 log-probs / entropy
    buffer.py      RolloutBuffer         one rollout, with micro-batching
    update.py      UpdateConfig, grpo_update, compute_old_logprobs
    metrics.py     rollout_metrics       per-step diagnostics reduced across ranks
"""
from grpo.advantages import group_advantages
from grpo.buffer import RolloutBuffer
from grpo.kl import kl_estimate
from grpo.logprobs import token_entropy, token_logprobs, token_logprobs_and_entropy
from grpo.losses import aggregate, clipped_surrogate, grpo_loss, truncated_is_weight
from grpo.metrics import rollout_metrics
from grpo.update import UpdateConfig, compute_old_logprobs, grpo_update

__all__ = [
    "RolloutBuffer",
    "UpdateConfig",
    "aggregate",
    "clipped_surrogate",
    "compute_old_logprobs",
    "group_advantages",
    "grpo_loss",
    "grpo_update",
    "kl_estimate",
    "rollout_metrics",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
    "truncated_is_weight",
]
