"""Per-token log-probabilities and entropies from logits, chunked so memory stays small.

What it computes, for logits z [..., L, V] over a vocabulary of V tokens, the chosen tokens
y [..., L] and a sampling temperature T > 0 (the same scaling as in sampling: softmax(z / T)):

    s          = z / T                                   (in float32)
    logp[t]    = s[t, y_t] - logsumexp_v s[t, v]          log pi(y_t | context)
    entropy[t] = -sum_v p[t, v] log p[t, v]               p = softmax(s[t])

Why chunked. A language model's logits for a batch are [N, L, V] with V ~ 150k (Qwen2.5). Upcasting
them all to float32 and taking a full log_softmax builds a [N, L, V] float32 tensor (and autograd
keeps it for the backward pass). Here the flattened positions are processed ``chunk_size`` rows at
a time: each chunk is upcast, reduced to one number per position, and thrown away. The backward
pass (a hand-written autograd Function) recomputes each chunk's softmax rather than storing it, so
the only saved tensors are the logits themselves (in their own dtype) and one float32 number per
position. Results are float32 whatever the logits dtype (bf16 logits are common in training).

Gradients, with p = softmax(s) and log p = s - logsumexp(s), for one position:

    d logp / d s_v     = 1[v = y] - p_v
    d entropy / d s_v  = -p_v (log p_v + entropy)
    d / d z_v          = (d / d s_v) / T

Padding: every position is computed (a pad token is just some vocabulary index); callers mask the
results. Nothing here writes sentinel values.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 1024
"""Positions (rows of the flattened [M, V] logits) upcast to float32 at once."""


def _check(logits: torch.Tensor, temperature: float, chunk_size: int) -> None:
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., L, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if not (temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _chunk_log_softmax(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """One chunk of logits z [c, V] -> log softmax(z / T) [c, V] in float32 (this chunk only)."""
    s = z.float() / temperature  # [c, V] float32
    return s - torch.logsumexp(s, dim=-1, keepdim=True)  # [c, V]


class _ChunkedLogProbEntropy(torch.autograd.Function):
    """(logits [M, V], tokens [M]) -> (logp [M], entropy [M] or empty), chunked over M."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk_size, with_entropy):
        num_pos = logits.shape[0]
        logp = torch.empty(num_pos, dtype=torch.float32, device=logits.device)
        entropy = torch.empty(num_pos if with_entropy else 0, dtype=torch.float32, device=logits.device)
        for start in range(0, num_pos, chunk_size):
            stop = min(start + chunk_size, num_pos)
            log_p = _chunk_log_softmax(logits[start:stop], temperature)  # [c, V]
            logp[start:stop] = log_p.gather(-1, tokens[start:stop].unsqueeze(-1)).squeeze(-1)
            if with_entropy:
                # -sum p log p (not lse - sum p s, which cancels badly for peaked distributions)
                entropy[start:stop] = -(log_p.exp() * log_p).sum(-1)
        ctx.save_for_backward(logits, tokens, entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.with_entropy = with_entropy
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, tokens, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        temperature = ctx.temperature
        grad_logits = torch.empty_like(logits)  # [M, V], the logits' own dtype
        for start in range(0, logits.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, logits.shape[0])
            log_p = _chunk_log_softmax(logits[start:stop], temperature)  # [c, V]
            p = log_p.exp()  # [c, V]
            grad_s = torch.zeros_like(log_p)  # [c, V]
            if grad_logp is not None:
                g = grad_logp[start:stop].float()  # [c]
                # d logp / d s = onehot(y) - p
                grad_s -= g.unsqueeze(-1) * p
                grad_s.scatter_add_(-1, tokens[start:stop].unsqueeze(-1), g.unsqueeze(-1))
            if ctx.with_entropy and grad_entropy is not None:
                g = grad_entropy[start:stop].float()  # [c]
                # d entropy / d s = -p (log p + entropy)
                grad_s -= g.unsqueeze(-1) * p * (log_p + entropy[start:stop].unsqueeze(-1))
            grad_logits[start:stop] = (grad_s / temperature).to(logits.dtype)
        return grad_logits, None, None, None, None


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``tokens`` and the entropies of the distributions, in one pass.

    Args:
        logits: [..., L, V], any float dtype; position t holds the logits that predict tokens[..., t]
            (i.e. already shifted by the caller).
        tokens: [..., L] integer token ids, the same leading shape as logits.
        temperature: the sampling temperature T; the distribution is softmax(logits / T).
        chunk_size: number of positions upcast to float32 at a time.

    Returns:
        (logp, entropy), both float32 [..., L], differentiable with respect to logits.
    """
    return _run(logits, tokens, temperature, chunk_size, with_entropy=True)


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log softmax(logits / T)[tokens] as float32 [..., L]; see the module docstring."""
    return _run(logits, tokens, temperature, chunk_size, with_entropy=False)[0]


def token_entropy(
    logits: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Entropy of softmax(logits / T) at each position, float32 [..., L]."""
    dummy = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)  # any valid index
    return _run(logits, dummy, temperature, chunk_size, with_entropy=True)[1]


def _run(logits, tokens, temperature, chunk_size, with_entropy):
    _check(logits, temperature, chunk_size)
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens shape {tuple(tokens.shape)} must equal logits shape without the vocabulary "
            f"dimension {tuple(logits.shape[:-1])}"
        )
    if tokens.is_floating_point():
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    lead = logits.shape[:-1]
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [M, V], M = prod(...) * L
    flat_tokens = tokens.reshape(-1).long()  # [M]
    logp, entropy = _ChunkedLogProbEntropy.apply(
        flat_logits, flat_tokens, float(temperature), int(chunk_size), with_entropy
    )
    logp = logp.view(lead)  # [..., L]
    entropy = entropy.view(lead) if with_entropy else None
    return logp, entropy
