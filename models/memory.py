"""Per-GPU memory plan of a GRPO step: what must fit, phase by phase.

    python -m models.memory --model 3b --gpus 1 --prompts 16 --group 8 --response-len 1024 \
        --offload-ref --activation-checkpointing

An ESTIMATE from arithmetic, not a measurement: it counts the big tensors of the training setup of
grpo.parallel (FSDP2, mixed precision bf16 compute / fp32 parameters and gradient reduction,
AdamW) and of our rollout engine (models.rollout) and training forward
(models.forward.shared_prefix_logprobs). Parameters are counted exactly: the model is built from
the reference architecture JSON on the meta device (no memory, no weights). Measure on the GPU
with ``python -m models.bench`` before trusting a tight plan; allocator fragmentation, CUDA context
(~0.5-1 GiB) and NCCL buffers are not counted.

Notation: Phi parameters, n GPUs (FSDP2 shards over all of them), B prompts and G samples per
step over all GPUs, rows per GPU r = B * G / n, P prompt tokens, L response tokens, V vocabulary,
h hidden, kv = kv_heads * head_dim, I intermediate size, m micro-batch rows.

Persistent (every phase):
    fp32 parameters (the optimizer's master copy), sharded      4 Phi / n   (0 with --offload-optimizer)
    AdamW first and second moments, fp32, sharded               8 Phi / n   (0 with --offload-optimizer)
    reference model, bf16, sharded                              2 Phi / n   (0 with --offload-ref)
Rollout phase (no grad):
    bf16 parameters all gathered (grpo.parallel.unsharded_for_generation)    2 Phi
    KV cache: r * (P + T) * 2 (K and V) * layers * kv * 2 bytes
    sampling: r * V * 4 bytes * 3 (fp32 logits, probabilities, cumulative sum)
Reference phase (no grad): the reference's gathered units 2 * (root + 2 blocks) * 2 bytes when it
    is offloaded (streamed block by block, one prefetched), its logits of a micro-batch.
Training phase (per micro-batch of m rows, i.e. ceil(m / G) prompts computed once each):
    bf16 gathered units: the root (embeddings, lm_head, vision merger, norms: kept gathered) and two
        blocks (the one computing and the one prefetched)            2 * (root + 2 * block)
    fp32 gradients, sharded                                          4 Phi / n (0 with --offload-optimizer)
    activations, text: tokens t = ceil(m / G) * P + m * L; without checkpointing every layer keeps
        a(h, kv, I) = 2 * (7h + 3kv + 4I) + 4 * 4h bytes per token: bf16 tensors autograd saves in a
        Llama-style block (norm inputs and outputs 4h, q k v 1h + 2kv, rotated q k 1h + 1kv,
        attention output 1h, MLP gate, up, act(gate), act * up 4I) plus the fp32 upcasts of the two
        RMSNorms (2 x 2h); with checkpointing each layer keeps its input (2h bytes per token) and
        one layer's a() is live during its recompute.
    activations, vision: the same formula with kv = h_v, I = I_v per patch, ceil(m / G) images of
        3600 patches (840 x 840 px / 14^2) over the vision depth.
    logits: m * L * V * 2 bytes saved (bf16) + as much for their gradient, plus the chunked
        log-prob temporaries 3 * chunk * V * 4 bytes (grpo.logprobs).
Peak = persistent + max(rollout, reference, training).

Departures / simplifications: the vision merger and the 1-D embeddings' activations, and the
attention's own per-head statistics (logsumexp, a few bytes per token per head) are not counted.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from models.configs import REAL_CONFIG_DIR

GiB = 1024 ** 3
REFERENCE_DIR = os.environ.get("SEGZERO_REFERENCE_DIR", REAL_CONFIG_DIR)
PATCHES_PER_IMAGE = 3600  # 840 x 840 px in 14 px patches: 60 * 60
KV_BYTES = 2  # bf16 cache


@dataclass(frozen=True)
class Arch:
    """The numbers of a Qwen2.5-VL shape the plan needs (see :func:`arch_from_reference`)."""

    params: int
    """Phi, all parameters (tied embeddings counted once)."""
    text_block: int
    """Parameters of one decoder block."""
    vision_block: int
    """Parameters of one vision block."""
    layers: int
    hidden: int
    kv_dim: int
    """kv_heads * head_dim."""
    intermediate: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_intermediate: int

    @property
    def root(self) -> int:
        """Parameters outside the blocks (embeddings, lm_head, patch embedding, merger, norms)."""
        return self.params - self.layers * self.text_block - self.vision_layers * self.vision_block

    @property
    def kv_bytes_per_token(self) -> int:
        """2 (K and V) * layers * kv_heads * head_dim * 2 bytes."""
        return 2 * self.layers * self.kv_dim * KV_BYTES


def arch_from_reference(size: str, reference_dir: str = REFERENCE_DIR) -> Arch:
    """Build Qwen2.5-VL ``size`` ("3b" or "7b") on the meta device and count its parameters."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if size not in ("3b", "7b"):
        raise ValueError(f"model must be '3b' or '7b', got {size!r}")
    path = os.path.join(reference_dir, f"qwen2_5_vl_{size}.json")
    config = Qwen2_5_VLConfig.from_json_file(path)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

    def count(module):
        return sum(p.numel() for p in module.parameters())

    return Arch(
        params=count(model),
        text_block=count(model.model.language_model.layers[0]),
        vision_block=count(model.model.visual.blocks[0]),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        kv_dim=text.num_key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        vision_layers=vision.depth,
        vision_hidden=vision.hidden_size,
        vision_intermediate=vision.intermediate_size,
    )


