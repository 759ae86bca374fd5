"""Rollout engine (models/rollout.py) on the tiny model: top-p filter and inverse-CDF sampler
numbers, log-prob parity with a separate and a plain forward, greedy parity with transformers'
generate, the EOS mask, and finished rows leaving the batch (compact=True) against finished rows
kept in it (compact=False)."""
import math
from contextlib import contextmanager

import pytest
import torch

from helpers import QUERIES, boosted_logit, random_images
from models.forward import plain_logprobs, response_logprobs
from models.policy import SegZeroPolicy
from models.rollout import generate, sample_inverse_cdf, top_p_filter


def test_top_p_filter_hand_computed():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    # row 0 sorted [0.5, 0.3, 0.2], mass before [0, 0.5, 0.8]; top_p 0.6 keeps 0.5 and 0.3
    # -> renormalised [0, 0.625, 0.375]. Row 1: mass before the top token is 0 -> only 0.8 kept.
    got = top_p_filter(probs, 0.6)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.625, 0.375], [0.0, 0.0, 1.0]]))
    assert top_p_filter(probs, 1.0) is probs


def test_top_p_filter_boundary_drops_a_token_whose_mass_before_equals_top_p():
    # sorted [0.5, 0.3, 0.2], mass before [0, 0.5, 0.8]: top_p 0.5 is reached by the first token
    # alone, so the second (mass before exactly 0.5) is dropped -> [1, 0, 0]
    got = top_p_filter(torch.tensor([[0.5, 0.3, 0.2]]), 0.5)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0, 0.0]]), atol=0, rtol=0)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.9)])
def test_rollout_logprobs_equal_a_separate_forward(tiny_policy, temperature, top_p):
    gen = torch.Generator().manual_seed(0)
    out = tiny_policy.rollout(random_images(2), QUERIES, 3, max_new_tokens=10, temperature=temperature,
                         top_p=top_p, generator=gen)
    assert out.response_ids.shape[0] == 6 and out.logp.shape == out.response_ids.shape
    with torch.no_grad():
        again = tiny_policy.logprobs(out.batch, out.response_ids, out.response_mask, 3,
                                         temperature=temperature)
    on = out.response_mask.bool()
    torch.testing.assert_close(out.logp[on], again[on], atol=1e-5, rtol=0)
    # sampling actually differs between the samples of a group
    assert len({tuple(r.tolist()) for r in out.response_ids[:3]}) > 1


def test_same_generator_seed_gives_same_samples(tiny_policy):
    a = tiny_policy.rollout(random_images(1), QUERIES[:1], 2, max_new_tokens=6,
                       generator=torch.Generator().manual_seed(7))
    b = tiny_policy.rollout(random_images(1), QUERIES[:1], 2, max_new_tokens=6,
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logp, b.logp)


def test_greedy_equals_transformers_generate(tiny_policy):
    model = tiny_policy.model
    batch = tiny_policy.prepare(random_images(2), QUERIES)
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
    got = generate(model, batch, 2, max_new_tokens=new, eos_token_id=tiny_policy.eos_token_id,
                   pad_token_id=tiny_policy.pad_token_id, greedy=True)
    assert got.response_ids.shape == (4, new)
    assert torch.equal(got.response_ids, ref.repeat_interleave(2, 0))
    texts = tiny_policy.complete(random_images(2), QUERIES, max_new_tokens=new)
    assert texts == tiny_policy.processor.tokenizer.batch_decode(ref, skip_special_tokens=True)


