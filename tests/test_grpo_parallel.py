"""The FSDP2-sharded tiny Qwen2.5-VL on 2 gloo ranks: the collectives never depend on a rank's data.

Every FSDP2 forward and backward of a block all-gathers its parameters (and the backward
reduce-scatters its gradients), so ranks must call the model the same number of times whatever
their responses. Here rank 0's responses are all ONE token long (its padded width is 1) and rank
1's are longer; a rank that skipped the shared-prefix response pass for L = 1 would issue fewer
all-gathers than the other (a hang, turned into an error by the 60 s process-group timeout). The
2-rank step must also equal the 1-process step on the same 4 rows (no FSDP).

The same step with ``mixed_precision`` (bf16 parameters and compute, fp32 gradient reduction and
master weights, the GPU precision path) runs on CPU + gloo too: ratio exactly 1 at the step.
"""
import os

import pytest
import torch
import torch.multiprocessing as mp

from grpo import RolloutBuffer, UpdateConfig, grpo_update
from grpo.parallel import free_port
from helpers import QUERIES, random_images

G = 2
UPDATE = UpdateConfig(micro_batch_size=G, kl_coef=0.0, entropy_coef=0.1, aggregation="token-mean",
                      max_grad_norm=0)


def _model_and_buffer():
    """Tiny policy and a 2-prompt x G=2 rollout: prompt 0's responses are 1 token, prompt 1's 4 and 2."""
    from models.batch import prepare_inputs
    from models.tiny import build_tiny_qwen

    model, processor = build_tiny_qwen(seed=0)
    model.train()
    batch = prepare_inputs(processor, random_images(2), QUERIES)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, model.config.text_config.vocab_size, (2 * G, 4), generator=g)
    lengths = torch.tensor([1, 1, 4, 2])
    mask = (torch.arange(4)[None] < lengths[:, None]).long()  # [N, L]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    buf = RolloutBuffer(response_ids=ids, response_mask=mask, rewards=rewards,
                        advantages=torch.tensor([0.7, -0.7, -0.7, 0.7]),
                        group_ids=torch.arange(2).repeat_interleave(G),
                        prompts=[batch.select([b]) for b in range(2)])
    return model, buf


def _trim(buf: RolloutBuffer) -> RolloutBuffer:
    """The buffer at the width of its own longest response (what a rank's rollout returns)."""
    width = int(buf.response_mask.sum(-1).max())
    return RolloutBuffer(**{**buf.__dict__, "response_ids": buf.response_ids[:, :width],
                            "response_mask": buf.response_mask[:, :width]})


def _step(model, buf):
    """One grpo_update with SGD lr 1 through train.make_logprob_fn; returns the metrics."""
    import train
    from grpo.recipe import build_config

    logprob_fn = train.make_logprob_fn(model, build_config(), entropy=True)
    return grpo_update(logprob_fn, torch.optim.SGD(model.parameters(), lr=1.0), buf, UPDATE)


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from grpo.parallel import init_distributed, shard_model, shutdown

    info = init_distributed("cpu", timeout_s=60)
    try:
        results = {}
        for precision in ("fp32", "bf16"):
            from models.forward import ResponseLogProbs

            model, buf = _model_and_buffer()
            forward = shard_model(ResponseLogProbs(model), info, mixed_precision=precision == "bf16")
            dtypes = []
            model.lm_head.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
            n = len(buf) // world_size  # this rank's rows: whole groups
            local = _trim(buf.select(slice(rank * n, (rank + 1) * n)))
            assert local.padded_len == (1 if rank == 0 else 4)
            metrics = _step(forward, local)
            params = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
            results[precision] = (params, metrics, sorted({str(d) for d in dtypes}))
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "fsdp.pt"))
    finally:
        shutdown()


@pytest.mark.dist
def test_one_token_responses_on_one_rank_keep_the_collectives_in_step(tmp_path):
    from models.forward import ResponseLogProbs

    model, buf = _model_and_buffer()
    single = _step(ResponseLogProbs(model), buf)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "fsdp.pt", weights_only=False)
    params, metrics, dtypes = results["fp32"]
    assert dtypes == ["torch.float32"]
    init, _ = _model_and_buffer()
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), init.parameters()))
    assert moved > 1e-3  # a real step
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=1e-4, atol=1e-6, msg=name)
    for key in ("loss", "policy_loss", "entropy", "num_tokens"):
        assert metrics[key] == pytest.approx(single[key], rel=1e-5), key
    assert metrics["clipfrac"] == 0 and metrics["approx_kl_old"] == 0

    # bf16 compute (every lm_head output bf16), fp32 master weights: ratio exactly 1 at the step,
    # and the step is the fp32 step up to bf16 rounding
    params, metrics, dtypes = results["bf16"]
    assert dtypes == ["torch.bfloat16"]
    assert metrics["clipfrac"] == 0 and metrics["approx_kl_old"] == 0
    assert metrics["entropy"] == pytest.approx(single["entropy"], rel=2e-2)
    names = [n for n, _ in model.named_parameters()]
    assert all(params[n].dtype == torch.float32 for n in names)
    init_params = dict(init.named_parameters())
    step_bf16 = torch.cat([(params[n] - init_params[n].detach()).flatten() for n in names])
    step_fp32 = torch.cat([(p.detach() - init_params[n].detach()).flatten() for n, p in model.named_parameters()])
    assert torch.nn.functional.cosine_similarity(step_bf16, step_fp32, dim=0) > 0.99
    assert step_bf16.norm().item() == pytest.approx(step_fp32.norm().item(), rel=5e-2)
