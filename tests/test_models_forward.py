"""Padding-free training forward (models/forward.py shared_prefix_logprobs) against the plain path.

The plain path computes N = B * G rows of [prompt | response]; the shared-prefix path computes each
prompt once and lets its G responses attend to that copy. They are the same function of the
parameters, so log-probs, entropies and the gradients on EVERY parameter must agree (fp32).
"""
import numpy as np
import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

from models.batch import prepare_inputs
from models.forward import plain_logprobs, response_logprobs, shared_prefix_logprobs
from models.tiny import build_tiny_qwen

QUERIES = ["the red circle", "the largest blue square left of the green triangle and the star"]


def _images(n, seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 256, (40 + 13 * i, 60, 3), dtype=np.uint8) for i in range(n)]


def _responses(rows, length, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, vocab, (rows, length), generator=g)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    lengths[0] = length  # one full row so the padded width is used
    mask = (torch.arange(length)[None] < lengths[:, None]).long()  # a prefix of ones per row
    return ids, mask


def _grads(model, fn, batch, ids, mask, group, temperature):
    model.zero_grad(set_to_none=True)
    logp, entropy = fn(model, batch, ids, mask, group, temperature, True)
    # a loss that touches every valid position with distinct weights, entropy included
    weights = torch.linspace(0.5, 1.5, logp.numel()).view_as(logp)
    ((logp * weights + 0.1 * entropy) * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logp.detach(), entropy.detach(), grads


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_shared_prefix_equals_plain_logprobs_and_gradients(tiny_qwen, padding_side):
    model, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(2), QUERIES, padding_side=padding_side)
    assert not bool(batch.attention_mask.all())  # the two prompts differ in length: padding present
    group, temperature = 3, 0.7
    ids, mask = _responses(6, 9, model.config.text_config.vocab_size)
    lp_a, ent_a, g_a = _grads(model, plain_logprobs, batch, ids, mask, group, temperature)
    lp_b, ent_b, g_b = _grads(model, shared_prefix_logprobs, batch, ids, mask, group, temperature)
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=0)
    assert g_a.keys() == g_b.keys()
    assert any("visual" in n for n in g_a) and any("language_model" in n for n in g_a)
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-4, atol=1e-4, msg=name)


def test_left_and_right_padding_identical_on_shared_path(tiny_qwen):
    model, processor = tiny_qwen
    left = prepare_inputs(processor, _images(2), QUERIES, padding_side="left")
    right = prepare_inputs(processor, _images(2), QUERIES, padding_side="right")
    ids, mask = _responses(4, 6, model.config.text_config.vocab_size, seed=1)
    with torch.no_grad():
        a = response_logprobs(model, left, ids, mask, 2)  # default: shared prefix
        b = response_logprobs(model, right, ids, mask, 2)
        c = plain_logprobs(model, left, ids, mask, 2)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def test_single_token_responses(tiny_qwen):
    # L = 1: the prompt pass's last column predicts the one response token; the response pass
    # still runs, on token 0 (1 column, its prediction dropped), so the model is called twice
    # whatever the response lengths (the same collectives on every rank under FSDP2)
    model, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(1), QUERIES[:1])
    prompt_len = batch.input_ids.shape[1]
    calls = []  # (rows, columns) of each call of the model's forward
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        for length in (1, 3):
            ids, mask = _responses(2, length, model.config.text_config.vocab_size, seed=2)
            calls.clear()
            with torch.no_grad():
                a = response_logprobs(model, batch, ids, mask, 2)
            # prompt pass [B = 1, P], then response pass [N = 2, W]: W = L - 1, and 1 when L = 1
            assert calls == [(1, prompt_len), (2, 2 if length == 3 else 1)]
            with torch.no_grad():
                b = plain_logprobs(model, batch, ids, mask, 2)
            assert a.shape == (2, length)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    finally:
        handle.remove()


def test_shared_prefix_under_activation_checkpointing(tiny_qwen):
    # grpo.parallel wraps decoder blocks in torch's non-reentrant checkpoint: the backward replays
    # each block, calling the cache's update again; the capture/prefix caches must give the same
    # gradients as without checkpointing.
    model, processor = build_tiny_qwen(seed=0)
    model.train()
    batch = prepare_inputs(processor, _images(2), QUERIES)
    ids, mask = _responses(4, 5, model.config.text_config.vocab_size, seed=3)
    _, _, before = _grads(model, shared_prefix_logprobs, batch, ids, mask, 2, 1.0)
    blocks = {id(b) for b in model.model.language_model.layers}
    apply_activation_checkpointing(model, check_fn=lambda m: id(m) in blocks)
    _, _, after = _grads(model, shared_prefix_logprobs, batch, ids, mask, 2, 1.0)
    assert before.keys() == {k.replace("._checkpoint_wrapped_module", "") for k in after}
    for name, grad in after.items():
        torch.testing.assert_close(grad, before[name.replace("._checkpoint_wrapped_module", "")],
                                   rtol=1e-4, atol=1e-5, msg=name)
