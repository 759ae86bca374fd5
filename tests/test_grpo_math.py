"""Formulas of grpo.advantages, grpo.kl and grpo.losses: hand-computed numbers and float64 references."""
import math

import pytest
import torch

from grpo import aggregate, clipped_surrogate, group_advantages, grpo_loss, kl_estimate, truncated_is_weight


# ---- advantages ------------------------------------------------------------------------------
def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # G = 2: each group [1, 0]: mean 0.5, unbiased std = sqrt((0.25 + 0.25) / 1) = 0.70711
    # A = +-0.5 / (0.70711 + 1e-6) = +-0.707106
    torch.testing.assert_close(group_advantages(r, 2), torch.tensor([0.707106, -0.707106, 0.707106, -0.707106]))
    # G = 4: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = 0.57735; A = +-0.5 / 0.57735 = +-0.866025
    torch.testing.assert_close(group_advantages(r, 4), torch.tensor([0.866024, -0.866024, 0.866024, -0.866024]))
    # Dr. GRPO: r - mean = +-0.5
    torch.testing.assert_close(group_advantages(r, 2, scale_by_std=False), torch.tensor([0.5, -0.5, 0.5, -0.5]))


def test_rloo_hand_computed():
    # [3, 1, 2]: baselines (1+2)/2 = 1.5, (3+2)/2 = 2.5, (3+1)/2 = 2 -> A = [1.5, -1.5, 0]
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, estimator="rloo"),
                               torch.tensor([1.5, -1.5, 0.0]))


def test_tied_group_gives_zero_advantage():
    # group [2, 2]: r - mean = 0, std = 0 -> 0 / (0 + 1e-6) = 0; group [0, 4]: std 2.8284 -> +-0.7071
    adv = group_advantages(torch.tensor([2.0, 2.0, 0.0, 4.0]), 2)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -0.707107, 0.707107]))


@pytest.mark.parametrize("group_size", [3, 5, 7, 8, 16])
@pytest.mark.parametrize("value", [0.7, 2.2, 0.1, 2.9])
def test_exactly_tied_non_dyadic_rewards_give_exactly_zero_advantage(group_size, value):
    # float32 statistics of 0.7 x 8: mean 0.69999993 != 0.69999999, std 6.4e-8 -> A = 0.056 for
    # every sample; in float64 the sum of G equal float32 values is exact, so A = 0 exactly.
    rewards = torch.full((2 * group_size,), value)  # float32, as train.make_buffer builds them
    rewards[group_size:] = torch.arange(group_size) / group_size  # a second, untied group
    for kwargs in ({}, {"scale_by_std": False}, {"estimator": "rloo"}):
        adv = group_advantages(rewards, group_size, **kwargs)
        assert adv.dtype == torch.float32
        assert torch.equal(adv[:group_size], torch.zeros(group_size)), (kwargs, adv[:group_size])
        assert adv[group_size:].abs().max() > 0.1


def test_group_advantages_float64_reference():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(6 * 5, generator=g, dtype=torch.float64)
    grouped = r.view(6, 5)
    mean = grouped.mean(1, keepdim=True)
    std = ((grouped - mean).square().sum(1, keepdim=True) / 4).sqrt()  # unbiased, by hand
    torch.testing.assert_close(group_advantages(r, 5), ((grouped - mean) / (std + 1e-6)).reshape(-1))
    loo = torch.stack([grouped[:, i] - (grouped.sum(1) - grouped[:, i]) / 4 for i in range(5)], 1)
    torch.testing.assert_close(group_advantages(r, 5, estimator="rloo"), loo.reshape(-1))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size=1"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(torch.zeros(4), 2, estimator="ppo")
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, math.nan]), 2)
    # G = 1 without std is allowed: every advantage is 0
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0]), 1, scale_by_std=False), torch.zeros(2))


