"""2 gloo processes, each with half of the groups, give the 1-process gradients and metrics.

Gradients are summed across ranks by a per-parameter hook (what FSDP2 does with its gradient
divide factor set to 1, see grpo/update.py): each rank's loss is normalised by the GLOBAL counts,
so the SUM of the two ranks' gradients is the full-batch gradient.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grpo import RolloutBuffer, UpdateConfig, grpo_update
from grpo.parallel import free_port
from helpers import logprob_fn_for, make_buffer, make_policy, param_deltas

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
BASE = dict(micro_batch_size=2, kl_coef=0.1, entropy_coef=0.01, max_grad_norm=0.5)
CONFIGS = {mode: dict(BASE, aggregation=mode) for mode in MODES}
# 2 epochs x 2 mini-batches (4 steps): the mini-batches must be the same global rows on 1 and 2
# ranks (grpo.update: strided rows; contiguous local slices would differ).
CONFIGS["2x2-steps"] = dict(BASE, aggregation="token-mean", ppo_epochs=2, num_mini_batches=2)
# pi_old = the update's own forward (buffer.old_logp None), with the truncated IS weight on
CONFIGS["own-old-tis"] = dict(BASE, tis_cap=1.5)
# Each rank's buffer at the width of its own longest response (what a rank's rollout returns):
# rank 0 width 6, rank 1 width 4. Dr. GRPO with max_new_tokens None divides by S x L_max, L_max the
# padded width MAX-reduced over ranks (6, as on 1 process), not each rank's own width.
CONFIGS["sum-norm-own-widths"] = dict(BASE, aggregation="seq-mean-token-sum-norm", max_new_tokens=None)
OWN_WIDTHS_SEED = 2  # response lengths: rows 0-5 up to 6 tokens, rows 6-11 up to 4


def _trim(buf: RolloutBuffer) -> RolloutBuffer:
    """The buffer at the width of its own longest response: every [N, L] field and the per-prompt
    features [L, DIM] of the toy policy (position t of the features only feeds token t's logits)."""
    width = int(buf.response_mask.sum(-1).max())
    trimmed = {name: value[:, :width] for name, value in buf.__dict__.items()
               if isinstance(value, torch.Tensor) and value.dim() == 2}
    return RolloutBuffer(**{**buf.__dict__, **trimmed, "prompts": [p[:width] for p in buf.prompts]})


def _sum_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    summed = grad.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


def _updates(rank: int, world_size: int):
    """For each config: (param deltas after the SGD steps with lr 1, metrics) on this rank's shard."""
    results = {}
    for name, kwargs in CONFIGS.items():
        policy = make_policy()
        if world_size > 1:
            for p in policy.parameters():  # SUM each backward's gradient over ranks
                p.register_hook(_sum_over_ranks)
        before = [p.detach().clone() for p in policy.parameters()]
        n = 12 // world_size  # this rank's rows: whole groups of the 4 x 3
        if name == "sum-norm-own-widths":
            buf = _trim(make_buffer(num_groups=4, group_size=3, seed=OWN_WIDTHS_SEED).select(
                slice(rank * n, (rank + 1) * n)))
            assert buf.padded_len == (6 if world_size == 1 or rank == 0 else 4), buf.padded_len
        else:
            buf = make_buffer(num_groups=4, group_size=3).select(slice(rank * n, (rank + 1) * n))
        if name == "own-old-tis":
            buf.old_logp = None
        metrics = grpo_update(logprob_fn_for(policy), torch.optim.SGD(policy.parameters(), lr=1.0), buf,
                              UpdateConfig(**kwargs))
        results[name] = (param_deltas(policy, before), metrics)
    return results


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(_updates(rank, world_size), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_gloo_ranks_equal_one_process(tmp_path):
    single = _updates(0, 1)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for mode in CONFIGS:
        deltas, metrics = single[mode]
        for rank_result in ranks:
            rank_deltas, rank_metrics = rank_result[mode]
            for a, b in zip(rank_deltas, deltas):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
            assert rank_metrics.keys() == metrics.keys()
            for key, value in metrics.items():
                assert rank_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (mode, key)
        assert any(d.abs().max() > 1e-4 for d in deltas)  # a real step was taken
        assert metrics["rollout_logp_diff_max"] > 0.5  # the diagnostic is there (and equal above)
