"""grpo.buffer, grpo.update and grpo.metrics on one process: splitting, accumulation, finite check."""
import math

import pytest
import torch

from grpo import (
    RolloutBuffer, UpdateConfig, aggregate, clipped_surrogate, compute_old_logprobs, group_advantages,
    grpo_loss, grpo_update, kl_estimate, rollout_metrics, token_logprobs_and_entropy,
)
from grpo.update import mini_batch_rows
from helpers import L, logprob_fn_for, make_buffer, make_policy, param_deltas

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


# ---- buffer -------------------------------------------------------------------------------------
def test_select_reindexes_prompts_and_micro_batches_split_rows():
    buf = make_buffer(num_groups=4, group_size=3)
    sub = buf.select([7, 8, 3])  # rows of groups 2, 2, 1
    assert sub.group_ids.tolist() == [0, 0, 1]
    assert sub.prompts[0] is buf.prompts[2] and sub.prompts[1] is buf.prompts[1]
    torch.testing.assert_close(sub.old_logp, buf.old_logp[[7, 8, 3]])
    torch.testing.assert_close(sub.reward_terms["iou"], buf.reward_terms["iou"][[7, 8, 3]])
    half = buf.select(slice(6, 12))  # groups 2, 3
    assert half.group_ids.tolist() == [0, 0, 0, 1, 1, 1] and half.prompts == buf.prompts[2:]
    sizes = [len(mb) for mb in buf.micro_batches(5)]
    assert sizes == [5, 5, 2]
    assert buf.num_seqs == 12 and buf.padded_len == L and buf.num_valid_tokens == int(buf.response_mask.sum())


def test_buffer_validation():
    buf = make_buffer()
    with pytest.raises(ValueError, match="old_logp must be"):
        RolloutBuffer(**{**buf.__dict__, "old_logp": buf.old_logp[:, :2]})
    with pytest.raises(ValueError, match="only 4 prompts"):
        RolloutBuffer(**{**buf.__dict__, "group_ids": buf.group_ids + 1})
    with pytest.raises(ValueError, match="size must be >= 1"):
        next(buf.micro_batches(0))


# ---- metrics ------------------------------------------------------------------------------------
def test_rollout_metrics_hand_computed():
    # rewards [1, 1, 0, 1] in groups [1, 1] (tied) and [0, 1]: mean 0.75, tie fraction 0.5
    # unbiased std of rewards: sqrt((3 * 0.0625 + 0.5625) / 3) = sqrt(0.25) = 0.5
    # lengths (mask sums) [1, 2, 3, 2]: mean 2, min 1, max 3
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]]).float()
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])
    buf = RolloutBuffer(
        response_ids=torch.zeros(4, 3, dtype=torch.long), response_mask=mask, old_logp=torch.zeros(4, 3),
        rewards=rewards, advantages=torch.tensor([0.0, 0.0, -0.7, 0.7]),
        group_ids=torch.tensor([0, 0, 1, 1]), reward_terms={"iou": torch.tensor([1.0, 0.0, 0.0, 0.0])},
    )
    m = rollout_metrics(buf)
    assert m["reward_mean"] == pytest.approx(0.75) and m["reward_std"] == pytest.approx(0.5)
    assert m["adv_std"] == pytest.approx(math.sqrt(2 * 0.49 / 3))  # A [0, 0, -0.7, 0.7]: mean 0
    assert m["zero_var_group_frac"] == 0.5 and m["reward/iou"] == 0.25
    assert (m["response_len_mean"], m["response_len_min"], m["response_len_max"]) == (2.0, 1.0, 3.0)
    assert m["adv_mean"] == pytest.approx(0.0)


def test_rollout_std_is_two_pass():
    # rewards 1e9 + [0, 1, 2, 3] (float64): mean 1e9 + 1.5, squared deviations 2.25 + 0.25 + 0.25 +
    # 2.25 = 5 -> unbiased std sqrt(5 / 3) = 1.2909944. sum r^2 - n mean^2 cancels 4e18 against
    # 4e18, whose float64 spacing is 512: the one-pass formula cannot resolve a variance of 1.67.
    rewards = 1e9 + torch.arange(4, dtype=torch.float64)
    buf = RolloutBuffer(
        response_ids=torch.zeros(4, 2, dtype=torch.long), response_mask=torch.ones(4, 2), rewards=rewards,
        advantages=rewards.clone(), group_ids=torch.tensor([0, 0, 1, 1]),
    )
    m = rollout_metrics(buf)
    assert m["reward_mean"] == 1e9 + 1.5
    assert m["reward_std"] == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert m["adv_std"] == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    one = rollout_metrics(buf.select([2]))
    assert one["reward_mean"] == 1e9 + 2 and math.isnan(one["reward_std"])  # n = 1: no unbiased std


