"""Seg-Zero training: GRPO (or the SFT baseline) of Qwen2.5-VL with FSDP2 (SPEC.md section 8).

    torchrun --nproc_per_node=2 train.py                      # default preset "tiny": CPU, minutes
    python train.py --max-steps 5                             # the same in one process
    torchrun --nproc_per_node=8 train.py --preset seg_zero_3b --model-path DIR --data-path DIR
    python train.py --help                                    # every option, every preset
    python train.py --preset seg_zero_3b --print-config ...   # the resolved configuration, as JSON
    torchrun --nproc_per_node=2 train.py --preset tiny_multi  # the toy run on multi-object answers (SPEC 9)

One GRPO step (DESIGN.md "data flow"; B = --prompts-per-step prompts in all, split evenly over the
R ranks: B / R per rank, G samples each, N = B / R * G rows per rank, L tokens):
  1. rows      this rank's B / R samples of the global batch of B (grpo.parallel.StepSampler)
  2. rollout   prompts -> G sampled responses each: ids / mask / sampling log-probs [N, L]
  3. rewards   the five Seg-Zero terms from the completion text (rewards; no SAM2) -> [N];
               with --task multi the three multi-object terms (rewards.multi_object)
  4. advantage group-normalised rewards [N] (grpo.advantages)
  5. reference log-probs of the frozen initial policy [N, L] (skipped when kl_coef = 0)
  6. update    clipped surrogate + KL - entropy over micro-batches, global normalisation,
               grad clip, optimizer step (grpo.update)
  7. log + checkpoint (grpo.tracking, grpo.checkpoint)
Validation (``--eval-every K`` with ``--sam2``): the evaluation loop of evaluate.py (policy ->
answer -> SAM2 -> mask -> gIoU / cIoU, sharded over ranks; with --task multi one mask per listed
object, scored as their union) on ``--val-path`` at the start, every K steps and at the end;
logged as phase 'val' in metrics.jsonl and heldout.jsonl; a new best val gIoU saves a checkpoint
and rewrites best.json. At the end, curves.png (grpo.plot).
Departures from the paper: the tiny preset starts from a toy pretrained checkpoint (models.toy)
instead of Qwen2.5-VL-Instruct and is sized for 2 CPU cores (grpo.recipe.preset_tiny says how).
Rollouts are seeded per (seed, step, prompt position), so the samples do not depend on the number
of ranks and a resumed run draws exactly what an uninterrupted run would.

Run directory (--output-dir): one that holds an earlier run (RUN_FILES) is refused unless
--resume (continue it from its latest complete checkpoint) or --overwrite (delete its files and
start afresh) is given. Every setup check that can fail (the options, the data, the validation set,
the model path, the checkpoint to resume from) runs before anything in the directory is created,
written or deleted; config.json is written atomically.

Errors: a user mistake (a ValueError from the config or the setup: a bad option or value, a path
that is not there or not writable, a file that cannot be read) prints one line "error: ..." and
exits with code 2, before any heavy work where it can be detected then. A run in which no step
could be applied (every loss or gradient non-finite), or whose weights are no longer finite, ends
with an error (exit code 1) and exports nothing.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch

from data.paths import check_output_dir
from eval.heldout import format_report, heldout_report
from eval.validate import BestPointer
from grpo import RolloutBuffer, compute_old_logprobs, group_advantages, grpo_update
from grpo.checkpoint import (TrainingDiverged, check_checkpoint, export_hf, latest_checkpoint, load_checkpoint,
                             rng_state, save_checkpoint, set_rng_state, step_dir_name)
from grpo.parallel import (StepSampler, all_reduce_sum, barrier, gathered_between_steps, init_distributed,
                           peak_memory_bytes, seed_everything, shard_model, shutdown, unsharded_for_generation)
from grpo.recipe import Config, check_world_size, micro_batch_note, parse_args
from grpo.tracking import PhaseTimer, Tracker, filter_jsonl, fsync_dir, write_atomic
from grpo.update import UpdateConfig
from models.policy import SegZeroPolicy
from models.sft import sft_step
from rewards import score_completions, score_multi_object


def main(argv: list[str] | None = None) -> Path | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--print-config" in argv:  # the resolved configuration (preset + overrides); nothing loaded
        print(parse_args([a for a in argv if a != "--print-config"]).to_json())
        return None
    cfg = parse_args(argv)
    out = Path(cfg.train.output_dir)
    # setup checks: nothing in the run directory is created, written or deleted before they pass
    check_output_dir(out, "--output-dir")
    check_run_dir(cfg)
    check_model_path(cfg.model.model_path)
    info = init_distributed(cfg.parallel.device)
    check_world_size(cfg, info.world_size)
    if info.is_main and (note := micro_batch_note(cfg, info.world_size)):
        print(note, flush=True)
    seed_everything(cfg.train.seed)
    train_set, heldout = build_data(cfg, info)
    sampler = StepSampler(len(train_set), cfg.train.prompts_per_step, info.rank, info.world_size,
                          cfg.data.data_seed)
    with rng_unchanged():  # the RNG states the models are built with do not depend on validation
        val = build_validation(cfg, info)  # (segmenter, validation source) or None
    resume_from = latest_checkpoint(out / "checkpoints") if cfg.train.resume else None
    if resume_from is not None:
        check_checkpoint(resume_from, info.world_size)
    warm = cfg.train.algo == "grpo" and cfg.train.warmstart_sft_steps > 0
    if warm and cfg.train.resume and (out / "warmstart_sft").is_dir():
        check_warmstart_export(out / "warmstart_sft", warmstart_settings(cfg))
    best = BestPointer(out, resume=resume_from is not None)  # a fresh run starts a fresh pointer
    barrier()  # every rank passed the checks before rank 0 changes the directory
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.train.overwrite:
            clear_run_dir(out)
        write_atomic(out / "config.json", cfg.to_json())
    barrier()  # no rank reads the directory before it is ready
    model_path = cfg.model.model_path
    if warm:
        model_path = warm_start(cfg, info, train_set, heldout, out / "warmstart_sft")
    policy = build_policy(cfg, info, model_path, frozen=False)
    ref = (build_policy(cfg, info, model_path, frozen=True).logprobs
           if cfg.train.algo == "grpo" and cfg.grpo.kl_coef > 0 else None)
    optimizer = build_optimizer(cfg, policy.model, cfg.optim.lr)
    scheduler = build_scheduler(cfg, optimizer)
    start_step = 0
    if resume_from is not None:
        extra = load_checkpoint(resume_from, policy.logprobs, optimizer)
        scheduler.load_state_dict(extra["scheduler"])
        start_step = extra["step"]
    if cfg.train.resume and info.is_main:  # the rows of the steps after the checkpoint are logged again
        filter_jsonl(out / "heldout.jsonl", lambda row: row.get("step", 0) <= start_step)
    tracker = Tracker(out, is_main=info.is_main, total_steps=cfg.train.max_steps, start_step=start_step,
                      progress=cfg.train.progress, tensorboard=cfg.train.tensorboard, desc=cfg.train.algo)
    rep = report(cfg, policy, heldout, tracker, f"{cfg.train.algo} start (step {start_step})", val, info, start_step)
    if rep is not None and start_step == 0:
        best.update(0, rep, model_path, write=info.is_main)  # the starting checkpoint until a validation beats it
    steps = range(start_step, cfg.train.max_steps)
    if cfg.train.algo == "sft":
        loop = sft_steps(cfg, info, policy, optimizer, train_set, sampler, steps)
    else:
        loop = grpo_steps(cfg, info, policy, ref, optimizer, train_set, sampler, steps)
    num_applied = 0.0  # optimizer steps applied by this run (a non-finite loss or gradient skips one)
    for step, metrics in loop:
        num_applied += metrics.get("optimizer_steps", 1.0 - metrics.get("skipped_steps", 0.0))
        scheduler.step()
        metrics.update(lr=scheduler.get_last_lr()[0], epoch=sampler.epoch(step + 1),
                       peak_memory_bytes=peak_memory_bytes(info.device))
        if "num_tokens" in metrics:
            metrics["tokens_per_s"] = metrics["num_tokens"] / max(metrics["time/step"], 1e-9)
        tracker.log(step + 1, metrics)  # 7. log + checkpoint
        every, last = cfg.train.checkpoint_every, step + 1 == cfg.train.max_steps
        ckpt = None
        if (every and (step + 1) % every == 0) or (cfg.train.save_last and last):
            ckpt = save_checkpoint(out / "checkpoints", step + 1, policy.logprobs, optimizer,
                                   {"scheduler": scheduler.state_dict(),
                                    "data_position": (step + 1) * cfg.train.prompts_per_step})
        if val is not None and cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and not last:
            rep = report(cfg, policy, heldout, tracker, f"validation (step {step + 1})", val, info, step + 1)
            if best.is_better(rep):  # the same decision on every rank (all-gathered figures)
                if ckpt is None:
                    ckpt = save_checkpoint(out / "checkpoints", step + 1, policy.logprobs, optimizer,
                                           {"scheduler": scheduler.state_dict(),
                                            "data_position": (step + 1) * cfg.train.prompts_per_step})
                best.update(step + 1, rep, ckpt, write=info.is_main)
    if start_step < cfg.train.max_steps and num_applied == 0:
        raise TrainingDiverged(f"every step of this run ({start_step + 1}..{cfg.train.max_steps}) was skipped: "
                               "the loss or the gradients were not finite, nothing was learned and nothing "
                               "is exported; lower the learning rate or check the other numbers of the config")
    rep = report(cfg, policy, heldout, tracker, f"{cfg.train.algo} end (step {cfg.train.max_steps})", val, info,
                 cfg.train.max_steps)
    if rep is not None:
        last_ckpt = out / "checkpoints" / step_dir_name(cfg.train.max_steps)
        best.update(cfg.train.max_steps, rep, last_ckpt if last_ckpt.is_dir() else None, write=info.is_main)
    tracker.close()
    if info.is_main:
        from grpo.plot import plot_run

        tracker.print(f"curves: {plot_run(out)}")
    if cfg.train.export_hf:
        export_hf(out / "hf_export", policy.model, policy.processor)
    shutdown()
    return out


def grpo_steps(cfg: Config, info, policy: SegZeroPolicy, ref, optimizer, train_set, sampler: StepSampler,
               steps: range):
    """The GRPO loop, steps 1-6 of the module docstring; yields (step, metrics) for step 7."""
    G = cfg.rollout.group_size
    update_cfg = build_update_config(cfg)
    for step in steps:
        timer = PhaseTimer(sync_cuda=info.device.type == "cuda")
        samples = [read_sample(train_set, sampler, p) for p in sampler.positions(step)]  # 1. B rows
        with timer("rollout"):  # 2. prompts -> G samples per prompt, N = B * G rows
            rollout = generate_rollout(cfg, policy, samples, step, sampler.positions(step))
        with timer("reward"):  # 3. text-only rewards
            scores = score(cfg, rollout.texts, [s.solution for s in samples for _ in range(G)])
        rewards = torch.as_tensor(scores.total, dtype=torch.float32, device=info.device)  # [N]
        adv = group_advantages(rewards, G, eps=cfg.grpo.adv_eps, scale_by_std=cfg.grpo.scale_by_std,
                               estimator=cfg.grpo.adv_estimator)  # 4. [N], from rewards.view(B, G)
        buffer = RolloutBuffer(
            response_ids=rollout.response_ids,  # [N, L] (pad ids after EOS are masked)
            response_mask=rollout.response_mask,  # [N, L]
            rollout_logp=rollout.logp.float(),  # [N, L] the sampler's log-probs (never pi_old)
            rewards=rewards, advantages=adv,
            group_ids=torch.arange(len(samples), device=info.device).repeat_interleave(G),  # [N]
            reward_terms={k: torch.as_tensor(v, dtype=torch.float32, device=info.device)
                          for k, v in scores.terms.items()},
            prompts=[rollout.batch.select([b]) for b in range(len(samples))],  # each prompt's own inputs
        )
        with timer("reference"):  # 5. frozen-reference log-probs [N, L]
            if ref is not None:
                with gathered(cfg, ref), torch.no_grad():
                    buffer.ref_logp = make_logprob_fn(ref, cfg, entropy=False)(buffer)[0]
        with timer("update"), gathered(cfg, policy.logprobs, optimizer):  # 6. clipped surrogate + KL - entropy
            metrics = update(policy.logprobs, optimizer, buffer, cfg, update_cfg)
        metrics["parse_fail"] = parse_failure_rate(scores, info.device)
        yield step, {**metrics, **timer.metrics()}


def sft_steps(cfg: Config, info, policy: SegZeroPolicy, optimizer, train_set, sampler: StepSampler, steps: range):
    """The SFT loop of ``--algo sft`` and of the warm start: this rank's rows -> one step of
    token-mean NLL on the answer text (models.sft); yields (step, metrics)."""
    for step in steps:
        timer = PhaseTimer(sync_cuda=info.device.type == "cuda")
        samples = [read_sample(train_set, sampler, p) for p in sampler.positions(step)]
        with timer("update"), gathered(cfg, policy.logprobs, optimizer):
            metrics = sft_step(policy, samples, optimizer, think=cfg.rollout.think,
                               micro_batch_size=cfg.grpo.micro_batch_size,
                               max_grad_norm=cfg.optim.max_grad_norm, max_new_tokens=cfg.rollout.max_new_tokens)
        yield step, {**metrics, **timer.metrics()}


# ---------------------------------------------------------------------------------------------
# The machinery, one call away

#: What a run writes in its directory (files and folders; a crash may leave NAME.tmp or NAME.old
#: beside them): a directory holding any of them holds an earlier run.
RUN_FILES = ("config.json", "metrics.jsonl", "heldout.jsonl", "best.json", "curves.png", "checkpoints",
             "hf_export", "warmstart_sft", "val", "tb")


def run_files(out: Path) -> list[str]:
    """The names in ``out`` that an earlier run wrote (RUN_FILES and their .tmp / .old debris)."""
    names = [name + suffix for name in RUN_FILES for suffix in ("", ".tmp", ".old")]
    return [name for name in names if os.path.lexists(out / name)]


def check_run_dir(cfg: Config) -> None:
    """ValueError when output_dir holds an earlier run and neither ``resume`` nor ``overwrite``
    says what to do with it, naming the directory, what it holds and both options."""
    out = Path(cfg.train.output_dir)
    if cfg.train.resume or cfg.train.overwrite or not out.is_dir():
        return
    found = run_files(out)
    if found:
        raise ValueError(f"--output-dir {str(out)!r} holds an earlier run ({', '.join(found)}); pass --resume to "
                         "continue it from its latest checkpoint, --overwrite to delete it and start afresh, "
                         "or another --output-dir")


def clear_run_dir(out: Path) -> None:
    """Delete an earlier run's files (:func:`run_files`) from ``out`` (``--overwrite``); other files
    stay."""
    import shutil

    for name in run_files(out):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    fsync_dir(out)


def check_model_path(model_path: str) -> None:
    """FileNotFoundError / ValueError, before anything is built, when ``model_path`` cannot hold a
    checkpoint (models.loading.check_checkpoint); 'tiny' is built in memory."""
    if model_path == "tiny":
        return
    from models.loading import check_checkpoint as check_model_checkpoint
    from models.toy import resolve_model_path

    check_model_checkpoint(resolve_model_path(model_path))


@contextlib.contextmanager
def rng_unchanged():
    """Within the block, the python, numpy and torch RNGs may be drawn from; after it they are where
    they were before it."""
    as_json, tensors = rng_state()
    try:
        yield
    finally:
        set_rng_state(as_json, tensors)


def build_data(cfg: Config, info):
    """(train SampleSource, held-out samples of this rank). Raises ValueError on an empty set.
    With task 'multi' every sample's solution is a list of objects (data.multi_object) and the
    synthetic sets are the multi-object scenes."""
    from data import open_dataset, open_multi_object_dataset

    multi = cfg.train.task == "multi"
    synthetic = heldout_synthetic(cfg)  # (n, seed) -> the held-out synthetic set of this config
    check_training_data_path(cfg.data.data_path, multi)
    if cfg.data.data_path == "synthetic":
        train_set = synthetic(cfg.data.num_synthetic, cfg.data.data_seed)
    else:
        train_set = (open_multi_object_dataset if multi else open_dataset)(cfg.data.data_path, seed=cfg.data.data_seed)
    if len(train_set) == 0:
        raise ValueError(f"config field data_path={cfg.data.data_path!r}: the training set is empty")
    # held-out synthetic samples (a different seed), split evenly over ranks
    n = cfg.data.heldout_size - cfg.data.heldout_size % info.world_size
    held = synthetic(n, cfg.data.data_seed + 10_000) if n else []
    heldout = [held[i] for i in range(info.rank, n, info.world_size)]
    return train_set, heldout


def check_training_data_path(path: str, multi: bool) -> None:
    """ValueError for a data_path that the data readers open as one split of a larger set: a
    refer-format root (RefCOCO / RefCOCO+ / RefCOCOg: ``instances.json`` + refs) or, with task
    'multi', a gRefCOCO root, whose readers default to the 'val' split. Training takes a
    training parquet (or a LISA folder of one split) instead."""
    from data.multi_object import is_gref_root

    if not os.path.isdir(path):
        return
    option = f"config field data_path={path!r} (--data-path)"
    if multi and is_gref_root(path):
        raise ValueError(f"{option} is a gRefCOCO root: its reader would train on the 'val' split; train on a "
                         "multi-object training parquet (the authors' VisionReasoner layout: problem, solution as "
                         "a JSON list of objects, image)")
    if os.path.isfile(os.path.join(path, "instances.json")) or any(
            os.path.isfile(os.path.join(path, d.name, "instances.json")) for d in os.scandir(path) if d.is_dir()):
        raise ValueError(f"{option} is a refer-format root (instances.json + refs): its reader would train on the "
                         f"'val' split; convert the train split to a training parquet with `python -m "
                         f"data.prepare_refcocog --refer-root {path} --images COCO_TRAIN2014_DIR --out FILE.parquet "
                         "--split train` and pass --data-path FILE.parquet")


def heldout_synthetic(cfg: Config):
    """(n, seed) -> the synthetic scenes of the training set (data_path 'synthetic...'), the held-out
    report and val_path 'heldout', in the query family of a synthetic data_path (data.readers;
    "synthetic:N:referring" trains and validates on referring queries only): the multi-object
    scenes with task 'multi' ("synthetic:N:present": no query refers to nothing)."""
    from data import MultiObjectSynthetic, SyntheticDataset
    from data.readers import parse_synthetic_spec
    from data.synthetic import MULTI_QUERY_FAMILIES, QUERY_FAMILIES

    family = (parse_synthetic_spec(cfg.data.data_path, task=cfg.train.task) or (None, "mixed"))[1]
    if cfg.train.task == "multi":
        return lambda n, seed: MultiObjectSynthetic(n, seed=seed, empty_fraction=MULTI_QUERY_FAMILIES[family])
    return lambda n, seed: SyntheticDataset(n, seed=seed, reasoning_fraction=QUERY_FAMILIES[family])


def read_sample(source, sampler: StepSampler, position: int):
    """The sample at a stream position; a bad one (unreadable or invalid: BadSampleError; an empty
    mask or a query that is empty once normalised: ValueError) is reported and the sample at the next stream
    position is used instead (deterministic, so resume and rank count do not matter). After 100 bad
    samples in a row, a ValueError that gives the last one's index and reason."""
    from data import BadSampleError, solution_from_mask
    from data.types import check_sample
    from models.prompt import normalize_query

    for k in range(100):
        index = sampler.stream_index(position + k)
        try:
            sample = source[index]
            normalize_query(sample.query)
            if sample.solution is None:
                sample.solution = solution_from_mask(sample.mask)
            check_sample(sample, f"index {index}")  # box ordered and in the frame (any SampleSource)
        except (BadSampleError, ValueError) as err:
            print(f"skipping bad sample at index {index}: {err}", flush=True)
            last = f"index {index}: {err}"
            continue
        return sample
    raise ValueError(f"100 consecutive bad samples from stream position {position} on (each printed above); "
                     f"the last, {last}")


