"""The training forward: per-token log-probs of given responses (DESIGN.md data flow step 5).

:func:`response_logprobs`: log pi(y_t | prompt, y_<t) [N, L] for N = B * G responses (row i uses
prompt i // G), in one differentiable forward. Each image goes through the vision tower ONCE and
its embeddings are shared by the G rows of its group. Logits are computed only at the L response
positions. Temperature T scales the logits exactly as in sampling (softmax(z / T)).

Qwen2.5-VL rotary positions (3-D "M-RoPE"). A text token has the same position on the temporal,
height and width axes; an image token at merged-grid cell (h, w) has (s, s + h, s + w) where s is
the position after the preceding text; text after the image resumes at s + max(grid_h, grid_w).
Prompt positions come from the model's own ``get_rope_index`` (padding excluded). Response token
t of a row then has position ``next_pos + t`` on all three axes, where ``next_pos`` = (largest
prompt position) + 1 -- exactly what transformers' generation does with ``rope_deltas``
(``rope_deltas = next_pos - number of real prompt tokens``). Because positions skip padding,
left- and right-padded prompts give the same log-probs (tested); internally prompts are always
left-aligned so that the response occupies the last L columns.

Model code never imports torch.distributed. The training forward calls three pieces of the
model: ``get_image_features`` (vision tower), the input embedding, then ``forward`` on
``inputs_embeds``; :class:`ResponseLogProbs` makes that one module whose ``forward`` FSDP2 can wrap
as the root.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from grpo import token_entropy, token_logprobs
from models.batch import PolicyBatch, left_align
from models.compat import CACHE_KWARG


def prompt_positions(model, batch: PolicyBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D rotary positions of the prompts and the first response position.

    Returns:
        position_ids: [3, B, P] (padding columns hold 0; they are masked out of attention).
        next_pos: [B] = max prompt position + 1, the position of response token 0 on all 3 axes.
    """
    position_ids, rope_deltas = model.model.get_rope_index(
        batch.input_ids,
        mm_token_type_ids=batch.mm_token_type_ids,
        image_grid_thw=batch.image_grid_thw,
        attention_mask=batch.attention_mask,
    )
    # rope_deltas [B, 1] = (max position + 1) - (number of real tokens)
    next_pos = rope_deltas.view(-1).to(batch.device) + batch.attention_mask.sum(-1)  # [B]
    return position_ids.to(batch.device), next_pos


def image_embeddings(model, batch: PolicyBatch) -> tuple[torch.Tensor, ...]:
    """Vision tower output of each image: B tensors [T*H*W / 4, hidden] (one per prompt)."""
    out = model.get_image_features(batch.pixel_values, batch.image_grid_thw)
    return tuple(out.pooler_output)