# ---- KL --------------------------------------------------------------------------------------
def test_kl_hand_computed():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    # k1 = logp - ref = [1, -1]; k2 = 0.5 * 1^2 = [0.5, 0.5]
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([0.5, 0.5]))
    # k3: logr = ref - logp = [-1, 1]: e^-1 + 1 - 1 = 0.367879; e^1 - 1 - 1 = 0.718282
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([0.367879, 0.718282]))
    assert kl_estimate(logp, logp, "k3").abs().max() == 0


def test_k3_extreme_log_ratios_clamped_with_finite_gradient():
    # logr = -50 -> clamped to -20: e^-20 + 20 - 1 = 19 -> clamp 10; logr = +50: e^20 -> clamp 10
    logp = torch.tensor([0.0, -50.0], requires_grad=True)
    ref = torch.tensor([-50.0, 0.0])
    kl = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(kl, torch.tensor([10.0, 10.0]))
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_kl_float64_reference():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(4, 7, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(4, 7, generator=g, dtype=torch.float64) * 5
    logr = ref - logp
    expected = (logr.exp() - logr - 1).clamp(-10, 10)
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), expected)
    with pytest.raises(AssertionError, match="estimator"):
        kl_estimate(logp, ref, "k4")


# ---- clipped surrogate ------------------------------------------------------------------------
def test_clipped_surrogate_hand_computed():
    # ratios [1.5, 1.5, 0.5, 0.5], A [+1, -1, +1, -1], clip 0.2 -> clip(ratio) = [1.2, 1.2, 0.8, 0.8]
    # losses max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped); max(1.5, 1.2) = 1.5;
    #                               max(-0.5, -0.8) = -0.5;           max(0.5, 0.8) = 0.8 (clipped)
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 1.5, -0.5, 0.8]]))
    assert clipped.tolist() == [[True, False, False, True]]
    loss.sum().backward()
    # d/dlogp (-A ratio) = -A ratio on unclipped tokens, 0 on clipped ones
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5, -0.5, 0.0]]))


def test_log_ratio_clamp_zeroes_the_gradient_beyond_20():
    # A = -1, log ratio 19: unclipped term -A * ratio = e^19 is the larger one, gradient e^19;
    # log ratio 25 -> clamped to 20: loss e^20, gradient 0 (not e^25), and not counted as clipped.
    # A = +1, log ratio -25 -> clamped to -20: loss -e^-20 (unclipped), gradient 0 (not -e^-25).
    logp = torch.tensor([[19.0, 25.0, -25.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[-1.0, -1.0, 1.0]], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 3, dtype=torch.float64), adv)
    torch.testing.assert_close(loss, torch.tensor([[math.exp(19), math.exp(20), -math.exp(-20)]], dtype=torch.float64))
    assert clipped.tolist() == [[False, False, False]]
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[math.exp(19), 0.0, 0.0]], dtype=torch.float64))


def test_clipped_surrogate_asymmetric_and_per_sequence_adv():
    # clip_eps_high 0.28: ratio 1.5, A = 1 -> max(-1.5, -1.28) = -1.28; adv [N] broadcast over L
    loss, _ = clipped_surrogate(torch.log(torch.tensor([[1.5, 1.0]])), torch.zeros(1, 2), torch.tensor([1.0]),
                                clip_eps=0.2, clip_eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -1.0]]))


def test_clipped_surrogate_float64_reference_with_extreme_ratios():
    g = torch.Generator().manual_seed(2)
    logp = torch.randn(5, 6, generator=g, dtype=torch.float64)
    old = torch.randn(5, 6, generator=g, dtype=torch.float64)
    logp[0, 0], logp[0, 1] = 50.0, -50.0  # log-ratios of about +-50 -> clamped to +-20
    adv = torch.randn(5, generator=g, dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.3)
    ratio = torch.exp((logp - old).clamp(-20, 20))
    a = adv[:, None]
    expected = torch.where(-a * ratio >= -a * ratio.clamp(0.8, 1.3), -a * ratio, -a * ratio.clamp(0.8, 1.3))
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(clipped, -a * ratio.clamp(0.8, 1.3) > -a * ratio)


