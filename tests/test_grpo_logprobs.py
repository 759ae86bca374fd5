"""grpo.logprobs: chunked log-probs / entropy against float64 references and hand numbers."""
import math

import pytest
import torch

from grpo import token_entropy, token_logprobs, token_logprobs_and_entropy


def _ref(logits, tokens, temperature):
    """float64 reference: full log_softmax, no chunking."""
    logp_all = torch.log_softmax(logits.double() / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def test_hand_computed():
    # logits [0, ln 3] -> softmax [1/4, 3/4]; logp(token 1) = ln 0.75 = -0.287682
    # entropy = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
    logits = torch.tensor([[0.0, math.log(3.0)]])
    tokens = torch.tensor([1])
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert ent.item() == pytest.approx(0.562335, abs=1e-6)
    # temperature 2: logits / 2 = [0, ln sqrt 3] -> softmax [1/(1+1.732), 1.732/2.732] = [0.36603, 0.63397]
    assert token_logprobs(logits, tokens, temperature=2.0).item() == pytest.approx(math.log(0.633975), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_matches_float64_reference(dtype, temperature, chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 11, generator=g) * 4).to(dtype)  # [N, L, V]
    tokens = torch.randint(0, 11, (3, 7), generator=g)
    logp, ent = token_logprobs_and_entropy(logits, tokens, temperature, chunk_size=chunk_size)
    ref_logp, ref_ent = _ref(logits, tokens, temperature)  # reference from the same (rounded) logits
    assert logp.dtype == torch.float32 and logp.shape == (3, 7)
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(token_logprobs(logits, tokens, temperature, chunk_size), logp)
    torch.testing.assert_close(token_entropy(logits, temperature, chunk_size), ent)


def test_extreme_logits_are_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    tokens = torch.tensor([1, 2])
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    ref_logp, ref_ent = _ref(logits, tokens, 1.0)
    # float32 spacing near 1e4 is ~1e-3; logp = [-2e4, -ln 3]
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)  # [0, ln 3]


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_gradients_match_reference(chunk_size):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, 9, (2, 5), generator=g)
    w1, w2 = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)

    x = logits.clone().requires_grad_(True)
    logp, ent = token_logprobs_and_entropy(x, tokens, 0.8, chunk_size)
    ((logp * w1).sum() + (ent * w2).sum()).backward()

    y = logits.clone().requires_grad_(True)
    ref_logp, ref_ent = _ref(y, tokens, 0.8)
    ((ref_logp * w1).sum() + (ref_ent * w2).sum()).backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 6, (4,), generator=g)
    # float32 internals -> loose tolerances; this checks the hand-written backward's formula
    torch.autograd.gradcheck(
        lambda z: token_logprobs_and_entropy(z, tokens, 1.5, chunk_size=3),
        (logits,), eps=1e-3, atol=1e-3, rtol=1e-3,
    )


def test_bf16_gradient_dtype_and_only_logp_or_only_entropy():
    logits = torch.randn(2, 3, 5, dtype=torch.bfloat16, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3))
    token_logprobs(logits, tokens).sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    # each row of d(sum logp)/d logits sums to 0 (onehot - p)
    assert logits.grad.float().sum(-1).abs().max() < 2e-2
    logits.grad = None
    token_entropy(logits).sum().backward()
    assert torch.isfinite(logits.grad.float()).all()


def test_errors():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), chunk_size=0)
