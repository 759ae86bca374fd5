"""Shared-prefix rollout engine: B prompts, G samples each, one prefill per prompt.

1. Prefill (once per prompt): each image through the vision tower once, each of the B prompts run
   once into a KV cache of B rows.
2. Expand: the prompt keys/values copied G times (``repeat_interleave``: the G samples of a prompt
   are adjacent rows) into a preallocated ``StaticCache`` of N = B * G rows and P + max_new_tokens
   slots; decoding writes in place.
3. Decode: each step feeds the N last tokens; decode token t of a row is at rotary position
   ``next_pos + t`` on the three axes (:func:`models.forward.prompt_positions`).
4. Sampling in float32: s = logits / T; greedy takes argmax(s); otherwise top-p filtering of
   softmax(s), then inverse-CDF sampling with one uniform u per row and step, drawn for ALL N rows
   (or G per prompt from that prompt's own generator) whatever rows are still decoding: the token
   is the first index whose cumulative probability exceeds u * total. Same generator seed -> same
   tokens, with or without compaction (tested).

Returned log-probs: log softmax(logits / T)[token] under the FULL temperature-scaled distribution,
by ``grpo.token_logprobs``, as the training forward computes them
(:func:`models.forward.response_logprobs`). With top_p < 1 this is not the probability under the
truncated sampling distribution (the PPO ratio and KL use the full one, as veRL and the authors'
code do); with greedy decoding they are likewise those of softmax(logits / T).

Finished rows: a row that emitted any of the EOS ids gets pad tokens and mask 0 after it (the mask
covers the tokens up to and including the first EOS). Its log-probs after the EOS are undefined
(0.0 in the steps after it left the batch, the pad token's log-prob while it stays in it): every
consumer reads them through the mask only. The host looks at the batch every
``check_every`` steps only: it stops when every row finished, and with ``compact=True`` (default)
``index_select``s the working set (cache, mask, positions, next tokens) down to the active rows;
``compact=False`` keeps finished rows (masked). The result is trimmed to the longest response.
``check_every`` defaults to 16 on an accelerator, where each look is a host sync that stalls the
queue, and to 1 on CPU, where it costs nothing and finished rows leave the batch at once; the
tokens are the same either way (tested).
Why the engine is built this way, and what it measures: docs/ENGINE.md.

Sampling settings: the engine applies ``greedy``, ``temperature`` and ``top_p`` from its arguments
and stops at the EOS ids it is given, and nothing else: it reads no ``generation_config`` (only
:class:`models.policy.SegZeroPolicy` reads one, for its EOS ids), so the other settings a
checkpoint's generation config may carry for transformers' ``generate`` (``repetition_penalty``,
``top_k``, ``min_p``, its own ``do_sample`` / ``temperature`` / ``top_p``) are not applied. With
those settings alone the distribution is that of ``generate``'s temperature and top-p warpers
(a token is kept when the mass of the tokens more probable than it is below top_p; the two differ
only by float rounding at that boundary); the greedy test compares token for token.

Attention mask of a decode step: the StaticCache holds P + max_new_tokens slots, and decode step t
passes the 2-D mask of its first P + t + 1 (the slots written so far and the one it writes).
sdpa and eager build their causal mask from the cache position and pad a shorter 2-D mask with
zeros, so for them the length makes no difference; flash-attention-2 takes the 2-D mask at face
value and attends to the slots it marks (tested with a stand-in that copies transformers' mask
handling: tests/test_models_rollout_attention.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache, StaticCache

from grpo import token_logprobs
from models.compat import CACHE_KWARG
from models.batch import PolicyBatch, left_align
from models.forward import prompt_positions


@dataclass
class Generation:
    """Output of :func:`generate`. N = B * G rows, samples of one prompt adjacent.

    Attributes:
        response_ids: [N, L] sampled ids; pad after a row's EOS.
        response_mask: [N, L] 1 for tokens up to and including the first EOS.
        logp: [N, L] float32 log softmax(logits / T) of each sampled token (see module docstring);
            undefined where response_mask is 0.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logp: torch.Tensor


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row of ``probs`` [N, V] outside the nucleus, renormalised.

    The nucleus is the smallest set of most probable tokens whose total probability reaches
    top_p (the most probable token is always kept). Example: probs [0.5, 0.3, 0.2], top_p 0.6 ->
    sorted cumulative [0.5, 0.8, 1.0]; a token is dropped when the mass BEFORE it already reaches
    top_p: masses before = [0, 0.5, 0.8] -> keep the first two -> [0.625, 0.375, 0].
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [N, V]
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # [N, V]
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)  # back to vocabulary order
    return kept / kept.sum(-1, keepdim=True)


