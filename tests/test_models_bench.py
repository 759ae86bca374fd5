"""models.memory (the plan's arithmetic on a hand-checked shape, the real parameter counts) and
models.bench (the --tiny run on CPU: JSON keys, positive figures, the GPU tables)."""
import json

import pytest

from models import bench, memory
from models.memory import Arch, PlanConfig, plan

# A made-up shape small enough to check by hand: root = 1000 - 2 * 100 - 2 * 50 = 700 parameters
ARCH = Arch(params=1000, text_block=100, vision_block=50, layers=2, hidden=4, kv_dim=2, intermediate=8,
            vocab=10, vision_layers=2, vision_hidden=4, vision_intermediate=8)
CFG = PlanConfig(gpus=2, prompts=2, group=2, prompt_len=3, response_len=5, micro_batch=2, logits_chunk=4)


def test_plan_arithmetic_by_hand():
    assert ARCH.root == 700
    assert ARCH.kv_bytes_per_token == 16  # 2 (K, V) * 2 layers * kv_dim 2 * 2 bytes
    # a(h=4, kv=2, I=8) = 2 * (28 + 6 + 32) + 16 * 4 = 132 + 64 = 196; vision kv = h: 2*(28+12+32)+64 = 208
    assert memory.block_activation_bytes(4, 2, 8) == 196
    out = plan(ARCH, CFG)
    assert out["rows_per_gpu"] == 2  # 2 * 2 rows over 2 GPUs
    # persistent: fp32 params 4 * 1000 / 2, AdamW 8 * 1000 / 2, reference bf16 2 * 1000 / 2
    assert list(out["persistent"].values()) == [2000, 4000, 1000]
    # rollout: bf16 all gathered 2000; KV 2 rows * (3 + 5) * 16 = 256; sampling 2 * 10 * 4 * 3 = 240
    assert list(out["rollout"].values()) == [2000, 256, 240]
    assert out["totals"]["rollout"] == 7000 + 2496
    # training, micro-batch 2 rows = 1 prompt: tokens 3 + 2 * 5 = 13, patches 3600
    assert out["micro_batch_tokens"] == 13
    t = out["training"]
    assert t["bf16 gathered units (root + 2 blocks)"] == 2 * (700 + 2 * 100)  # 1800
    assert t["fp32 gradients (sharded)"] == 2000
    assert t["activations, text"] == 13 * 2 * 196  # 5096, every layer keeps a()
    assert t["activations, vision"] == 3600 * 2 * 208  # 1,497,600
    # logits 2 rows * 5 * 10 * 2 bytes, twice (values + grad) = 400; chunks 3 * 4 * 10 * 4 = 480
    assert t["logits + grad + log-prob chunks"] == 880
    assert out["totals"]["training"] == 7000 + 1800 + 2000 + 5096 + 1_497_600 + 880
    # reference: not offloaded -> no streamed units; logits 2 * 5 * 10 * 2 = 200
    assert out["totals"]["reference"] == 7200
    assert out["peak"] == out["totals"]["training"]


def test_plan_checkpointing_and_offload_by_hand():
    cfg = PlanConfig(gpus=2, prompts=2, group=2, prompt_len=3, response_len=5, micro_batch=2,
                     logits_chunk=4, activation_checkpointing=True, offload_ref=True, offload_optimizer=True)
    out = plan(ARCH, cfg)
    assert list(out["persistent"].values()) == [0, 0, 0]
    # checkpointing: per token each layer keeps its input (2 * 4 bytes) + one layer's a() live
    assert out["training"]["activations, text"] == 13 * (2 * 2 * 4 + 196)  # 13 * 212 = 2756
    assert out["training"]["activations, vision"] == 3600 * (2 * 2 * 4 + 208)  # 806,400
    assert out["training"]["fp32 gradients (sharded)"] == 0
    assert out["reference"]["reference units (streamed)"] == 1800


def test_plan_config_errors():
    with pytest.raises(ValueError, match="gpus"):
        PlanConfig(gpus=0)
    with pytest.raises(ValueError, match="do not split over 3 GPUs"):
        PlanConfig(gpus=3, prompts=16, group=8)


def test_real_shapes_counted_on_meta_device(capsys):
    arch = memory.arch_from_reference("3b")
    assert arch.params == 3_754_622_976  # built on the meta device; README: about 3.75 B
    assert arch.kv_bytes_per_token == 36 * 1024  # README: 36 KiB per token in bf16
    result = memory.main(["--model", "7b", "--gpus", "8", "--activation-checkpointing"])
    assert "8.29 B" in capsys.readouterr().out and result["rows_per_gpu"] == 16
    with pytest.raises(ValueError, match="'13b'"):
        memory.arch_from_reference("13b")


def test_gpu_tables():
    assert bench.lookup(bench.PEAK_BF16_TFLOPS, "NVIDIA H100 80GB HBM3") == 989.0
    assert bench.lookup(bench.PEAK_BF16_TFLOPS, "NVIDIA H100 PCIe") == 756.0
    assert bench.lookup(bench.HBM_GBS, "NVIDIA H200") == 4800.0
    assert bench.lookup(bench.HBM_GBS, "Some Other GPU") is None


@pytest.mark.slow
def test_bench_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    result = bench.main(["--tiny", "--device", "cpu", "--new-tokens", "8", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == result
    positive = ["rollout_tokens_per_s", "hf_generate_tokens_per_s", "rollout_speedup_vs_hf",
                "train_tokens_per_s", "step_s", "rollout_s", "reward_s", "reference_s", "update_s",
                "peak_memory_bytes", "params", "prompt_len"]
    for key in positive:
        assert saved[key] > 0, key
    assert saved["step_s"] == pytest.approx(
        saved["rollout_s"] + saved["reward_s"] + saved["reference_s"] + saved["update_s"])
    # 2 prompts once each + 2 * 2 rows * 8 tokens
    assert saved["train_tokens"] == 2 * saved["prompt_len"] + 4 * 8
    assert saved["mfu"] is None and saved["decode_bound_fraction"] is None  # CPU: n/a
