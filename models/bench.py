"""Benchmark of one GRPO step: rollout vs transformers' generate, training MFU, phases.

    python -m models.bench --tiny                                   # CPU, seconds (what CI runs)
    python -m models.bench --model 3b --device cuda --out bench_3b.json   # the real shape, random init

What one run measures, on a randomly initialised Qwen2.5-VL (the tiny test shape, or the real
3B / 7B shape from ``models/configs/*.json`` in bf16 on CUDA) with B random 840 x 840
images and the SPEC prompt (models.prompt), G samples each and exactly T new tokens per row
(random weights never stop: EOS is disabled for both engines):

- rollout: our engine (models.rollout.generate: one prefill per prompt, G samples from the shared
  prefix) vs transformers' ``generate(num_return_sequences=G, do_sample=True)`` on the same
  prompts, tokens/s = N * T / seconds each; and the memory-bandwidth decode bound:
      bytes per decode step = language-model weight bytes + KV bytes read, the KV averaged over the
                              T steps: N * (P + T / 2) * kv_bytes_per_token
      bound tokens/s        = N / (bytes per step / HBM bandwidth)
  reported with the fraction our engine reaches (bandwidth from a table by GPU name, or
  ``--bandwidth-gbs``; n/a on CPU).
- a whole GRPO step split by phase: rollout (our engine), reward (rewards.score_completions on
  the decoded texts against a fixed ground truth), reference log-probs (a no-grad
  models.forward.response_logprobs; the frozen reference has the policy's shape, so the policy's
  own weights stand in for it: same compute, no second copy in memory), update (grpo.update
  .grpo_update, one optimizer step, AdamW, micro-batches of whole groups).
- training tokens/s = tokens computed in the update / update seconds, where tokens = B * P + N * T
  (each prompt once: the shared-prefix forward); MFU = 6 * params * tokens / seconds / peak FLOP/s
  (peak from a table by GPU name, bf16 dense, or ``--peak-tflops``; n/a on CPU). 6 * params *
  tokens is the usual dense estimate: it ignores attention FLOPs and counts the vision tower's
  parameters against text tokens, so it is an approximation either way.
- peak memory: torch.cuda.max_memory_allocated on CUDA; peak resident set size on CPU.

The real shapes use the tiny byte-level tokenizer (no tokenizer files offline): image tokens (900
per 840 x 840 image) are exactly the real model's, the text part of the prompt tokenises to a
somewhat different length than with Qwen's tokenizer; the config's special-token ids are set to
that tokenizer's.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from grpo.advantages import group_advantages
from grpo.buffer import RolloutBuffer
from grpo.update import UpdateConfig, grpo_update
from models.configs import REAL_CONFIG_DIR
from models.forward import plain_logprobs, response_logprobs, shared_prefix_logprobs
from models.policy import SegZeroPolicy
from models.rollout import generate
from rewards.seg_zero import score_completions

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0}
"""Dense bf16 tensor-core peak by GPU name (vendor data sheets; H100 = the SXM part)."""
HBM_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0, "A800": 2039.0,
           "L40S": 864.0}
"""Memory bandwidth in GB/s by GPU name (vendor data sheets; A100 / A800 = the 80 GB parts)."""
QUERIES = ["the red circle on the left", "the largest object", "the dog next to the person",
           "the second cup from the right"]
SOLUTION = {"bbox": [100, 120, 400, 500], "points": [[200, 250], [300, 400]]}


def lookup(table: dict, name: str):
    """The entry of ``table`` whose key occurs in the device name; longer keys first (H100 PCIe)."""
    for key in sorted(table, key=len, reverse=True):
        if all(part in name for part in key.split()):
            return table[key]
    return None


def build(args):
    """(policy, text parameter count) for the chosen shape on the chosen device."""
    from models.tiny import build_tiny_qwen

    if args.tiny:
        model, processor = build_tiny_qwen(seed=args.seed)
        model = model.to(args.device)
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration
        from models.weights import real_shape_config

        config, processor = real_shape_config(args.model)
        config._attn_implementation = args.attn_implementation
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        torch.manual_seed(args.seed)
        with torch.device(args.device):
            model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
        if args.attn_implementation == "sdpa":
            from models.vision_attention import use_windowed_vision_attention

            use_windowed_vision_attention(model)
        model.generation_config.pad_token_id = config.text_config.pad_token_id
        model.eval()
    text_params = sum(p.numel() for p in model.model.language_model.parameters())
    text_params += 0 if model.config.tie_word_embeddings else model.lm_head.weight.numel()
    return SegZeroPolicy(model, processor), text_params


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device, fn):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def run(args) -> dict:
    policy, text_params = build(args)
    model, device = policy.model, args.device
    num_prompts, group, new_tokens = args.prompts, args.group, args.new_tokens
    num_rows = num_prompts * group
    rs = np.random.RandomState(args.seed)
    images = [rs.randint(0, 256, (840, 840, 3), dtype=np.uint8) for _ in range(num_prompts)]
    queries = [QUERIES[i % len(QUERIES)] for i in range(num_prompts)]
    batch = policy.prepare(images, queries)
    prompt_len = batch.input_ids.shape[1]
    no_eos = -1  # an id no sampler returns: every row decodes exactly T tokens
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def ours(tokens=new_tokens):
        return generate(model, batch, group, max_new_tokens=tokens, eos_token_id=no_eos,
                        pad_token_id=policy.pad_token_id, generator=gen)

    def theirs(tokens=new_tokens):
        out = model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
            mm_token_type_ids=batch.mm_token_type_ids, do_sample=True, num_return_sequences=group,
            max_new_tokens=tokens, min_new_tokens=tokens, eos_token_id=None,
            pad_token_id=policy.pad_token_id, top_p=1.0, top_k=0, temperature=1.0,
        )
        model.model.rope_deltas = None  # generate caches these on the model
        return out

    # warm-up (kernels, allocator, lazy init) on 2 tokens each, then the measured runs
    ours(2), theirs(2)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    hf_out, hf_s = _timed(device, theirs)
    assert hf_out.shape[1] - prompt_len == new_tokens, "transformers stopped early"

    # one GRPO step, phase by phase
    phases = {}
    rollout, phases["rollout"] = _timed(device, ours)
    assert rollout.response_ids.shape == (num_rows, new_tokens)
    texts = policy.decode(rollout.response_ids, rollout.response_mask)

    def reward():
        scored = score_completions(texts, [SOLUTION] * num_rows)
        rewards = torch.as_tensor(scored.total, dtype=torch.float32, device=device)
        return rewards, group_advantages(rewards, group) if group > 1 else rewards * 0

    (rewards, adv), phases["reward"] = _timed(device, reward)

    def reference():
        with torch.no_grad():
            return torch.cat([
                response_logprobs(model, batch.select(list(range(s, min(s + args.micro_prompts, num_prompts)))),
                                  rollout.response_ids[s * group:(s + args.micro_prompts) * group],
                                  rollout.response_mask[s * group:(s + args.micro_prompts) * group], group)
                for s in range(0, num_prompts, args.micro_prompts)
            ])

    ref_logp, phases["reference"] = _timed(device, reference)
    buffer = RolloutBuffer(
        response_ids=rollout.response_ids, response_mask=rollout.response_mask, rollout_logp=rollout.logp,
        rewards=rewards, advantages=adv, group_ids=torch.arange(num_rows, device=device) // group,
        ref_logp=ref_logp, prompts=list(range(num_prompts)),
    )

    def logprob_fn(mb):  # micro-batches are whole groups: rows of prompts mb.prompts, G each
        return response_logprobs(model, batch.select(mb.prompts), mb.response_ids, mb.response_mask,
                                 group, return_entropy=True)

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    cfg = UpdateConfig(micro_batch_size=args.micro_prompts * group, max_new_tokens=new_tokens)
    first = list(range(args.micro_prompts * group))  # the first micro-batch's rows

    def fwd_bwd(forward=shared_prefix_logprobs):  # one micro-batch forward + backward, gradients dropped
        logp = forward(model, batch.select(list(range(args.micro_prompts))), rollout.response_ids[first],
                       rollout.response_mask[first], group)
        (logp * rollout.response_mask[first]).sum().backward()
        optimizer.zero_grad(set_to_none=True)

    fwd_bwd()  # warm-up of the backward kernels and the allocator, outside the timed update
    _, phases["update"] = _timed(device, lambda: grpo_update(logprob_fn, optimizer, buffer, cfg))
    peak = peak_memory_bytes(device)
    extra = {}
    if args.compare_plain:  # the shared-prefix training forward vs N rows of [prompt | response]
        _, extra["shared_prefix_fwd_bwd_s"] = _timed(device, fwd_bwd)
        _, extra["plain_fwd_bwd_s"] = _timed(device, lambda: fwd_bwd(plain_logprobs))
        extra["plain_over_shared_prefix"] = extra["plain_fwd_bwd_s"] / extra["shared_prefix_fwd_bwd_s"]
    if args.profile:
        extra["profile"] = profile(device, args.profile, lambda: ours(8), fwd_bwd)
    model.eval()

    # derived figures
    params = sum(p.numel() for p in model.parameters())
    train_tokens = num_prompts * prompt_len + num_rows * new_tokens
    train_tps = train_tokens / phases["update"]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak_tflops = args.peak_tflops or (lookup(PEAK_BF16_TFLOPS, name) if device.startswith("cuda") else None)
    mfu = 6 * params * train_tps / (peak_tflops * 1e12) if peak_tflops else None
    elem = next(model.parameters()).element_size()
    text_cfg = model.config.text_config
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    kv_per_token = 2 * text_cfg.num_hidden_layers * text_cfg.num_key_value_heads * head_dim * elem
    step_bytes = text_params * elem + num_rows * (prompt_len + new_tokens / 2) * kv_per_token
    bandwidth = args.bandwidth_gbs or (lookup(HBM_GBS, name) if device.startswith("cuda") else None)
    bound_tps = num_rows / (step_bytes / (bandwidth * 1e9)) if bandwidth else None
    ours_tps = num_rows * new_tokens / phases["rollout"]
    hf_tps = num_rows * new_tokens / hf_s
    return {
        "device": name, "shape": "tiny" if args.tiny else args.model, "dtype": str(next(model.parameters()).dtype),
        "attention": args.attn_implementation, "vision_attention": model.model.visual.config._attn_implementation,
        "params": params, "prompts": num_prompts, "group": group, "new_tokens": new_tokens,
        "prompt_len": prompt_len, "micro_batch_rows": args.micro_prompts * group,
        "rollout_tokens_per_s": ours_tps, "hf_generate_tokens_per_s": hf_tps,
        "rollout_speedup_vs_hf": ours_tps / hf_tps,
        "decode_bound_tokens_per_s": bound_tps,
        "decode_bound_fraction": ours_tps / bound_tps if bound_tps else None,
        "train_tokens": train_tokens, "train_tokens_per_s": train_tps, "peak_tflops": peak_tflops, "mfu": mfu,
        "step_s": sum(phases.values()), **{f"{k}_s": v for k, v in phases.items()},
        "peak_memory_bytes": peak, **extra,
    }


def profile(device: str, path: str, decode, train) -> str:
    """torch.profiler tables (top operators by device time) of a short decode and one training
    micro-batch, written to ``path``; returns the path."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    with open(path, "w") as f:
        for name, fn in (("decode, 8 tokens", decode), ("training micro-batch, forward + backward", train)):
            with torch_profile(activities=activities) as prof:
                fn()
                _sync(device)
            f.write(f"== {name}\n{prof.key_averages().table(sort_by=sort, row_limit=30)}\n\n")
    return path


