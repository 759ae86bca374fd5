"""The 2-D attention mask of the rollout's decode steps (models/rollout.py) covers the written cache
slots and the one being written, never the unwritten StaticCache slots after them.

sdpa and eager build the causal mask from the cache position, so they hide unwritten slots
whatever the 2-D mask says; transformers' flash_attention_2 path does not: ``flash_attention_mask``
hands the 2-D mask to the kernel (None when it is all ones and as long as the cache), and
``_upad_input`` slices the keys/values to the mask's length. The stand-in below copies that
handling in plain torch (flash-attn needs a GPU), so the test runs on CPU."""
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from helpers import QUERIES, boosted_logit, random_images
from models.forward import response_logprobs
from models.rollout import generate

STANDIN = "flash_attention_2_standin"


def flash_attention_2_standin(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' flash_attention_2 semantics: q [b, h, Lq, d], k/v [b, h_kv, Lk, d]; the 2-D
    mask (or None) marks the attended key slots; keys beyond its length are dropped; causal
    alignment is bottom-right (query i sees keys up to Lk - Lq + i)."""
    if attention_mask is not None and key.shape[2] > attention_mask.shape[-1]:
        key, value = key[:, :, :attention_mask.shape[-1]], value[:, :, :attention_mask.shape[-1]]
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    q_len, k_len = query.shape[2], key.shape[2]
    allow = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    if attention_mask is not None:
        allow = allow & attention_mask.bool()[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allow, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(STANDIN, flash_attention_2_standin)
AttentionMaskInterface.register(STANDIN, flash_attention_mask)


def _with_attention(model, name, fn):
    config = model.model.language_model.config
    saved = config._attn_implementation
    config._attn_implementation = name
    try:
        return fn()
    finally:
        config._attn_implementation = saved


def test_decode_mask_spans_written_slots_plus_one(tiny_policy):
    """Hand-computed lengths: prompt length P, 5 new tokens -> the 4 decode calls (token 4 is the
    last, never fed back) pass masks of P + 1, P + 2, P + 3, P + 4 columns; the prompt columns are
    the batch's mask repeated per sample, the others ones."""
    model = tiny_policy.model
    batch = tiny_policy.prepare(random_images(2), QUERIES)  # the two queries differ in length: padding
    prompt_len = batch.input_ids.shape[1]
    assert not bool(batch.attention_mask.all())
    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["attention_mask"].clone(), kwargs["input_ids"].shape[1]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate(model, batch, 2, max_new_tokens=5, eos_token_id=tiny_policy.eos_token_id,
                 pad_token_id=tiny_policy.pad_token_id, greedy=True)
    finally:
        handle.remove()
    decode = [mask for mask, width in seen[1:]]
    assert [width for _, width in seen] == [prompt_len, 1, 1, 1, 1]
    assert [mask.shape[1] for mask in decode] == [prompt_len + 1, prompt_len + 2, prompt_len + 3, prompt_len + 4]
    prompt_mask = batch.attention_mask.repeat_interleave(2, 0)  # [4, P]
    for mask in decode:
        assert torch.equal(mask[:, :prompt_len], prompt_mask)
        assert bool((mask[:, prompt_len:] == 1).all())


def test_decode_mask_follows_compaction(tiny_policy):
    """With rows leaving the batch (EOS made likely, check every step), each decode call's mask has
    one row per active row and P + step + 1 columns (step = that call's index)."""
    model = tiny_policy.model
    batch = tiny_policy.prepare(random_images(2), QUERIES)
    prompt_len = batch.input_ids.shape[1]
    seen = []

    def record(module, args, kwargs):
        seen.append((tuple(kwargs["attention_mask"].shape), kwargs["input_ids"].shape[0]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with boosted_logit(model, tiny_policy.eos_token_id, 3.0):
            generate(model, batch, 4, max_new_tokens=30, eos_token_id=tiny_policy.eos_token_id,
                     pad_token_id=tiny_policy.pad_token_id, generator=torch.Generator().manual_seed(3),
                     check_every=1)
    finally:
        handle.remove()
    decode = seen[1:]
    rows = [n for _, n in decode]
    assert min(rows) < 8  # rows left the batch
    for step, ((mask_rows, mask_cols), n) in enumerate(decode):
        assert (mask_rows, mask_cols) == (n, prompt_len + step + 1)


def test_rollout_logprobs_equal_the_training_forward_under_flash_attention_mask_handling(tiny_policy):
    """Under the flash-attention-2 stand-in, the rollout's log-probs equal the training forward's
    (same attention) on every response token: with one prompt (no padding: transformers passes no
    mask when it is all ones and as long as the cache) and with two (padding), with rows leaving
    the batch. Attending to unwritten cache slots measured a 1e-2 gap here."""
    model = tiny_policy.model
    for n in (1, 2):
        batch = tiny_policy.prepare(random_images(n), QUERIES[:n])
        kwargs = dict(max_new_tokens=24, eos_token_id=tiny_policy.eos_token_id,
                      pad_token_id=tiny_policy.pad_token_id, temperature=0.8, check_every=1)

        def rollout_and_score():
            out = generate(model, batch, 3, generator=torch.Generator().manual_seed(3), **kwargs)
            with torch.no_grad():
                again = response_logprobs(model, batch, out.response_ids, out.response_mask, 3, temperature=0.8)
            return out, again

        with boosted_logit(model, tiny_policy.eos_token_id, 3.0):
            out, again = _with_attention(model, STANDIN, rollout_and_score)
            ref = generate(model, batch, 3, generator=torch.Generator().manual_seed(3), **kwargs)  # sdpa
        on = out.response_mask.bool()
        assert len(set(out.response_mask.sum(-1).tolist())) > 1  # rows finished at different steps
        torch.testing.assert_close(out.logp[on], again[on], atol=1e-5, rtol=0)
        # the same tokens and log-probs as the sdpa rollout
        assert torch.equal(out.response_ids, ref.response_ids)
        torch.testing.assert_close(out.logp[on], ref.logp[on], atol=1e-5, rtol=0)