# ---- update -------------------------------------------------------------------------------------
def _run(mode, micro_batch_size, buf=None, **cfg_kwargs):
    policy = make_policy()
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)  # delta = -grad
    cfg = UpdateConfig(micro_batch_size=micro_batch_size, aggregation=mode, max_grad_norm=0,
                       kl_coef=0.1, entropy_coef=0.01, **cfg_kwargs)
    metrics = grpo_update(logprob_fn_for(policy), opt, buf or make_buffer(), cfg)
    return param_deltas(policy, before), metrics


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_give_the_full_batch_gradient(mode):
    # reference: one grpo_loss on the whole batch, local counts, plain backward
    buf = make_buffer()
    policy = make_policy()
    logp, entropy = logprob_fn_for(policy)(buf)
    loss, _ = grpo_loss(logp, buf.old_logp, buf.ref_logp, buf.advantages, buf.response_mask,
                        kl_coef=0.1, entropy=entropy, entropy_coef=0.01, aggregation=mode)
    loss.backward()
    expected = [-p.grad for p in policy.parameters()]
    whole, m_whole = _run(mode, 12)
    for size in (1, 5):
        split, m_split = _run(mode, size)
        for a, b, c in zip(split, whole, expected):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a, c)
        for key in ("loss", "policy_loss", "kl", "entropy", "clipfrac", "approx_kl_old", "grad_norm"):
            assert m_split[key] == pytest.approx(m_whole[key], rel=1e-6, abs=1e-9), key  # logp are float32
    assert m_whole["loss"] == pytest.approx(loss.item())
    assert m_whole["optimizer_steps"] == 1 and m_whole["skipped_steps"] == 0
    # clipfrac is the token mean over the T valid tokens in every mode; kl and entropy are aggregated
    # like the loss (grpo.losses, 4)
    mask = buf.response_mask.bool()
    _, clipped = clipped_surrogate(logp.detach(), buf.old_logp, buf.advantages)
    assert 0 < clipped[mask].sum() < mask.sum()  # some tokens clipped, not all
    expected = {"clipfrac": float(clipped.double()[mask].mean()),
                "entropy": float(aggregate(entropy.detach(), buf.response_mask, mode)),
                "kl": float(aggregate(kl_estimate(logp.detach(), buf.ref_logp, "k3"), buf.response_mask, mode))}
    for key, value in expected.items():
        for m in (m_whole, m_split):
            assert m[key] == pytest.approx(value, rel=1e-6), (key, m[key])


def _mismatched_rollout(buf, policy):
    """buf without old_logp, with rollout_logp = (trainer's log-probs) - d: d = 0.1 on every valid
    token except row 3, token 0 (d = -0.4), and 9.0 on padding (masked: must never count)."""
    with torch.no_grad():
        trainer_logp = logprob_fn_for(policy)(buf)[0]
    d = torch.where(buf.response_mask.bool(), 0.1, 9.0).double()
    d[3, 0] = -0.4
    buf.old_logp, buf.rollout_logp = None, trainer_logp - d
    return d


def test_one_step_per_rollout_uses_its_own_forward_as_pi_old():
    buf = make_buffer()
    policy = make_policy()
    d = _mismatched_rollout(buf, policy)
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = UpdateConfig(micro_batch_size=4, kl_coef=0.0, aggregation="token-mean", max_grad_norm=0)
    m = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), buf, cfg)
    # ratio = exp(logp - logp.detach()) = 1 exactly: nothing clipped, no KL to old, although the
    # sampler's numbers differ by 0.1-0.4 (ratios 0.67-1.49, half of them outside the clip)
    assert m["clipfrac"] == 0 and m["approx_kl_old"] == 0
    # policy loss = -token-mean of A (ratio 1)
    token_mean_adv = float((buf.advantages[:, None] * buf.response_mask).sum() / buf.response_mask.sum())
    assert m["policy_loss"] == pytest.approx(-token_mean_adv)
    # the on-policy gradient: d/dtheta of -sum_{i,t} m_it A_i logp_it / T (SGD lr 1: delta = -grad)
    policy_ref = make_policy()
    logp = logprob_fn_for(policy_ref)(buf)[0]
    (-(buf.advantages[:, None] * logp * buf.response_mask).sum() / buf.response_mask.sum()).backward()
    for delta, p in zip(param_deltas(policy, before), policy_ref.parameters()):
        torch.testing.assert_close(delta, -p.grad)
    # mismatch diagnostic over the T valid tokens: (0.1 * (T - 1) + 0.4) / T, max 0.4
    num_valid = buf.num_valid_tokens
    assert m["rollout_logp_diff_mean"] == pytest.approx((0.1 * (num_valid - 1) + 0.4) / num_valid)
    assert m["rollout_logp_diff_max"] == pytest.approx(0.4)
    assert d[~buf.response_mask.bool()].numel() > 0  # there was padding to ignore