def test_mask_ends_at_first_eos_and_pads_after(tiny_policy):
    model, eos, pad = tiny_policy.model, tiny_policy.eos_token_id, tiny_policy.pad_token_id
    with boosted_logit(model, eos, 5.0):  # EOS likely: rows stop at different steps
        out = tiny_policy.rollout(random_images(2), QUERIES, 4, max_new_tokens=40,
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


def test_every_eos_id_of_the_generation_config_ends_a_row(tiny_policy):
    # The Qwen2.5-VL-Instruct checkpoints list eos_token_id [<|im_end|>, <|endoftext|>] in their
    # generation config, and transformers' generate stops at either: so must the rollout engine.
    model, tok = tiny_policy.model, tiny_policy.processor.tokenizer
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [im_end, endoftext]
    try:
        with boosted_logit(model, endoftext, 5.0):  # rows stop at different steps, on <|endoftext|>
            two_eos = SegZeroPolicy(model, tiny_policy.processor)
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


def test_generate_argument_errors(tiny_policy):
    batch = tiny_policy.prepare(random_images(1), QUERIES[:1])
    kwargs = dict(eos_token_id=tiny_policy.eos_token_id, pad_token_id=tiny_policy.pad_token_id)
    for bad, name in [(dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=True), "max_new_tokens"),
                      (dict(max_new_tokens=4, temperature=0.0), "temperature"),
                      (dict(max_new_tokens=4, temperature=float("inf")), "temperature"),
                      (dict(max_new_tokens=4, temperature=float("nan")), "temperature"),
                      (dict(max_new_tokens=4, top_p=0.0), "top_p"), (dict(max_new_tokens=4, top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=name):
            generate(tiny_policy.model, batch, 1, **bad, **kwargs)
    for bad_group in (0, True, 2.0):
        with pytest.raises(ValueError, match="group_size"):
            generate(tiny_policy.model, batch, bad_group, max_new_tokens=4, **kwargs)


# ---- the sampling settings at engine level ------------------------------------------------------
def test_tiny_top_p_samples_the_greedy_tokens(tiny_policy):
    """top_p 1e-9 keeps only the most probable token: sampling returns the greedy tokens, and the
    log-probs of the full softmax(logits / T) that greedy decoding returns."""
    batch = tiny_policy.prepare(random_images(2), QUERIES)
    kwargs = dict(max_new_tokens=16, eos_token_id=tiny_policy.eos_token_id,
                  pad_token_id=tiny_policy.pad_token_id, temperature=0.7)
    greedy = generate(tiny_policy.model, batch, 3, greedy=True, **kwargs)
    nucleus = generate(tiny_policy.model, batch, 3, top_p=1e-9, generator=torch.Generator().manual_seed(0), **kwargs)
    full = generate(tiny_policy.model, batch, 3, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    torch.testing.assert_close(nucleus.logp, greedy.logp, atol=0, rtol=0)
    assert not torch.equal(full.response_ids, greedy.response_ids)  # top_p 1 at T 0.7 does sample


def test_tiny_temperature_samples_the_greedy_tokens(tiny_policy):
    """At T = 1e-3 softmax(logits / T) puts all but exp(-gap / 1e-3) of its mass on the argmax:
    sampling returns the greedy tokens (argmax is the same at any T); at T = 1 it does not."""
    batch = tiny_policy.prepare(random_images(2), QUERIES)
    kwargs = dict(max_new_tokens=16, eos_token_id=tiny_policy.eos_token_id, pad_token_id=tiny_policy.pad_token_id)
    greedy = generate(tiny_policy.model, batch, 3, greedy=True, **kwargs)
    cold = generate(tiny_policy.model, batch, 3, temperature=1e-3, generator=torch.Generator().manual_seed(0),
                    **kwargs)
    warm = generate(tiny_policy.model, batch, 3, temperature=1.0, generator=torch.Generator().manual_seed(0),
                    **kwargs)
    assert torch.equal(cold.response_ids, greedy.response_ids)
    assert not torch.equal(warm.response_ids, greedy.response_ids)


@contextmanager
def fixed_logits(model, logits: dict[int, float]):
    """Within the block every forward's logits are -1e4 except ``logits`` {token id: value}."""
    def hook(module, inputs, output):
        out = torch.full_like(output, -1e4)
        for token, value in logits.items():
            out[..., token] = value
        return out

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("temperature,top_p,expected", [
    # softmax of log [0.5, 0.3, 0.2] at T 1: [0.5, 0.3, 0.2]
    (1.0, 1.0, [0.5, 0.3, 0.2]),
    # T 0.5 squares the probabilities: [0.25, 0.09, 0.04] / 0.38 = [0.6579, 0.2368, 0.1053]
    (0.5, 1.0, [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38]),
    # then top_p 0.7: mass before [0, 0.658, 0.895] keeps two -> [0.25, 0.09] / 0.34 = [0.7353, 0.2647, 0]
    (0.5, 0.7, [0.25 / 0.34, 0.09 / 0.34, 0.0]),
])
def test_sampled_token_frequencies_follow_temperature_and_top_p(tiny_policy, temperature, top_p, expected):
    """4000 rows of one step from fixed logits log [0.5, 0.3, 0.2] on ids [9, 5, 2] (not in
    vocabulary order). Binomial standard error <= sqrt(0.25 / 4000) = 0.008; 0.03 is 3.8 of them.
    The returned log-probs are those of the full softmax(logits / T), whatever top_p."""
    ids, probs = [9, 5, 2], [0.5, 0.3, 0.2]
    batch = tiny_policy.prepare(random_images(1), QUERIES[:1])
    with fixed_logits(tiny_policy.model, {i: math.log(p) for i, p in zip(ids, probs)}):
        out = generate(tiny_policy.model, batch, 4000, max_new_tokens=1, eos_token_id=tiny_policy.eos_token_id,
                       pad_token_id=tiny_policy.pad_token_id, temperature=temperature, top_p=top_p,
                       generator=torch.Generator().manual_seed(0))
    tokens = out.response_ids[:, 0]
    freq = torch.tensor([(tokens == i).double().mean().item() for i in ids], dtype=torch.float64)
    torch.testing.assert_close(freq, torch.tensor(expected, dtype=torch.float64), atol=0.03, rtol=0)
    assert freq.sum() == 1  # no other token is ever drawn
    full = torch.tensor([p ** (1 / temperature) for p in probs])
    full = (full / full.sum()).log()  # log softmax(log p / T)
    for i, lp in zip(ids, full.tolist()):
        drawn = out.logp[tokens == i, 0]
        if drawn.numel():
            torch.testing.assert_close(drawn, torch.full_like(drawn, lp), atol=1e-5, rtol=0)


# ---- finished rows leaving the batch ------------------------------------------------------------
def test_inverse_cdf_hand_computed():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]]).expand(5, -1)
    # cdf [0.2, 0.2, 0.7, 1.0]; first index with cdf > u: 0.1 -> 0, 0.2 -> 2 (index 1 has no
    # mass), 0.69 -> 2, 0.7 -> 3, 0.999 -> 3
    u = torch.tensor([0.1, 0.2, 0.69, 0.7, 0.999])
    assert sample_inverse_cdf(probs, u).tolist() == [0, 2, 2, 3, 3]
    # unnormalised rows: the same cdf scaled by 2 gives the same tokens
    assert sample_inverse_cdf(2 * probs, u).tolist() == [0, 2, 2, 3, 3]