# ---- aggregation ------------------------------------------------------------------------------
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])  # 99 sits on padding: must not count
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregate_hand_computed():
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-mean: (6/3 + 4/1) / 2 = 3.0
    assert aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-sum-norm: 10 / (2 sequences x L = 3) = 1.6667; with max_len 5: 10 / 10 = 1
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", max_new_tokens=5).item() == pytest.approx(1.0)
    # global counts: 10 / 8 tokens elsewhere in the batch
    assert aggregate(LOSS, MASK, "token-mean", num_tokens=8).item() == pytest.approx(1.25)
    # the default is the recipe's seq-mean-token-mean: 3.0; global count of 4 sequences: 6 / 4
    assert aggregate(LOSS, MASK).item() == pytest.approx(3.0)
    assert aggregate(LOSS, MASK, num_seqs=4).item() == pytest.approx(1.5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_sums_over_row_splits_with_global_counts(mode):
    g = torch.Generator().manual_seed(3)
    loss = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mask = (torch.rand(7, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    full = aggregate(loss, mask, mode)
    counts = dict(num_tokens=int(mask.sum()), num_seqs=7, max_new_tokens=5)
    parts = sum(aggregate(loss[i:i + 3], mask[i:i + 3], mode, **counts) for i in range(0, 7, 3))
    torch.testing.assert_close(parts, full)


def test_aggregate_errors():
    with pytest.raises(AssertionError, match="aggregation must be one of"):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(AssertionError, match="num_tokens must be > 0"):
        aggregate(LOSS, MASK, "token-mean", num_tokens=0)


# ---- objective ----------------------------------------------------------------------------------
def test_grpo_loss_hand_computed():
    # logp = old = ref -> ratio 1, KL 0; A = [+1, -1]; valid tokens (1,1), (1,1), (2,1)
    # policy per token: -1, -1, +1 -> token-mean = -1/3
    # entropy token-mean = (0.5 + 0.5 + 1) / 3 = 0.6667; loss = -1/3 - 0.1 * 0.6667 = -0.4
    logp = torch.full((2, 2), -1.0)
    mask = torch.tensor([[1, 1], [1, 0]])
    entropy = torch.tensor([[0.5, 0.5], [1.0, 9.0]])
    args = (logp, logp, logp, torch.tensor([1.0, -1.0]), mask)
    loss, terms = grpo_loss(*args, entropy=entropy, entropy_coef=0.1, aggregation="token-mean")
    assert loss.item() == pytest.approx(-0.4)
    assert terms["policy_loss"].item() == pytest.approx(-1 / 3)
    assert terms["entropy"].item() == pytest.approx(2 / 3)
    assert terms["kl"].item() == 0 and terms["clipfrac"].item() == 0 and terms["approx_kl_old"].item() == 0
    # default aggregation, the recipe's seq-mean-token-mean: policy (-2/2 + 1/1) / 2 = 0; entropy
    # (1/2 + 1/1) / 2 = 0.75 -> loss = 0 - 0.1 * 0.75 = -0.075; the logged entropy is the loss's 0.75
    loss, terms = grpo_loss(*args, entropy=entropy, entropy_coef=0.1)
    assert loss.item() == pytest.approx(-0.075)
    assert terms["policy_loss"].item() == pytest.approx(0.0)
    assert terms["entropy"].item() == pytest.approx(0.75)


MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("mode", MODES)
def test_clipfrac_is_the_fraction_of_valid_tokens_clipped_in_every_mode(mode):
    # 2 rows x 2 valid tokens, L = 10; ratio 1.5 everywhere and A = +1: every token is clipped.
    # clipfrac = 4 / 4 = 1 (aggregated like seq-mean-token-sum-norm it would be 4 / (2 x 10) = 0.2).
    # Importance weights [[0.5, 1.5], [1, 1]] on the valid tokens (9 on padding): mean 4 / 4 = 1.
    old = torch.zeros(2, 10)
    logp = torch.full((2, 10), math.log(1.5))
    mask = torch.zeros(2, 10)
    mask[:, :2] = 1
    w = torch.full((2, 10), 9.0)
    w[0, :2] = torch.tensor([0.5, 1.5])
    w[1, :2] = 1.0
    _, terms = grpo_loss(logp, old, None, torch.tensor([1.0, 1.0]), mask, kl_coef=0.0, aggregation=mode,
                         is_weight=w)
    assert terms["clipfrac"].item() == 1.0
    assert terms["tis_weight"].item() == pytest.approx(1.0)


# Rows of 3 and 1 valid tokens, L = 4, A = +1. Ratios: row 0 [1.5, 1, 1], row 1 [1.5] (1.5 on
# padding too): the 1.5 tokens are clipped (A > 0, ratio > 1.2) -> per-token policy loss
# row 0 [-1.2, -1, -1], row 1 [-1.2]. Entropy row 0 [1, 1, 1], row 1 [3]. k1 KL logp - ref:
# row 0 [0.3, 0.3, 0.3], row 1 [0.9]. k3 to old at ratio 1.5: 1/1.5 + log 1.5 - 1 = 0.0721318.
#                          policy                        KL in loss        entropy in loss
#   token-mean             -4.4 / 4 = -1.1               1.8 / 4 = 0.45    6 / 4 = 1.5
#   seq-mean-token-mean    (-3.2/3 - 1.2) / 2 = -1.13333 (0.3 + 0.9)/2=0.6 (1 + 3) / 2 = 2
#   seq-mean-token-sum-norm  -4.4 / (2 x 4) = -0.55      1.8 / 8 = 0.225   6 / 8 = 0.75
# loss = policy + 0.1 KL - 0.01 entropy: -1.07, -1.0933333, -0.535; kl and entropy are logged as the
# loss holds them. The diagnostics are token means over the 4 valid tokens in every mode: clipfrac
# 2/4 = 0.5, approx_kl_old 2 x 0.0721318 / 4 = 0.0360659.
# With global counts (these 4 tokens among 8 of the batch, 2 rows among 4, L_max 4): KL 1.8 / 8 =
# 0.225, (0.3 + 0.9) / 4 = 0.3, 1.8 / 16 = 0.1125; entropy 6 / 8 = 0.75, 4 / 4 = 1, 6 / 16 = 0.375.
EXPECTED = {  # policy, loss, kl, entropy; kl and entropy with the global counts
    "token-mean": (-1.1, -1.07, 0.45, 1.5, 0.225, 0.75),
    "seq-mean-token-mean": (-3.4 / 3, -3.28 / 3, 0.6, 2.0, 0.3, 1.0),
    "seq-mean-token-sum-norm": (-0.55, -0.535, 0.225, 0.75, 0.1125, 0.375),
}


@pytest.mark.parametrize("mode", MODES)
def test_logged_terms_follow_the_loss_and_diagnostics_are_token_means(mode):
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float64)
    old = torch.zeros(2, 4, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 1, 1, 1.5], [1.5, 1.5, 1.5, 1.5]], dtype=torch.float64))
    ref = logp - torch.tensor([[0.3, 0.3, 0.3, 5.0], [0.9, 5.0, 5.0, 5.0]], dtype=torch.float64)
    entropy = torch.tensor([[1.0, 1, 1, 9], [3, 9, 9, 9]], dtype=torch.float64)
    loss, terms = grpo_loss(logp, old, ref, torch.tensor([1.0, 1.0], dtype=torch.float64), mask,
                            kl_coef=0.1, kl_estimator="k1", entropy=entropy, entropy_coef=0.01,
                            aggregation=mode)
    policy, total, kl, ent, kl_global, ent_global = EXPECTED[mode]
    assert terms["policy_loss"].item() == pytest.approx(policy)
    assert loss.item() == pytest.approx(total) and terms["loss"].item() == pytest.approx(total)
    assert terms["kl"].item() == pytest.approx(kl)
    assert terms["entropy"].item() == pytest.approx(ent)
    assert total == pytest.approx(policy + 0.1 * kl - 0.01 * ent)
    assert terms["clipfrac"].item() == pytest.approx(0.5)
    assert terms["approx_kl_old"].item() == pytest.approx(2 * (1 / 1.5 + math.log(1.5) - 1) / 4)
    # with global counts (these 4 tokens among 8 of the whole batch) clipfrac halves
    _, part = grpo_loss(logp, old, ref, torch.tensor([1.0, 1.0], dtype=torch.float64), mask, kl_coef=0.1,
                        kl_estimator="k1", entropy=entropy, aggregation=mode, num_tokens=8, num_seqs=4,
                        max_new_tokens=4)
    assert (part["kl"].item(), part["entropy"].item(), part["clipfrac"].item()) == pytest.approx(
        (kl_global, ent_global, 0.25))