def test_several_steps_need_old_logprobs_and_report_the_mismatch_against_them():
    buf = make_buffer()
    policy = make_policy()
    _mismatched_rollout(buf, policy)
    cfg = UpdateConfig(micro_batch_size=3, ppo_epochs=2, kl_coef=0.0)
    with pytest.raises(ValueError, match="old_logp is None but ppo_epochs=2"):
        grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=0.5), buf, cfg)
    buf.old_logp = compute_old_logprobs(logprob_fn_for(policy), buf, micro_batch_size=5)
    m = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=0.5), buf, cfg)
    num_valid = buf.num_valid_tokens  # the diagnostic is taken once per row, against old_logp
    assert m["rollout_logp_diff_mean"] == pytest.approx((0.1 * (num_valid - 1) + 0.4) / num_valid)
    assert m["rollout_logp_diff_max"] == pytest.approx(0.4)
    assert m["approx_kl_old"] > 0  # the second epoch sees a policy that has moved


def test_truncated_importance_sampling_weights_the_policy_gradient():
    # rollout_logp = trainer - d with d = 0.1 (w = e^0.1 = 1.10517), d = -0.4 at one token
    # (w = e^-0.4 = 0.67032); a cap C = 1.05 truncates e^0.1 to 1.05. Ratio is 1, so the policy
    # loss is -sum_{i,t} m_it A_i w_it / T and its gradient -sum m A w grad logp / T.
    buf = make_buffer()
    policy = make_policy()
    _mismatched_rollout(buf, policy)
    w = torch.full_like(buf.rollout_logp, 1.05)
    w[3, 0] = math.exp(-0.4)
    mask = buf.response_mask
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = UpdateConfig(micro_batch_size=5, kl_coef=0.0, aggregation="token-mean", max_grad_norm=0,
                       tis_cap=1.05)
    m = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), buf, cfg)
    num_valid = mask.sum()
    assert m["policy_loss"] == pytest.approx(float(-(buf.advantages[:, None] * w * mask).sum() / num_valid))
    assert m["tis_weight"] == pytest.approx(float((1.05 * (num_valid - 1) + math.exp(-0.4)) / num_valid))
    policy_ref = make_policy()
    logp = logprob_fn_for(policy_ref)(buf)[0]
    (-(buf.advantages[:, None] * w * logp * mask).sum() / num_valid).backward()
    for delta, p in zip(param_deltas(policy, before), policy_ref.parameters()):
        torch.testing.assert_close(delta, -p.grad)
    with pytest.raises(ValueError, match="tis_cap=1.05 needs buffer.rollout_logp"):
        buf.rollout_logp = None
        grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), buf, cfg)


def test_seq_mean_token_mean_is_the_released_micro_batch_of_one_loop():
    # The released configs: micro-batches of ONE response per device, a masked token mean in each,
    # divided by the number of micro-batches (gradient accumulation), gradients AVERAGED over
    # ranks. With 2 ranks x 2 rows: grad = mean_r sum_{i in r} grad(tokmean_i) / 2
    #                                    = sum_i grad(tokmean_i) / 4 = grad(seq-mean-token-mean).
    buf = make_buffer(num_groups=2, group_size=2, seed=4)
    assert sorted(buf.response_mask.sum(-1).tolist()) != [L] * 4  # lengths differ: modes differ
    kwargs = dict(kl_coef=0.1, entropy_coef=0.01, max_grad_norm=0, micro_batch_size=1)
    deltas = {}
    for mode in ("seq-mean-token-mean", "token-mean"):
        policy = make_policy()
        before = [p.detach().clone() for p in policy.parameters()]
        grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), buf,
                    UpdateConfig(aggregation=mode, **kwargs))
        deltas[mode] = param_deltas(policy, before)
    policy = make_policy()
    rank_grads = []
    for rank_rows in ([0, 1], [2, 3]):
        policy.zero_grad()
        for i in rank_rows:  # one response per micro-batch
            row = buf.select([i])
            logp, entropy = logprob_fn_for(policy)(row)
            loss, _ = grpo_loss(logp, row.old_logp, row.ref_logp, row.advantages, row.response_mask,
                                kl_coef=0.1, entropy=entropy, entropy_coef=0.01, aggregation="token-mean")
            (loss / len(rank_rows)).backward()  # divided by the gradient-accumulation steps
        rank_grads.append([p.grad.clone() for p in policy.parameters()])
    released = [(a + b) / 2 for a, b in zip(*rank_grads)]  # averaged over the 2 ranks
    for delta, grad in zip(deltas["seq-mean-token-mean"], released):
        torch.testing.assert_close(delta, -grad)
    gap = max((a - b).abs().max().item() for a, b in zip(deltas["token-mean"], deltas["seq-mean-token-mean"]))
    assert gap > 1e-3  # token-mean weighs each response by its length: a different gradient