def test_inverse_cdf_frequencies():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]]).expand(40000, -1)
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_inverse_cdf(probs, u), minlength=4).double() / 40000
    # binomial standard error sqrt(0.25 / 40000) = 0.0025; 0.01 is 4 of them
    torch.testing.assert_close(counts, torch.tensor([0.2, 0.0, 0.5, 0.3], dtype=torch.float64),
                               atol=0.01, rtol=0)
    assert counts[1] == 0  # a zero-probability token is never drawn


def _run(tiny_policy, batch, compact, sizes, temperature=0.8, top_p=1.0, check_every=4):
    model, eos = tiny_policy.model, tiny_policy.eos_token_id
    with boosted_logit(model, eos, 3.0, sizes):  # EOS likely: rows stop at different steps
        out = generate(model, batch, 4, max_new_tokens=40, eos_token_id=eos,
                       pad_token_id=tiny_policy.pad_token_id, temperature=temperature, top_p=top_p,
                       generator=torch.Generator().manual_seed(3), check_every=check_every, compact=compact)
        with torch.no_grad():
            plain = plain_logprobs(model, batch, out.response_ids, out.response_mask, 4, temperature)
    return out, plain


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_compaction_leaves_tokens_and_logprobs_unchanged(tiny_policy, top_p):
    batch = tiny_policy.prepare(random_images(2), QUERIES)
    sizes_c, sizes_p = [], []
    comp, plain_c = _run(tiny_policy, batch, True, sizes_c, top_p=top_p)
    full, plain_f = _run(tiny_policy, batch, False, sizes_p, top_p=top_p)
    lengths = comp.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 1  # rows finished at different steps
    # compaction happened: the decode batch shrank below N = 8 rows; the old path kept all 8
    decode_c, decode_p = sizes_c[1:-1], sizes_p[1:-1]  # drop the prefill and the plain forward
    assert min(decode_c) < 8 and decode_c == sorted(decode_c, reverse=True)
    assert set(decode_p) == {8}
    assert len(decode_c) == len(decode_p)  # same number of decode steps
    torch.testing.assert_close(comp.response_ids, full.response_ids, atol=0, rtol=0)
    torch.testing.assert_close(comp.response_mask, full.response_mask, atol=0, rtol=0)
    on = comp.response_mask.bool()
    torch.testing.assert_close(comp.logp[on], full.logp[on], atol=1e-5, rtol=0)
    # and both equal a plain forward over [prompt | response]
    torch.testing.assert_close(comp.logp[on], plain_c[on], atol=1e-5, rtol=0)
    torch.testing.assert_close(full.logp[on], plain_f[on], atol=1e-5, rtol=0)