def build_policy(cfg: Config, info, model_path: str, frozen: bool) -> SegZeroPolicy:
    """The policy (or, ``frozen``, the reference) with its training forward sharded by FSDP2.

    ``policy.logprobs`` (models.forward.ResponseLogProbs: the module whose forward returns the
    response log-probs) is the FSDP2 root; each vision and decoder block is its own unit
    (grpo.parallel.shard_model). A checkpoint directory is built on the meta device, sharded,
    then filled shard file by shard file (models.weights), so no rank ever holds the whole model.
    The trainable policy keeps its master weights in ``model.dtype``; the frozen reference is
    stored in the compute dtype (bf16 under mixed precision on GPU: half the memory, the numbers
    the bf16 forward would use anyway). 'tiny' builds the random tiny model in memory.
    """
    shard = dict(mixed_precision=cfg.parallel.mixed_precision, cpu_offload=frozen and cfg.parallel.ref_cpu_offload,
                 activation_checkpointing=cfg.parallel.activation_checkpointing and not frozen, frozen=frozen)
    if model_path == "tiny":
        from models.tiny import build_tiny_qwen

        model, processor = build_tiny_qwen(cfg.model.tiny_seed, attn_implementation=cfg.model.attn_implementation)
        policy = SegZeroPolicy(model.to(info.device).train(not frozen), processor,
                               with_example=cfg.rollout.with_example, think=cfg.rollout.think, task=cfg.train.task)
        shard_model(policy.logprobs, info, **shard)
        return policy
    from models.loading import load_processor, local_checkpoint_dir
    from models.toy import resolve_model_path
    from models.weights import build_on_meta, load_weights, materialize
    from transformers import AutoConfig

    model_path = local_checkpoint_dir(resolve_model_path(model_path))
    processor = load_processor(model_path, min_pixels=cfg.model.min_pixels or None,
                               max_pixels=cfg.model.max_pixels or None)
    dtype = getattr(torch, cfg.model.dtype)
    if frozen and cfg.parallel.mixed_precision and info.device.type == "cuda":
        dtype = torch.bfloat16
    model = build_on_meta(AutoConfig.from_pretrained(model_path), dtype=dtype,
                          attn_implementation=cfg.model.attn_implementation)
    policy = SegZeroPolicy(model.train(not frozen), processor, with_example=cfg.rollout.with_example,
                           think=cfg.rollout.think, task=cfg.train.task)
    shard_model(policy.logprobs, info, **shard)
    offloaded = shard["cpu_offload"] and info.device.type == "cuda"  # FSDP2 keeps these shards in CPU memory
    materialize(policy.logprobs, "cpu" if offloaded else info.device, buffer_device=info.device)
    load_weights(policy.model, model_path)
    return policy


