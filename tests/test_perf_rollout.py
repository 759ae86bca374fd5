"""Rollout engine with finished rows leaving the batch (models/rollout.py, compact=True) against
finished rows kept in the batch (compact=False), the inverse-CDF sampler, and a plain forward's log-probs."""
import pytest
import torch

from models.forward import plain_logprobs
from models.policy import SegZeroPolicy
from models.rollout import generate, sample_inverse_cdf
from models.tiny import build_tiny_qwen
from tiny_inputs import QUERIES, boosted_logit, random_images


@pytest.fixture(scope="module")
def policy():
    return SegZeroPolicy(*build_tiny_qwen(seed=0))


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


def _run(policy, batch, compact, sizes, temperature=0.8, top_p=1.0):
    model, eos = policy.model, policy.eos_token_id
    with boosted_logit(model, eos, 3.0, sizes):  # EOS likely: rows stop at different steps
        out = generate(model, batch, 4, max_new_tokens=40, eos_token_id=eos,
                       pad_token_id=policy.pad_token_id, temperature=temperature, top_p=top_p,
                       generator=torch.Generator().manual_seed(3), check_every=4, compact=compact)
        with torch.no_grad():
            plain = plain_logprobs(model, batch, out.response_ids, out.response_mask, 4, temperature)
    return out, plain


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_compaction_leaves_tokens_and_logprobs_unchanged(policy, top_p):
    batch = policy.prepare(random_images(2), QUERIES)
    sizes_c, sizes_p = [], []
    comp, plain_c = _run(policy, batch, True, sizes_c, top_p=top_p)
    full, plain_f = _run(policy, batch, False, sizes_p, top_p=top_p)
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


def test_all_finished_stops_early(policy):
    # with EOS forced, every row ends at step 0; the loop stops at the first check (step 4)
    batch = policy.prepare(random_images(1), QUERIES[:1])
    sizes = []
    model, eos = policy.model, policy.eos_token_id
    with boosted_logit(model, eos, 1e4, sizes):  # EOS forced
        out = generate(model, batch, 3, max_new_tokens=50, eos_token_id=eos,
                       pad_token_id=policy.pad_token_id, check_every=4,
                       generator=torch.Generator().manual_seed(0))
    assert out.response_ids.shape == (3, 1) and bool((out.response_ids == eos).all())
    assert len(sizes) == 1 + 3  # prefill, then decode steps 1..3 before the check after step 3


def test_one_generator_per_prompt_makes_samples_independent_of_the_batch(policy):
    """Prompt b of a batched rollout with generators [g_0, g_1] draws exactly what a rollout of
    prompt b alone with g_b draws: how the trainer batches a rank's prompts and still samples what
    any other split of the global batch over ranks would."""
    images = random_images(2, seed=4)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    kwargs = dict(max_new_tokens=24, temperature=1.0)
    both = policy.rollout(images, QUERIES, 3, generator=gens(11, 12), **kwargs)
    for b, seed in enumerate((11, 12)):
        alone = policy.rollout(images[b:b + 1], QUERIES[b:b + 1], 3, generator=gens(seed), **kwargs)
        rows = slice(3 * b, 3 * b + 3)
        width = alone.response_ids.shape[1]
        assert torch.equal(both.response_ids[rows, :width], alone.response_ids)
        assert torch.equal(both.response_mask[rows, :width], alone.response_mask)
        assert both.response_mask[rows, width:].sum() == 0
        torch.testing.assert_close(both.logp[rows, :width], alone.logp, atol=1e-5, rtol=0)
    # the samples are random: the two prompts' streams differ, and a different seed differs
    other = policy.rollout(images[:1], QUERIES[:1], 3, generator=gens(99), **kwargs)
    assert not torch.equal(other.response_ids[:, :4], both.response_ids[:3, :4])
    with pytest.raises(ValueError, match="one per prompt"):
        policy.rollout(images, QUERIES, 3, generator=gens(1), **kwargs)