def test_all_finished_stops_early(tiny_policy):
    # with EOS forced, every row ends at step 0; the loop stops at the first check (step 4)
    batch = tiny_policy.prepare(random_images(1), QUERIES[:1])
    sizes = []
    model, eos = tiny_policy.model, tiny_policy.eos_token_id
    with boosted_logit(model, eos, 1e4, sizes):  # EOS forced
        out = generate(model, batch, 3, max_new_tokens=50, eos_token_id=eos,
                       pad_token_id=tiny_policy.pad_token_id, check_every=4,
                       generator=torch.Generator().manual_seed(0))
    assert out.response_ids.shape == (3, 1) and bool((out.response_ids == eos).all())
    assert len(sizes) == 1 + 3  # prefill, then decode steps 1..3 before the check after step 3


def test_cpu_default_checks_every_step_with_the_same_tokens(tiny_policy):
    """On CPU the default ``check_every`` is 1: with EOS forced the decode stops right after the
    prefill; otherwise the tokens are those of checking every 16 steps."""
    batch = tiny_policy.prepare(random_images(2), QUERIES)
    model, eos = tiny_policy.model, tiny_policy.eos_token_id
    sizes = []
    with boosted_logit(model, eos, 1e4, sizes):  # EOS forced
        generate(model, batch, 3, max_new_tokens=50, eos_token_id=eos, pad_token_id=tiny_policy.pad_token_id,
                 generator=torch.Generator().manual_seed(0))
    assert len(sizes) == 1  # the prefill only
    sizes_d, sizes_s = [], []
    default, _ = _run(tiny_policy, batch, True, sizes_d, check_every=None)
    sparse, _ = _run(tiny_policy, batch, True, sizes_s, check_every=16)
    assert len(set(default.response_mask.sum(-1).tolist())) > 1
    torch.testing.assert_close(default.response_ids, sparse.response_ids, atol=0, rtol=0)
    torch.testing.assert_close(default.response_mask, sparse.response_mask, atol=0, rtol=0)
    on = default.response_mask.bool()
    torch.testing.assert_close(default.logp[on], sparse.logp[on], atol=1e-5, rtol=0)
    # rows run through the decode steps (the prefill and the plain forward dropped)
    assert sum(sizes_d[1:-1]) < sum(sizes_s[1:-1])  # finished rows left the batch sooner


def test_one_generator_per_prompt_makes_samples_independent_of_the_batch(tiny_policy):
    """Prompt b of a batched rollout with generators [g_0, g_1] draws exactly what a rollout of
    prompt b alone with g_b draws: how the trainer batches a rank's prompts and still samples what
    any other split of the global batch over ranks would."""
    images = random_images(2, seed=4)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    kwargs = dict(max_new_tokens=24, temperature=1.0)
    both = tiny_policy.rollout(images, QUERIES, 3, generator=gens(11, 12), **kwargs)
    for b, seed in enumerate((11, 12)):
        alone = tiny_policy.rollout(images[b:b + 1], QUERIES[b:b + 1], 3, generator=gens(seed), **kwargs)
        rows = slice(3 * b, 3 * b + 3)
        width = alone.response_ids.shape[1]
        assert torch.equal(both.response_ids[rows, :width], alone.response_ids)
        assert torch.equal(both.response_mask[rows, :width], alone.response_mask)
        assert both.response_mask[rows, width:].sum() == 0
        torch.testing.assert_close(both.logp[rows, :width], alone.logp, atol=1e-5, rtol=0)
    # the samples are random: the two prompts' streams differ, and a different seed differs
    other = tiny_policy.rollout(images[:1], QUERIES[:1], 3, generator=gens(99), **kwargs)
    assert not torch.equal(other.response_ids[:, :4], both.response_ids[:3, :4])
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_policy.rollout(images, QUERIES, 3, generator=gens(1), **kwargs)