def test_grpo_loss_kl_term_and_gradient():
    # one token, A = 0, ref - logp = -1: k3 = e^-1 + 1 - 1 = 0.367879; loss = 0.5 * 0.367879
    # d loss / d logp = 0.5 * (1 - exp(ref - logp)) = 0.5 * (1 - 0.367879) = 0.316060
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, terms = grpo_loss(logp, logp.detach(), torch.tensor([[-2.0]]), torch.tensor([0.0]),
                            torch.ones(1, 1), kl_coef=0.5)
    assert loss.item() == pytest.approx(0.5 * 0.367879, abs=1e-6)
    loss.backward()
    assert logp.grad.item() == pytest.approx(0.316060, abs=1e-6)


def test_truncated_is_weight_hand_computed():
    # old - rollout = [log 0.5, 0, log 3, 50] -> ratios [0.5, 1, 3, e^20 (log clamped)] -> cap 2:
    # [0.5, 1, 2, 2]
    rollout = torch.tensor([[0.0, -1.0, -2.0, -60.0]])
    old = rollout + torch.tensor([[math.log(0.5), 0.0, math.log(3.0), 50.0]])
    torch.testing.assert_close(truncated_is_weight(old, rollout, 2.0), torch.tensor([[0.5, 1.0, 2.0, 2.0]]))
    with pytest.raises(AssertionError, match="cap must be > 0"):
        truncated_is_weight(old, rollout, 0.0)