def test_epochs_and_mini_batches_count_steps_and_move_away_from_old():
    buf = make_buffer()
    policy = make_policy()
    buf.old_logp = compute_old_logprobs(logprob_fn_for(policy), buf, 6)
    cfg = UpdateConfig(micro_batch_size=3, ppo_epochs=2, num_mini_batches=2, kl_coef=0.0)
    m = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=0.5), buf, cfg)
    assert m["optimizer_steps"] == 4 and m["skipped_steps"] == 0
    assert m["approx_kl_old"] > 0  # later steps see a policy that has moved
    with pytest.raises(ValueError, match="num_mini_batches=5"):
        grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=0.5), buf,
                    UpdateConfig(num_mini_batches=5))


def test_non_finite_loss_skips_the_step():
    buf = make_buffer()
    policy = make_policy()
    before = [p.detach().clone() for p in policy.parameters()]
    good = logprob_fn_for(policy)

    def nan_logprob_fn(mb):
        logp, entropy = good(mb)
        return logp * math.nan, entropy

    m = grpo_update(nan_logprob_fn, torch.optim.SGD(policy.parameters(), lr=1.0), buf, UpdateConfig())
    assert m["skipped_steps"] == 1 and m["optimizer_steps"] == 0
    assert not math.isfinite(m["loss"])
    assert math.isnan(m["grad_norm"])  # no step applied: no norm to report
    for p, b in zip(policy.parameters(), before):
        assert torch.equal(p.detach(), b) and p.grad is None


def test_grad_norm_is_the_mean_over_applied_steps():
    # 2 mini-batches (even rows, odd rows); the first call of logprob_fn returns NaN log-probs, so
    # step 1 is skipped (parameters and gradients untouched) and step 2 runs on the initial policy.
    # grad_norm must be step 2's norm alone, that of an update on the odd rows only.
    buf = make_buffer()
    kwargs = dict(micro_batch_size=3, kl_coef=0.1, entropy_coef=0.01, max_grad_norm=0)
    odd = buf.select(mini_batch_rows(buf.num_seqs, 2, 1))
    policy = make_policy()
    reference = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), odd,
                            UpdateConfig(**kwargs))
    policy = make_policy()
    good, calls = logprob_fn_for(policy), []

    def nan_first_logprob_fn(mb):
        calls.append(len(mb))
        logp, entropy = good(mb)
        return (logp * math.nan if len(calls) == 1 else logp), entropy

    m = grpo_update(nan_first_logprob_fn, torch.optim.SGD(policy.parameters(), lr=1.0), buf,
                    UpdateConfig(num_mini_batches=2, **kwargs))
    assert m["skipped_steps"] == 1 and m["optimizer_steps"] == 1
    assert math.isfinite(reference["grad_norm"]) and reference["grad_norm"] > 0
    assert m["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-12)


def test_grad_norm_is_clipped():
    _, unclipped = _run("token-mean", 4)
    policy = make_policy()
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = UpdateConfig(micro_batch_size=4, max_grad_norm=1e-3, kl_coef=0.1, entropy_coef=0.01,
                       aggregation="token-mean")
    m = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), make_buffer(), cfg)
    assert m["grad_norm"] == pytest.approx(unclipped["grad_norm"])  # reported before clipping
    step = torch.cat([d.flatten() for d in param_deltas(policy, before)]).norm()
    assert step.item() == pytest.approx(1e-3, rel=1e-4)  # SGD lr 1: step norm = clipped grad norm


def test_config_values_are_asserted():  # the training config validates user input (test_grpo_recipe)
    for bad in (dict(aggregation="mean"), dict(micro_batch_size=0), dict(kl_estimator="k5")):
        with pytest.raises(AssertionError, match=f"{next(iter(bad))}={next(iter(bad.values()))!r}"):
            UpdateConfig(**bad)