def sample_inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` [n, V] (rows need not sum to 1) from uniforms [n] in [0, 1).

    token = the first index v with cdf[v] > u * cdf[V-1], cdf = cumsum(probs). A zero-probability
    token v has cdf[v] == cdf[v-1], so it is never the first to exceed (right=True search).
    Example: probs [0.2, 0, 0.5, 0.3], cdf [0.2, 0.2, 0.7, 1.0]: u 0.1 -> 0, u 0.2 -> 2 (index 1
    has zero mass), u 0.69 -> 2, u 0.7 -> 3.
    """
    cdf = probs.cumsum(-1)  # [n, V]
    target = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # [n, 1]
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [n]
    return token.clamp_max(probs.shape[-1] - 1)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_args(group_size, max_new_tokens, temperature, top_p, check_every):
    if not _is_int(group_size) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every!r}")


@torch.no_grad()
def generate(
    model,
    batch: PolicyBatch,
    group_size: int,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    check_every: int | None = None,
    compact: bool = True,
) -> Generation:
    """Decode ``group_size`` responses for each prompt of ``batch`` from one shared prefill.

    ``generator``: one ``torch.Generator`` for the whole batch, or one per prompt (B of them: the
    G samples of prompt b then depend only on generator b). ``compact``: remove finished rows from
    the batch at each check (see the module docstring). ``eos_token_id``: one id or several (a row
    finishes at the first of any of them, as transformers' ``generate`` does with a list: the
    Qwen2.5-VL-Instruct checkpoints list ``<|im_end|>`` and ``<|endoftext|>``).
    """
    batch = left_align(batch)
    device = batch.device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 16
    _check_args(group_size, max_new_tokens, temperature, top_p, check_every)
    num_prompts, prompt_len = batch.input_ids.shape
    num_rows = num_prompts * group_size
    if isinstance(generator, Sequence) and len(generator) != num_prompts:
        raise ValueError(f"got {len(generator)} generators for {num_prompts} prompts: pass one per prompt or one")

    def draw_uniforms() -> torch.Tensor:
        """[N] uniforms in [0, 1) for every output row, whatever rows are still decoding."""
        if isinstance(generator, Sequence):
            return torch.cat([torch.rand(group_size, generator=g, device=device) for g in generator])
        return torch.rand(num_rows, generator=generator, device=device)

    eos_ids = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                           dtype=torch.long, device=device)  # [E]
    if eos_ids.numel() == 0:
        raise ValueError("eos_token_id must be an id or a non-empty list of ids, got an empty list")

    # 1. prefill B prompts (each image encoded once), logits of the last column only
    pos, next_pos = prompt_positions(model, batch)  # [3, B, P], [B]
    prefix = DynamicCache(config=model.config)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=pos,
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        mm_token_type_ids=batch.mm_token_type_ids,
        **{CACHE_KWARG: prefix},
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1].repeat_interleave(group_size, 0)  # [N, V]

    # 2. expand the prefix to N rows in a preallocated cache of P + max_new_tokens slots
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_new_tokens)
    for static_layer, layer in zip(cache.layers, prefix.layers):
        static_layer.update(layer.keys.repeat_interleave(group_size, 0),  # [N, kv_heads, P, head_dim]
                            layer.values.repeat_interleave(group_size, 0))
    del prefix, out
    attention_mask = torch.cat(
        [batch.attention_mask.repeat_interleave(group_size, 0),
         batch.attention_mask.new_ones(num_rows, max_new_tokens)], dim=1,
    )  # [N, P + max_new_tokens]; decode step t passes its first P + t + 1 columns
    next_pos = next_pos.repeat_interleave(group_size)  # [N]

    # 3. decode. Outputs are [N, T]; the working set has n <= N rows, rows[i] = its output row.
    tokens = torch.full((num_rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((num_rows, max_new_tokens), dtype=torch.long, device=device)
    logp = torch.zeros((num_rows, max_new_tokens), dtype=torch.float32, device=device)
    rows = torch.arange(num_rows, device=device)  # [n]
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)  # [n]
    for step in range(max_new_tokens):
        scaled = logits.float() / temperature  # [n, V]
        if greedy:
            next_tok = scaled.argmax(-1)  # [n]
        else:
            # uniforms for all N rows every step, so the stream ignores the working set
            uniform = draw_uniforms()[rows]  # [n]
            next_tok = sample_inverse_cdf(top_p_filter(torch.softmax(scaled, dim=-1), top_p), uniform)
        next_tok = next_tok.masked_fill(finished, pad_token_id)
        tokens[rows, step] = next_tok
        mask[rows, step] = (~finished).long()
        logp[rows, step] = token_logprobs(logits[:, None], next_tok[:, None], temperature)[:, 0]
        finished = finished | torch.isin(next_tok, eos_ids)
        if step + 1 == max_new_tokens:
            break
        if (step + 1) % check_every == 0:  # the only host syncs
            active = int((~finished).sum())
            if active == 0:
                break
            if compact and active < rows.shape[0]:
                keep = (~finished).nonzero().squeeze(1)  # [n'] working-set rows still decoding
                for layer in cache.layers:
                    layer.keys = layer.keys.index_select(0, keep)  # [n', kv_heads, P + T, head_dim]
                    layer.values = layer.values.index_select(0, keep)
                    layer.batch_size = active
                rows, finished, next_tok = rows[keep], finished[keep], next_tok[keep]
                attention_mask, next_pos = attention_mask[keep], next_pos[keep]
        step_pos = (next_pos + step).view(1, -1, 1).expand(3, -1, -1)  # [3, n, 1]
        # the mask covers the P + step written slots and the one this step writes, never the
        # unwritten slots after them (flash-attention takes a 2-D mask at face value)
        out = model(
            input_ids=next_tok[:, None],
            attention_mask=attention_mask[:, :prompt_len + step + 1],  # [n, P + step + 1]
            position_ids=step_pos,
            **{CACHE_KWARG: cache},
            use_cache=True,
        )
        logits = out.logits[:, -1]  # [n, V]

    length = max(int(mask.sum(-1).max()), 1)
    return Generation(tokens[:, :length], mask[:, :length], logp[:, :length])