def build_optimizer(cfg: Config, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                             eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay)


def build_scheduler(cfg: Config, optimizer, total_steps: int | None = None):
    """Linear warmup from 0 over warmup_steps, then constant or cosine to 0 at the last step."""
    warm, total = cfg.optim.warmup_steps, total_steps or cfg.train.max_steps

    def factor(step: int) -> float:  # step = training steps (rollouts) done so far
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.optim.lr_schedule == "cosine":
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_update_config(cfg: Config) -> UpdateConfig:
    """The knobs of grpo.update, under the names of the config fields they come from."""
    g = cfg.grpo
    return UpdateConfig(micro_batch_size=g.micro_batch_size, ppo_epochs=g.ppo_epochs,
                        num_mini_batches=g.num_mini_batches, clip_eps=g.clip_eps, clip_eps_high=g.clip_eps_high,
                        kl_coef=g.kl_coef, kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef,
                        aggregation=g.aggregation, tis_cap=g.tis_cap, max_grad_norm=cfg.optim.max_grad_norm,
                        temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens)


def generate_rollout(cfg: Config, policy: SegZeroPolicy, samples, step: int, positions: list[int]):
    """G samples for each of this rank's B prompts, in ONE batched rollout (one prefill of the B
    prompts, N = B * G rows decoded together). Prompt b draws from its own generator seeded by
    (seed, step, stream position), so its samples do not depend on how the global batch is split
    over ranks."""
    generators = [torch.Generator(policy.device).manual_seed((cfg.train.seed * 1_000_003 + step) * 1_000_003 + pos)
                  for pos in positions]
    policy.model.eval()
    with unsharded_for_generation(policy.logprobs), torch.no_grad():
        out = policy.rollout([s.image for s in samples], [s.query for s in samples], cfg.rollout.group_size,
                             max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                             top_p=cfg.rollout.top_p, generator=generators)
    policy.model.train()
    return out