def _check_responses(batch: PolicyBatch, response_ids, response_mask, group_size: int) -> None:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if response_ids.dim() != 2 or response_ids.shape != response_mask.shape:
        raise ValueError(
            f"response_ids and response_mask must both be [N, L], got {tuple(response_ids.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    if response_ids.shape[0] != len(batch) * group_size:
        raise ValueError(
            f"{response_ids.shape[0]} responses for {len(batch)} prompts x group_size {group_size}"
        )


def response_logprobs(
    model,
    batch: PolicyBatch,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    group_size: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """Per-token log-probs (and optionally entropies) of given responses; differentiable.

    Each prompt is computed once and its G responses attend to that one copy
    (:func:`shared_prefix_logprobs`); :func:`plain_logprobs` is the reference it is tested against.

    Args:
        batch: B prompts (any padding side).
        response_ids: [N, L] with N = B * group_size; row i answers prompt i // group_size.
        response_mask: [N, L] 1 = real response token (a prefix of each row, ending at EOS).
        temperature: T of softmax(logits / T); use the sampling temperature.

    Returns:
        logp [N, L] float32 (and entropy [N, L] float32 when ``return_entropy``). Positions where
        response_mask is 0 hold the values of whatever token is there; callers mask them.
    """
    _check_responses(batch, response_ids, response_mask, group_size)
    return shared_prefix_logprobs(model, batch, response_ids, response_mask, group_size, temperature,
                                  return_entropy)


def _prompt_embeddings(model, batch: PolicyBatch, group_size: int) -> torch.Tensor:
    """Input embeddings [B * group_size, P, hidden] of the (left-aligned) prompts, image slots filled.

    Built here rather than inside forward: image features go into the PROMPT's image slots only. A
    sampled response may contain an image-placeholder id; during decoding it was embedded as a
    plain token, so it must be here too (forward would count it as a slot). Each image is encoded
    once; with group_size > 1 its features are shared by the G copies of its prompt.
    """
    per_image = image_embeddings(model, batch)  # B tensors [tokens_i, hidden]
    shared = torch.cat([per_image[i // group_size] for i in range(len(batch) * group_size)])
    input_ids = batch.input_ids.repeat_interleave(group_size, 0)  # [B*G, P]
    image_slots = input_ids == model.config.image_token_id  # [B*G, P]
    if int(image_slots.sum()) != shared.shape[0]:
        raise ValueError(f"{int(image_slots.sum())} image slots in the prompts but {shared.shape[0]} image features")
    embeds = model.get_input_embeddings()(input_ids)  # [B*G, P, hidden]
    return embeds.masked_scatter(image_slots.unsqueeze(-1), shared.to(embeds.dtype))


def plain_forward(model, batch, response_ids, response_mask, group_size, **model_kwargs):
    """The model's output on N rows of [prompt | response], the prompt computed G times (the plain
    path; prompts left-aligned, so response token t sits in column P + t).

    One forward over [N, P + L] (positions [3, N, P + L]); the lm head runs on the last L + 1
    columns only (``out.logits`` [N, L + 1, V]). ``model_kwargs`` go to the model's forward (e.g.
    ``output_attentions=True``: attentions over all P + L columns).
    """
    batch = left_align(batch)
    resp_len = response_ids.shape[1]
    pos, next_pos = prompt_positions(model, batch)  # [3, B, P], [B]
    pos = pos.repeat_interleave(group_size, dim=1)  # [3, N, P]
    steps = torch.arange(resp_len, device=batch.device)
    resp_pos = (next_pos.repeat_interleave(group_size)[:, None] + steps)  # [N, L]
    position_ids = torch.cat([pos, resp_pos.unsqueeze(0).expand(3, -1, -1)], dim=2)  # [3, N, P+L]
    attention_mask = torch.cat(
        [batch.attention_mask.repeat_interleave(group_size, 0), response_mask.to(batch.attention_mask.dtype)], 1
    )  # [N, P+L]
    prompt_embeds = _prompt_embeddings(model, batch, group_size)  # [N, P, hidden]
    inputs_embeds = torch.cat([prompt_embeds, model.get_input_embeddings()(response_ids)], 1)  # [N, P+L, hidden]
    return model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=resp_len + 1,  # hidden states of the last L+1 columns only
        **model_kwargs,
    )


def plain_logits(model, batch, response_ids, response_mask, group_size) -> torch.Tensor:
    """Logits [N, L, V] of the plain path (:func:`plain_forward`): column t scores response token t
    given the prompt and y_<t."""
    out = plain_forward(model, batch, response_ids, response_mask, group_size)
    # column P-1+t predicts response token t: drop the last column's prediction
    return out.logits[:, :-1]  # [N, L, V]


def plain_logprobs(model, batch, response_ids, response_mask, group_size, temperature=1.0,
                   return_entropy=False):
    """The plain path (the reference): log-probs [N, L] of :func:`plain_logits` at temperature T."""
    logits = plain_logits(model, batch, response_ids, response_mask, group_size)  # [N, L, V]
    logp = token_logprobs(logits, response_ids, temperature)
    if return_entropy:
        return logp, token_entropy(logits, temperature)
    return logp


class _CaptureLayer(DynamicLayer):
    """Cache layer for the prompt pass: keeps the LAST keys/values it was given and returns them.

    Overwriting instead of appending makes it safe under non-reentrant activation checkpointing:
    the backward replay of a block calls ``update`` again with the same values and gets the same
    shapes back (an appending cache would double the prompt).
    """

    def update(self, key_states, value_states, *args, **kwargs):
        self.is_initialized = True
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _SharedPrefixLayer(DynamicLayer):
    """Cache layer for the response pass: a fixed prefix [N, kv_heads, P, head_dim] that is never written.

    ``update`` returns cat(prefix, new) along the sequence without storing anything, so a replay
    (activation checkpointing) sees exactly what the first pass saw.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.is_initialized = True
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys, key_states], dim=-2),  # [N, kv_heads, P + L', head_dim]
                torch.cat([self.values, value_states], dim=-2))


def shared_prefix_logprobs(model, batch, response_ids, response_mask, group_size, temperature=1.0,
                           return_entropy=False):
    """Training forward where the G responses of a prompt attend to ONE copy of the prompt.

    1. Prompt pass, B rows: ``inputs_embeds`` [B, P] (each image encoded once), positions
       [3, B, P]; its keys/values are captured per layer ([B, kv_heads, P, head_dim]) and the logits
       of the last column kept: they predict response token 0 of each of the G samples.
    2. The captured keys/values are expanded to N = B * G rows with ``repeat_interleave``
       (differentiable: the backward sums the G rows' gradients into the one prompt).
    3. Response pass, N rows: response tokens 0..L-2 (token L-1 predicts nothing we need) at
       positions ``next_pos + t`` on the three rotary axes, attending to the expanded prefix
       (attention mask [N, P + L - 1] = prompt mask, then response mask). Its logits [N, L-1, V]
       predict response tokens 1..L-1. With L = 1 the pass still runs, on token 0 (W = 1 column
       instead of L - 1 = 0), and its one prediction is dropped from the result but stays in the
       autograd graph (a zero gradient): the model is called the same number of times, forward
       and backward, whatever the response lengths, so under FSDP2 every rank issues the same
       all-gathers and reduce-scatters even when all responses of one rank are one token long.
    4. Log-probs by ``grpo.token_logprobs`` (chunked) on each of the two logit tensors; the
       results [N, 1] and [N, W] are concatenated (not the logits) and cut to [N, L].

    Why prefix sharing rather than packing: docs/ENGINE.md.

    Exactness: the same arithmetic as :func:`plain_logprobs` (the prompt's hidden states of the G
    copies there are identical to the one copy here); parity of log-probs and of the gradients on
    every parameter is tested in fp32. Under FSDP2 this calls the root ``forward`` twice: the root
    must keep its parameters gathered between them (``reshard_after_forward=False`` on the root,
    as grpo.parallel.shard_model does).
    """
    batch = left_align(batch)
    num_rows, resp_len = response_ids.shape
    num_layers = model.config.text_config.num_hidden_layers
    pos, next_pos = prompt_positions(model, batch)  # [3, B, P], [B]

    # 1. prompt pass: B rows, once
    capture = Cache(layers=[_CaptureLayer() for _ in range(num_layers)])
    out = model(
        inputs_embeds=_prompt_embeddings(model, batch, 1),  # [B, P, hidden]
        attention_mask=batch.attention_mask,
        position_ids=pos,
        **{CACHE_KWARG: capture},
        use_cache=True,
        logits_to_keep=1,
    )
    first = out.logits[:, -1:].repeat_interleave(group_size, 0)  # [N, 1, V]: predicts token 0
    logp_first = token_logprobs(first, response_ids[:, :1], temperature)  # [N, 1]
    ent_first = token_entropy(first, temperature) if return_entropy else None

    # 2. expand the prompt keys/values to the N rows (samples of a prompt adjacent)
    prefix = Cache(layers=[
        _SharedPrefixLayer(layer.keys.repeat_interleave(group_size, 0),  # [N, kv_heads, P, head_dim]
                           layer.values.repeat_interleave(group_size, 0))
        for layer in capture.layers
    ])
    del capture, out

    # 3. response pass: tokens 0..W-1 on top of the shared prefix, W = L-1 (1 when L = 1: step 3)
    width = max(resp_len - 1, 1)
    inputs = response_ids[:, :width]  # [N, W]
    targets = response_ids[:, 1:] if resp_len > 1 else inputs  # [N, W]; for L = 1 a stand-in, dropped
    steps = torch.arange(width, device=batch.device)
    resp_pos = next_pos.repeat_interleave(group_size)[:, None] + steps  # [N, W]
    attention_mask = torch.cat(
        [batch.attention_mask.repeat_interleave(group_size, 0),
         response_mask[:, :width].to(batch.attention_mask.dtype)], 1,
    )  # [N, P + W]
    out = model(
        inputs_embeds=model.get_input_embeddings()(inputs),  # [N, W, hidden]
        attention_mask=attention_mask,
        position_ids=resp_pos.unsqueeze(0).expand(3, -1, -1),  # [3, N, W]
        **{CACHE_KWARG: prefix},
        use_cache=True,
    )
    logits = out.logits  # [N, W, V]: column t predicts response token t + 1
    logp = torch.cat([logp_first, token_logprobs(logits, targets, temperature)], 1)[:, :resp_len]  # [N, L]
    if return_entropy:
        return logp, torch.cat([ent_first, token_entropy(logits, temperature)], 1)[:, :resp_len]
    return logp



class ResponseLogProbs(nn.Module):
    """The training forward as a module: ``forward(...)`` = :func:`response_logprobs` of ``self.model``.

    Why a module: under FSDP2 the trainer shards each vision and decoder block, then THIS module as
    the root (grpo.parallel.shard_model). The training forward calls pieces of the model outside
    the model's own ``forward`` (the vision tower, the input embedding, the decoder with a prefix
    cache); as the root's ``forward`` they all run with the root's parameters gathered, and the
    backward hooks cover them. Calling it is calling :func:`response_logprobs` (same arguments,
    same result), sharded or not.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: PolicyBatch, response_ids: torch.Tensor, response_mask: torch.Tensor,
                group_size: int, temperature: float = 1.0, return_entropy: bool = False):
        out = response_logprobs(self.model, batch, response_ids, response_mask, group_size,
                                temperature=temperature, return_entropy=return_entropy)
        # FSDP2 hooks the root's outputs for its backward; a view output could lose that hook to a
        # later in-place op, so views ([N, L] slices of a wider result) are returned as copies
        own = [t if t._base is None else t.clone() for t in (out if return_entropy else (out,))]
        return tuple(own) if return_entropy else own[0]
