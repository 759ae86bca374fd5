"""Shared-prefix rollout engine: B prompts, G samples each, one prefill per prompt (issue 7 item 1).

Our own decode loop instead of transformers' ``generate`` (DESIGN.md performance principles):

1. Prefill (once per prompt): each image goes through the vision tower once and each of the B
   prompts is run once, filling a KV cache of B rows (a DynamicCache sized to the prompt).
2. Expand: the prompt keys/values are copied G times into a preallocated ``StaticCache`` of
   N = B * G rows and P + max_new_tokens slots, ``repeat_interleave`` so the G samples of a prompt
   are adjacent rows. Decoding writes in place from then on: no per-step concatenation.
3. Decode: each step feeds the N last tokens with their 3-D rotary positions. Text positions after
   a prompt are the same on the three axes and continue from the prompt's largest position + 1
   (``next_pos`` of :func:`models.policy.prompt_positions`, equal to transformers' ``rope_deltas``
   + number of real tokens), so decode token t is at ``next_pos + t``.
4. Sampling in float32: s = logits / T; greedy takes argmax(s); otherwise top-p (nucleus)
   filtering of softmax(s) then a multinomial draw with the optional ``torch.Generator``.

Returned log-probs: log softmax(logits / T)[token] under the FULL temperature-scaled distribution,
computed by ``grpo.token_logprobs`` -- the same function and scaling as the training forward
(:func:`models.policy.response_logprobs`), so old-policy log-probs need no second forward. With
top_p < 1 this is not the probability of the truncated sampling distribution: the sampler
renormalises over the nucleus, while the PPO ratio and KL use the full distribution (as veRL and
the authors' released code do by recomputing log-probs with a plain forward). With greedy
decoding the log-probs are likewise those of softmax(logits / T).

Finished rows. A row that emitted EOS (``<|im_end|>``) keeps being decoded, but from then on its
token is forced to pad and its mask is 0 (the mask covers the tokens up to and including the
first EOS). Removing finished rows from the batch is a later optimisation (issue 7) not done here.
Whether all rows finished is checked on the host only every ``check_every`` steps, so there is no
host synchronisation per token; the result is trimmed to the longest response at the end.

Departure from transformers' ``generate``: none in the distribution (the greedy test compares
token for token); the attention of the decode steps spans all P + max_new_tokens cache slots
(unwritten slots are masked by causality), which is the StaticCache trade-off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from grpo import token_logprobs
from models.policy import PolicyBatch, left_align, prompt_positions


@dataclass
class Generation:
    """Output of :func:`generate`. N = B * G rows, samples of one prompt adjacent.

    Attributes:
        response_ids: [N, L] sampled ids; pad after a row's EOS.
        response_mask: [N, L] 1 for tokens up to and including the first EOS.
        logp: [N, L] float32 log softmax(logits / T) of each sampled token (see module docstring).
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


def _check_args(group_size, max_new_tokens, temperature, top_p, check_every):
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
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
    eos_token_id: int,
    pad_token_id: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    check_every: int = 16,
) -> Generation:
    """Decode ``group_size`` responses for each prompt of ``batch`` from one shared prefill."""
    _check_args(group_size, max_new_tokens, temperature, top_p, check_every)
    batch = left_align(batch)
    device = batch.device
    num_prompts, prompt_len = batch.input_ids.shape
    num_rows = num_prompts * group_size

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
        cache=prefix,
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
    )  # [N, P + max_new_tokens]; slots not yet written are hidden by causality
    next_pos = next_pos.repeat_interleave(group_size)  # [N]

    # 3. decode
    tokens = torch.full((num_rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((num_rows, max_new_tokens), dtype=torch.long, device=device)
    logp = torch.zeros((num_rows, max_new_tokens), dtype=torch.float32, device=device)
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        scaled = logits.float() / temperature  # [N, V]
        if greedy:
            next_tok = scaled.argmax(-1)  # [N]
        else:
            probs = top_p_filter(torch.softmax(scaled, dim=-1), top_p)
            next_tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [N]
        next_tok = next_tok.masked_fill(finished, pad_token_id)
        tokens[:, step] = next_tok
        mask[:, step] = (~finished).long()
        logp[:, step] = token_logprobs(logits[:, None], next_tok[:, None], temperature)[:, 0]
        finished = finished | (next_tok == eos_token_id)
        if step + 1 == max_new_tokens:
            break
        if (step + 1) % check_every == 0 and bool(finished.all()):  # the only host sync
            break
        step_pos = (next_pos + step).view(1, num_rows, 1).expand(3, -1, -1)  # [3, N, 1]
        out = model(
            input_ids=next_tok[:, None],
            attention_mask=attention_mask,
            position_ids=step_pos,
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]  # [N, V]

    length = max(int(mask.sum(-1).max()), 1)
    return Generation(tokens[:, :length], mask[:, :length], logp[:, :length])