def score(cfg: Config, texts: list[str], solutions: list):
    """The rewards of N completions (rewards.RewardBatch: total [N], terms, parse statuses): the five
    Seg-Zero terms, or with ``task`` multi the three multi-object terms."""
    if cfg.train.task == "multi":
        return score_multi_object(texts, solutions)
    return score_completions(texts, solutions, strict=cfg.reward.strict_format, soft=cfg.reward.soft_accuracy,
                             think=cfg.rollout.think)


def gathered(cfg: Config, model, optimizer=None):
    """grpo.parallel.gathered_between_steps when ``parallel.gather_once``, else nothing."""
    return gathered_between_steps(model, optimizer) if cfg.parallel.gather_once else contextlib.nullcontext()


def make_logprob_fn(model, cfg: Config, entropy: bool):
    """logprob_fn(mb) -> (logp [n, L], entropy [n, L] | None) for grpo.update: one forward per
    prompt group present in the micro-batch (its rows are adjacent), the image encoded once."""
    def logprob_fn(mb: RolloutBuffer):
        logps, ents = [], []
        for g, batch in enumerate(mb.prompts):
            rows = (mb.group_ids == g).nonzero().squeeze(1)  # [n_g], contiguous
            res = model(batch, mb.response_ids[rows], mb.response_mask[rows],
                                    group_size=len(rows), temperature=cfg.rollout.temperature,
                                    return_entropy=entropy)
            logps.append(res[0] if entropy else res)
            if entropy:
                ents.append(res[1])
        order = torch.cat([(mb.group_ids == g).nonzero().squeeze(1) for g in range(len(mb.prompts))])
        assert torch.equal(order, torch.arange(mb.num_seqs, device=order.device)), "groups not in row order"
        return torch.cat(logps), (torch.cat(ents) if entropy else None)
    return logprob_fn