def test_grpo_loss_with_importance_weight_hand_computed():
    # ratio 1 (logp = old), A = 1, weights [0.5, 1, 2, 2] on 4 tokens, KL k3 = 0.367879 per token
    # (ref - logp = -1) is NOT weighted: policy = -(0.5 + 1 + 2 + 2) / 4 = -1.375;
    # loss = -1.375 + 0.5 * 0.367879 = -1.191060; d policy / d logp_t = -A w_t / 4 =
    # [-0.125, -0.25, -0.5, -0.5], d kl / d logp_t = 0.5 * (1 - e^-1) / 4 = 0.079015
    logp = torch.full((1, 4), -1.0, requires_grad=True)
    w = torch.tensor([[0.5, 1.0, 2.0, 2.0]])
    loss, terms = grpo_loss(logp, logp.detach(), torch.full((1, 4), -2.0), torch.tensor([1.0]),
                            torch.ones(1, 4), kl_coef=0.5, is_weight=w)
    assert terms["policy_loss"].item() == pytest.approx(-1.375)
    assert loss.item() == pytest.approx(-1.375 + 0.5 * 0.367879, abs=1e-6)
    assert terms["tis_weight"].item() == pytest.approx(1.375)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.125, -0.25, -0.5, -0.5]]) + 0.079015,
                               atol=1e-6, rtol=0)


def test_grpo_loss_errors():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="kl_coef"):
        grpo_loss(x, x, None, torch.zeros(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="entropy_coef"):
        grpo_loss(x, x, x, torch.zeros(1), torch.ones(1, 2), entropy_coef=0.1)
