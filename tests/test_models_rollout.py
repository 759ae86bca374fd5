"""Rollout engine (models/rollout.py) on the tiny model: top-p filter numbers, log-prob parity
with a separate forward, greedy parity with transformers' generate, and the EOS mask."""
import pytest
import torch

from models.forward import response_logprobs
from models.policy import SegZeroPolicy
from models.rollout import generate, top_p_filter
from models.tiny import build_tiny_qwen
from tiny_inputs import QUERIES, boosted_logit, random_images


@pytest.fixture(scope="module")
def policy():
    return SegZeroPolicy(*build_tiny_qwen(seed=0))


def test_top_p_filter_hand_computed():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    # row 0 sorted [0.5, 0.3, 0.2], mass before [0, 0.5, 0.8]; top_p 0.6 keeps 0.5 and 0.3
    # -> renormalised [0, 0.625, 0.375]. Row 1: mass before the top token is 0 -> only 0.8 kept.
    got = top_p_filter(probs, 0.6)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.625, 0.375], [0.0, 0.0, 1.0]]))
    assert top_p_filter(probs, 1.0) is probs


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.9)])
def test_rollout_logprobs_equal_a_separate_forward(policy, temperature, top_p):
    gen = torch.Generator().manual_seed(0)
    out = policy.rollout(random_images(2), QUERIES, 3, max_new_tokens=10, temperature=temperature,
                         top_p=top_p, generator=gen)
    assert out.response_ids.shape[0] == 6 and out.logp.shape == out.response_ids.shape
    with torch.no_grad():
        again = policy.logprobs(out.batch, out.response_ids, out.response_mask, 3,
                                         temperature=temperature)
    on = out.response_mask.bool()
    torch.testing.assert_close(out.logp[on], again[on], atol=1e-5, rtol=0)
    # sampling actually differs between the samples of a group
    assert len({tuple(r.tolist()) for r in out.response_ids[:3]}) > 1


def test_same_generator_seed_gives_same_samples(policy):
    a = policy.rollout(random_images(1), QUERIES[:1], 2, max_new_tokens=6,
                       generator=torch.Generator().manual_seed(7))
    b = policy.rollout(random_images(1), QUERIES[:1], 2, max_new_tokens=6,
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logp, b.logp)


def test_greedy_equals_transformers_generate(policy):
    model = policy.model
    batch = policy.prepare(random_images(2), QUERIES)
    new = 12
    with torch.no_grad():
        ref = model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
            mm_token_type_ids=batch.mm_token_type_ids, max_new_tokens=new, min_new_tokens=new,
            do_sample=False,
        )[:, batch.input_ids.shape[1]:]
    model.model.rope_deltas = None
    # group size 2: both samples of a prompt are the greedy answer (samples of a prompt adjacent)
    got = generate(model, batch, 2, max_new_tokens=new, eos_token_id=policy.eos_token_id,
                   pad_token_id=policy.pad_token_id, greedy=True)
    assert got.response_ids.shape == (4, new)
    assert torch.equal(got.response_ids, ref.repeat_interleave(2, 0))
    texts = policy.complete(random_images(2), QUERIES, max_new_tokens=new)
    assert texts == policy.processor.tokenizer.batch_decode(ref, skip_special_tokens=True)


def test_mask_ends_at_first_eos_and_pads_after(policy):
    model, eos, pad = policy.model, policy.eos_token_id, policy.pad_token_id
    with boosted_logit(model, eos, 5.0):  # EOS likely: rows stop at different steps
        out = policy.rollout(random_images(2), QUERIES, 4, max_new_tokens=40,
                             generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            again = response_logprobs(model, out.batch, out.response_ids, out.response_mask, 4)
    ids, mask = out.response_ids, out.response_mask
    lengths = mask.sum(-1)
    assert len(set(lengths.tolist())) > 1  # rows ended at different steps
    assert ids.shape[1] == int(lengths.max())  # trimmed to the longest response
    for row, n in zip(ids, lengths.tolist()):
        is_eos = (row == eos).nonzero().flatten().tolist()
        if is_eos:  # finished: the mask covers exactly the tokens up to and including the first EOS
            assert n == is_eos[0] + 1
            assert bool((row[n:] == pad).all())
        else:  # ran to the end of the tensor without EOS
            assert n == ids.shape[1]
    expected_mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    assert torch.equal(mask, expected_mask)  # a prefix of ones
    assert all("<|im_end|>" not in t for t in out.texts)  # EOS removed from the decoded text
    on = mask.bool()
    torch.testing.assert_close(out.logp[on], again[on], atol=1e-5, rtol=0)


def test_every_eos_id_of_the_generation_config_ends_a_row(policy):
    # The Qwen2.5-VL-Instruct checkpoints list eos_token_id [<|im_end|>, <|endoftext|>] in their
    # generation config, and transformers' generate stops at either: so must the rollout engine.
    model, tok = policy.model, policy.processor.tokenizer
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [im_end, endoftext]
    try:
        with boosted_logit(model, endoftext, 5.0):  # rows stop at different steps, on <|endoftext|>
            two_eos = SegZeroPolicy(model, policy.processor)
            assert two_eos.eos_token_ids == [im_end, endoftext]
            out = two_eos.rollout(random_images(2), QUERIES, 4, max_new_tokens=40,
                                  generator=torch.Generator().manual_seed(1))
            batch = two_eos.prepare(random_images(2), QUERIES)
            with torch.no_grad():
                ref = model.generate(  # default generation config: stops at either id, pads after
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                    mm_token_type_ids=batch.mm_token_type_ids, max_new_tokens=12, do_sample=False,
                )[:, batch.input_ids.shape[1]:]
            model.model.rope_deltas = None
            greedy = two_eos.rollout(random_images(2), QUERIES, 1, max_new_tokens=12, greedy=True)
    finally:
        model.generation_config.eos_token_id = saved
    lengths = out.response_mask.sum(-1)
    stopped = 0
    for row, n in zip(out.response_ids, lengths.tolist()):
        ends = torch.isin(row, torch.tensor([im_end, endoftext])).nonzero().flatten().tolist()
        if ends:
            assert n == ends[0] + 1  # the mask stops at the first of EITHER id
            stopped += int(row[ends[0]] == endoftext)
        else:
            assert n == out.response_ids.shape[1]
    assert stopped > 0 and len(set(lengths.tolist())) > 1
    assert torch.equal(greedy.response_ids, ref[:, :greedy.response_ids.shape[1]])
    assert greedy.response_ids.shape[1] == ref.shape[1]


def test_generate_argument_errors(policy):
    batch = policy.prepare(random_images(1), QUERIES[:1])
    kwargs = dict(eos_token_id=policy.eos_token_id, pad_token_id=policy.pad_token_id)
    for bad in [dict(max_new_tokens=0), dict(max_new_tokens=4, temperature=0.0),
                dict(max_new_tokens=4, top_p=0.0), dict(max_new_tokens=4, top_p=1.5)]:
        with pytest.raises(ValueError):
            generate(policy.model, batch, 1, **bad, **kwargs)
    with pytest.raises(ValueError, match="group_size"):
        generate(policy.model, batch, 0, max_new_tokens=4, **kwargs)