def update(model, optimizer, buffer: RolloutBuffer, cfg: Config, update_cfg: UpdateConfig) -> dict[str, float]:
    """Step 6 (grpo.update). pi_old is always the trainer's own forward: with one optimizer step per
    rollout the update's own detached log-probs (buffer.old_logp stays None, ratio exactly 1); with
    more (ppo_epochs > 1 or num_mini_batches > 1) a no-grad pass of the same forward fixes it first
    (grpo.update module docstring)."""
    if not update_cfg.one_step_per_rollout:
        buffer.old_logp = compute_old_logprobs(make_logprob_fn(model, cfg, entropy=False), buffer,
                                               update_cfg.micro_batch_size)
    return grpo_update(make_logprob_fn(model, cfg, entropy=True), optimizer, buffer, update_cfg)


def parse_failure_rate(scores, device) -> float:
    """Fraction of ALL ranks' completions whose answer could not be parsed."""
    counts = torch.tensor([float(sum(s != "ok" for s in scores.statuses)), float(len(scores))],
                          dtype=torch.float64, device=device)
    all_reduce_sum(counts)
    return float(counts[0]) / max(float(counts[1]), 1.0)


def build_validation(cfg: Config, info):
    """(segmenter, validation source) for the reports and --eval-every, or None without model.sam2.

    The source is the held-out synthetic set (val_path 'heldout', the same scenes as the reward
    report) or any dataset data.open_dataset reads (a real split such as ReasonSeg val; with ``task``
    multi, any that data.open_multi_object_dataset reads). With ``task`` multi the validation scores
    the object lists through SAM2 (union masks; eval.validate)."""
    if not cfg.model.sam2 or (cfg.data.val_path == "heldout" and cfg.data.heldout_size == 0):
        return None
    from data import open_dataset, open_multi_object_dataset
    from models.pipeline import load_segmenter

    if cfg.data.val_path == "heldout":
        source = heldout_synthetic(cfg)(cfg.data.heldout_size, cfg.data.data_seed + 10_000)
    else:  # opened first: a bad val_path fails before SAM2 is loaded
        opener = open_multi_object_dataset if cfg.train.task == "multi" else open_dataset
        source = opener(cfg.data.val_path, seed=cfg.data.data_seed)
    segmenter = load_segmenter(cfg.model.sam2, device=info.device)
    return segmenter, source