def block_activation_bytes(hidden: int, kv_dim: int, intermediate: int) -> int:
    """a(h, kv, I) = 2 * (7h + 3kv + 4I) + 16h bytes saved per token by one block (module docstring)."""
    return 2 * (7 * hidden + 3 * kv_dim + 4 * intermediate) + 4 * 4 * hidden


@dataclass(frozen=True)
class PlanConfig:
    gpus: int = 1
    prompts: int = 16
    group: int = 8
    prompt_len: int = 1000
    """P: ~900 image tokens of an 840 x 840 image + the chat text."""
    response_len: int = 1024
    micro_batch: int = 8
    """m, response rows per forward/backward."""
    offload_ref: bool = False
    offload_optimizer: bool = False
    activation_checkpointing: bool = False
    logits_chunk: int = 1024
    gpu_gib: float = 80.0

    def __post_init__(self):
        for name in ("gpus", "prompts", "group", "prompt_len", "response_len", "micro_batch", "logits_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (self.prompts * self.group) % self.gpus:
            raise ValueError(f"prompts * group = {self.prompts * self.group} rows do not split over {self.gpus} GPUs")


def plan(arch: Arch, cfg: PlanConfig) -> dict:
    """Bytes per GPU, line by line and per phase: {"persistent": {...}, "rollout": {...}, ...}."""
    n, phi = cfg.gpus, arch.params
    rows = cfg.prompts * cfg.group // n  # r, rows per GPU
    persistent = {
        "fp32 parameters (master, sharded)": 0 if cfg.offload_optimizer else 4 * phi / n,
        "AdamW moments (fp32, sharded)": 0 if cfg.offload_optimizer else 8 * phi / n,
        "reference model (bf16, sharded)": 0 if cfg.offload_ref else 2 * phi / n,
    }
    rollout = {
        "bf16 parameters, all gathered": 2 * phi,
        "KV cache": rows * (cfg.prompt_len + cfg.response_len) * arch.kv_bytes_per_token,
        "sampling buffers (fp32 [r, V] x 3)": rows * arch.vocab * 4 * 3,
    }
    units = 2 * (arch.root + 2 * max(arch.text_block, arch.vision_block))  # bf16 root + 2 blocks
    m = cfg.micro_batch
    mb_prompts = math.ceil(m / cfg.group)  # prompts computed once each (shared prefix)
    tokens = mb_prompts * cfg.prompt_len + m * cfg.response_len
    patches = mb_prompts * PATCHES_PER_IMAGE
    a_text = block_activation_bytes(arch.hidden, arch.kv_dim, arch.intermediate)
    a_vis = block_activation_bytes(arch.vision_hidden, arch.vision_hidden, arch.vision_intermediate)
    if cfg.activation_checkpointing:
        act_text = tokens * (arch.layers * 2 * arch.hidden + a_text)
        act_vis = patches * (arch.vision_layers * 2 * arch.vision_hidden + a_vis)
    else:
        act_text = tokens * arch.layers * a_text
        act_vis = patches * arch.vision_layers * a_vis
    logits = 2 * m * cfg.response_len * arch.vocab * 2 + 3 * cfg.logits_chunk * arch.vocab * 4
    training = {
        "bf16 gathered units (root + 2 blocks)": units,
        "fp32 gradients (sharded)": 0 if cfg.offload_optimizer else 4 * phi / n,
        "activations, text": act_text,
        "activations, vision": act_vis,
        "logits + grad + log-prob chunks": logits,
    }
    reference = {
        "reference units (streamed)": units if cfg.offload_ref else 0,
        "reference logits (bf16, one micro-batch)": m * cfg.response_len * arch.vocab * 2,
    }
    phases = {"rollout": rollout, "reference": reference, "training": training}
    base = sum(persistent.values())
    totals = {name: base + sum(lines.values()) for name, lines in phases.items()}
    return {"persistent": persistent, **phases, "totals": totals, "peak": max(totals.values()),
            "rows_per_gpu": rows, "micro_batch_tokens": tokens}


def format_plan(arch: Arch, cfg: PlanConfig, result: dict) -> str:
    lines = [f"params {arch.params:,} ({arch.params / 1e9:.2f} B); {cfg.gpus} GPU(s); "
             f"{cfg.prompts} x {cfg.group} rows ({result['rows_per_gpu']} per GPU); P {cfg.prompt_len}, "
             f"L {cfg.response_len}; micro-batch {cfg.micro_batch} rows = {result['micro_batch_tokens']:,} tokens; "
             f"offload ref {cfg.offload_ref}, offload optimizer {cfg.offload_optimizer}, "
             f"activation checkpointing {cfg.activation_checkpointing}",
             f"{'per GPU':<46}{'GiB':>9}"]
    for section in ("persistent", "rollout", "reference", "training"):
        lines.append(f"[{section}]")
        for name, value in result[section].items():
            lines.append(f"  {name:<44}{value / GiB:>9.2f}")
    for name, value in result["totals"].items():
        lines.append(f"{'total during ' + name:<46}{value / GiB:>9.2f}")
    verdict = "fits" if result["peak"] <= cfg.gpu_gib * GiB else "does NOT fit"
    lines.append(f"{'peak':<46}{result['peak'] / GiB:>9.2f}  ({verdict} in {cfg.gpu_gib:g} GiB)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["3b", "7b"], required=True)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=1000)
    parser.add_argument("--response-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8, help="response rows per forward/backward")
    parser.add_argument("--logits-chunk", type=int, default=1024)
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--offload-ref", action="store_true")
    parser.add_argument("--offload-optimizer", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    cfg = PlanConfig(gpus=args.gpus, prompts=args.prompts, group=args.group, prompt_len=args.prompt_len,
                     response_len=args.response_len, micro_batch=args.micro_batch,
                     offload_ref=args.offload_ref, offload_optimizer=args.offload_optimizer,
                     activation_checkpointing=args.activation_checkpointing,
                     logits_chunk=args.logits_chunk, gpu_gib=args.gpu_gib)
    arch = arch_from_reference(args.model)
    result = plan(arch, cfg)
    print(format_plan(arch, cfg, result))
    return result


if __name__ == "__main__":
    main()