def format_table(result: dict) -> str:
    def show(value):
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    width = max(len(k) for k in result)
    return "\n".join(f"{k:<{width}}  {show(v)}" for k, v in result.items())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="GRPO step benchmark (see models/bench.py docstring)")
    shape = parser.add_mutually_exclusive_group(required=True)
    shape.add_argument("--tiny", action="store_true", help="the tiny test model (CPU, seconds)")
    shape.add_argument("--model", choices=["3b", "7b", "3b-proxy", "7b-proxy"],
                       help="real shape, random init; -proxy: real widths, 2 decoder + 2 vision blocks")
    parser.add_argument("--prompts", type=int, default=None, help="B (default 2 tiny, 16 real)")
    parser.add_argument("--group", type=int, default=None, help="G (default 2 tiny, 8 real)")
    parser.add_argument("--new-tokens", type=int, default=None, help="T (default 16 tiny, 300 real)")
    parser.add_argument("--micro-prompts", type=int, default=1, help="prompts (x G rows) per micro-batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="override the HBM table")
    parser.add_argument("--reference-dir", default=REAL_CONFIG_DIR)
    parser.add_argument("--compare-plain", action="store_true",
                        help="also time one micro-batch forward+backward on the plain padded path")
    parser.add_argument("--profile", default=None, help="write torch.profiler tables here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    real = not args.tiny
    args.prompts = args.prompts or (16 if real else 2)
    args.group = args.group or (8 if real else 2)
    args.new_tokens = args.new_tokens or (300 if real else 16)
    for name in ("prompts", "group", "new_tokens", "micro_prompts"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} but CUDA is not available")
    result = run(args)
    print(format_table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