def report(cfg: Config, policy: SegZeroPolicy, heldout, tracker: Tracker, title: str, val=None, info=None,
           step: int = 0) -> dict | None:
    """Held-out report, printed on rank 0 and appended to heldout.jsonl (a row with its title and
    ``step``, which a resume trims by, as metrics.jsonl): with a segmenter (``val``),
    the validation of eval.validate (gIoU, cIoU, box-IoU proxy, parse failures, reward terms of the
    greedy answers; logged as phase 'val' in metrics.jsonl, predictions in val/step_XXXXXX);
    without, the reward terms and box-IoU proxy of the held-out scenes. Returns the validation
    figures (None without a segmenter)."""
    if val is not None:
        from eval.validate import format_validation, validate

        segmenter, source = val
        policy.model.eval()
        with unsharded_for_generation(policy.logprobs), torch.no_grad():
            rep = validate(policy, segmenter, source, Path(cfg.train.output_dir) / "val" / step_dir_name(step),
                           rank=info.rank, world_size=info.world_size, batch_size=16,
                           max_new_tokens=cfg.rollout.max_new_tokens, strict=cfg.reward.strict_format,
                           soft=cfg.reward.soft_accuracy, think=cfg.rollout.think,
                           limit=cfg.data.val_limit or None, task=cfg.train.task)
        policy.model.train()
        tracker.print(format_validation(title, rep))
        tracker.log(step, {k: v for k, v in rep.items() if k != "example"}, phase="val")
        if tracker.is_main:
            row = {"title": title, "step": step, "n": rep["val/n"], "iou_proxy": rep["val/iou_proxy"],
                   "giou": rep["val/giou"], "ciou": rep["val/ciou"], "parse_fail": rep["val/parse_fail"],
                   **{k[4:]: rep[k] for k in ("val/no_target_acc", "val/target_acc") if k in rep},
                   **{k[4:]: v for k, v in rep.items() if k.startswith("val/reward/")}, "example": rep["example"]}
            with (Path(cfg.train.output_dir) / "heldout.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        return rep
    if cfg.data.heldout_size == 0:
        return None
    policy.model.eval()
    with unsharded_for_generation(policy.logprobs), torch.no_grad():
        rep = heldout_report(policy, heldout, max_new_tokens=cfg.rollout.max_new_tokens,
                             think=cfg.rollout.think, strict=cfg.reward.strict_format,
                             soft=cfg.reward.soft_accuracy, task=cfg.train.task)
    policy.model.train()
    tracker.print(format_report(title, rep))
    if tracker.is_main:
        with (Path(cfg.train.output_dir) / "heldout.jsonl").open("a") as f:
            f.write(json.dumps({"title": title, "step": step, **rep}) + "\n")
    return None


WARMSTART_RECORD = "warmstart.json"
WARMSTART_REPORT = "initial policy"  # title of the warm start's held-out report row


def warmstart_settings(cfg: Config) -> dict:
    """Every config value that determines the warm-start export (recorded in it as
    ``warmstart.json``; an export made with other values is refused, not reused)."""
    c = cfg.to_dict()
    return {"model": c["model"],
            "data": {k: c["data"][k] for k in ("data_path", "num_synthetic", "data_seed")},
            "rollout": {k: c["rollout"][k] for k in ("think", "with_example", "max_new_tokens")},
            "optim": {k: c["optim"][k] for k in ("optimizer", "beta1", "beta2", "adam_eps", "weight_decay",
                                                 "max_grad_norm")},
            "grpo": {"micro_batch_size": c["grpo"]["micro_batch_size"]},
            "train": {k: c["train"][k] for k in ("seed", "prompts_per_step", "warmstart_sft_steps",
                                                 "warmstart_lr")}}


def check_warmstart_export(export_dir: Path, settings: dict) -> None:
    """ValueError unless ``export_dir`` records (``warmstart.json``) exactly these settings."""
    try:
        made_with = json.loads((export_dir / WARMSTART_RECORD).read_text())
    except (OSError, ValueError):
        made_with = None
    if made_with == settings:
        return
    if isinstance(made_with, dict):
        then = {f"{sec}.{k}": v for sec, vals in made_with.items() if isinstance(vals, dict) for k, v in vals.items()}
        now = {f"{sec}.{k}": v for sec, vals in settings.items() for k, v in vals.items()}
        what = f"other settings ((then, now): { {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v} })"
    else:
        what = f"unknown settings (no readable {WARMSTART_RECORD})"
    raise ValueError(f"{export_dir} holds a warm start made with {what}; delete that folder to redo the warm "
                     "start, or use another --output-dir")


def warm_start(cfg: Config, info, train_set, heldout, export_dir: Path) -> str:
    """The tiny run's warm start: ``warmstart_sft_steps`` SFT steps from ``model_path``, exported
    to ``export_dir`` with the settings that made it (:func:`warmstart_settings`). An existing
    export is reused (e.g. on resume) only when it was made with the same settings; a warm start
    interrupted before its export is redone from the start, its metrics rows replaced. Returns the
    export path."""
    settings = warmstart_settings(cfg)
    if export_dir.is_dir():
        check_warmstart_export(export_dir, settings)
    else:
        if info.is_main:  # an interrupted attempt's held-out report row goes, as its metrics rows do
            filter_jsonl(export_dir.parent / "heldout.jsonl", lambda row: row.get("title") != WARMSTART_REPORT)
        policy = build_policy(cfg, info, cfg.model.model_path, frozen=False)
        optimizer = build_optimizer(cfg, policy.model, cfg.train.warmstart_lr)
        sampler = StepSampler(len(train_set), cfg.train.prompts_per_step, info.rank, info.world_size,
                              cfg.data.data_seed + 1)
        tracker = Tracker(export_dir.parent, is_main=info.is_main, total_steps=cfg.train.warmstart_sft_steps,
                          progress=cfg.train.progress, desc="warm-start sft", phase="warmstart_sft")
        report(cfg, policy, heldout, tracker, WARMSTART_REPORT)
        for step, metrics in sft_steps(cfg, info, policy, optimizer, train_set, sampler,
                                       range(cfg.train.warmstart_sft_steps)):
            tracker.log(step + 1, metrics)
        tracker.close()
        export_hf(export_dir, policy.model, policy.processor,
                  extra_files={WARMSTART_RECORD: json.dumps(settings, indent=2, sort_keys=True)})
        del policy, optimizer
    return str(export_dir)


def cli(argv: list[str] | None = None) -> int:
    """``main`` for the command line: the exit code, and one line "error: ..." on stderr for a
    user mistake (ValueError, FileNotFoundError: exit code 2) or a diverged run (exit code 1)
    instead of a traceback. A mistake found before the process group exists (the configuration)
    is the same on every rank and printed by rank 0 only; later ones by every rank that hits them,
    prefixed with the rank in a multi-process run."""
    try:
        main(argv)
        return 0
    except (ValueError, FileNotFoundError, TrainingDiverged) as err:
        import torch.distributed as dist

        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if rank == 0 or dist.is_initialized():
            prefix = f"[rank {rank}] " if world > 1 and dist.is_initialized() else ""
            print(f"{prefix}error: " + " ".join(str(err).split()), file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may not get here
        return 1 if isinstance(err, TrainingDiverged) else 2


if __name__ == "__main__":
    sys.exit(cli())
