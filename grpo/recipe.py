"""Training configuration: typed dataclasses, named presets, command-line overrides.

Source of the numbers: SPEC.md section 8 (paper section 4.1 + the authors' released configs).
Every ablation of the paper is a field, so an ablation is one command-line override:

    samples per prompt .......... --group-size 16             (paper Table 6)
    KL coefficient / estimator .. --kl-coef 0 --kl-estimator k1
    hard / soft accuracy rewards  --soft-accuracy true        (paper Table 4)
    strict / soft format reward . --strict-format false       (paper Table 4)
    reasoning or not ............ --think false               (paper Table 1, non-CoT)
    example answer in the prompt  --with-example false        (paper Table 5)
    entropy bonus ............... --entropy-coef 0
    loss aggregation ............ --aggregation token-mean
    clip range .................. --clip-eps 0.2
    PPO epochs / mini-batches ... --ppo-epochs 2 --num-mini-batches 4
    optimizer / warmup .......... --lr 1e-6 --weight-decay 0.01 --warmup-steps 0
    response length ............. --max-new-tokens 1300
    sampling .................... --temperature 1.0 --top-p 1.0
    SFT baseline (paper Table 1)  --algo sft
    multi-object answers (SPEC 9) --task multi             (presets tiny_multi, visionreasoner_7b)

Command line: ``--name value`` where ``name`` is a field name (``-`` and ``_`` interchangeable) or a
dotted ``section.field`` (``--grpo.kl_coef 0.01``); a boolean given without a value means true
(``--resume``). ``--preset NAME`` picks the starting values; explicit overrides win over the preset.
``train.py --print-config`` prints the resolved configuration as JSON and exits.
Validation happens once, on the final values, in each dataclass's ``__post_init__``: every field
has its declared type (bool, int, str, or a FINITE float: nan and inf are refused for every
number), then the field's own range; a bad value raises ``ValueError`` naming the field, its
command-line option and the value. Checks that need the world size (the global batch divisible
across ranks) are in :func:`check_world_size`.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

# --------------------------------------------------------------------------------------------------
# Sections


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: a learning rate above it overflows the update


def knob(default: Any, help: str) -> Any:
    """A config field and its help line (``train.py --help`` shows it)."""
    return field(default=default, metadata={"help": " ".join(help.split())})


#: Exclusive bound of ``train.seed``: train.py seeds each rollout generator with
#: (seed * 1_000_003 + step) * 1_000_003 + position, which must stay below 2**63.
MAX_SEED = 2**23


def _require(cond: bool, name: str, value: Any, what: str) -> None:
    if not cond:
        raise ValueError(f"config field {name}={value!r} (--{name.replace('_', '-')}): {what}")


def _check_types(section: Any) -> None:
    """Every field of a config section has its declared type; floats are finite (an int is
    accepted for a float). ValueError naming the field otherwise."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, tp = getattr(section, f.name), hints[f.name]
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            _require(ok, f.name, value, "expected a number")
            _require(math.isfinite(value), f.name, value, "must be a finite number")
        elif tp is int:
            _require(isinstance(value, int) and not isinstance(value, bool), f.name, value, "expected an integer")
        elif tp in (bool, str):
            _require(isinstance(value, tp), f.name, value, f"expected {'true or false' if tp is bool else 'text'}")


@dataclass
class ModelConfig:
    model_path: str = knob("tiny", """Policy to train: a Hugging Face directory or hub id of Qwen2.5-VL, 'toy'
        (the shipped toy pretrained Qwen2.5-VL, models.toy: the default CPU run) or 'tiny' (random tiny
        Qwen2.5-VL built in memory, for tests). Required for the real presets.""")
    dtype: str = knob("float32", """Dtype of the master weights and optimizer state: float32 (recommended,
        SPEC 8) or bfloat16.""")
    attn_implementation: str = knob("sdpa", """Attention kernel passed to transformers: sdpa, eager or
        flash_attention_2.""")
    min_pixels: int = knob(0, """Processor min_pixels (0 = the processor's default). Images are resized to
        840x840 anyway.""")
    max_pixels: int = knob(0, "Processor max_pixels (0 = the processor's default).")
    tiny_seed: int = knob(0, "Seed of the random tiny model (model_path='tiny' only).")
    sam2: str = knob("", """Segmenter of the validation gIoU / cIoU: '' (none: the reports give the box-IoU
        proxy only), 'toy' (the shipped toy SAM2, models.toy), a hub id (facebook/sam2-hiera-large), or
        CONFIG::CHECKPOINT (a sam2 package config and a checkpoint file).""")

    def __post_init__(self):
        _check_types(self)
        _require(bool(self.model_path), "model_path", self.model_path,
                 "a model path is required (a Qwen2.5-VL directory, hub id, 'toy' or 'tiny')")
        _require(self.dtype in ("float32", "bfloat16"), "dtype", self.dtype, "use float32 or bfloat16")
        _require(self.attn_implementation in ("sdpa", "eager", "flash_attention_2"),
                 "attn_implementation", self.attn_implementation, "use sdpa, eager or flash_attention_2")
        _require(self.min_pixels >= 0, "min_pixels", self.min_pixels, "must be >= 0")
        _require(self.max_pixels >= 0, "max_pixels", self.max_pixels, "must be >= 0")
        _require(not (self.min_pixels and self.max_pixels) or self.min_pixels <= self.max_pixels, "min_pixels",
                 self.min_pixels, f"must be <= max_pixels ({self.max_pixels})")


@dataclass
class DataConfig:
    data_path: str = knob("synthetic", """Training data, a spec for data.open_dataset (a parquet file / folder
        of the authors' data, a LISA ReasonSeg folder...), 'synthetic' (num_synthetic scenes, both query
        families) or 'synthetic:N:FAMILY' (N scenes of the referring or reasoning queries only; the held-out
        scenes follow the family). Required for the real presets.""")
    num_synthetic: int = knob(256, "Number of training samples when data_path='synthetic'.")
    heldout_size: int = knob(16, """Held-out synthetic samples for the start/end reward report (0 = no
        report).""")
    data_seed: int = knob(0, "Seed of the synthetic data and of the per-epoch shuffling of the training set.")
    val_path: str = knob("heldout", """Validation set of the reports and --eval-every (with model.sam2 set):
        'heldout' (the heldout_size held-out synthetic scenes) or a dataset spec for data.open_dataset (e.g. a
        ReasonSeg val folder or parquet).""")
    val_limit: int = knob(0, "Validate on the first N samples of val_path only (0 = all).")

    def __post_init__(self):
        _check_types(self)
        _require(bool(self.data_path), "data_path", self.data_path,
                 "a data path is required (see data.open_dataset), or 'synthetic'")
        _require(self.num_synthetic >= 1, "num_synthetic", self.num_synthetic, "must be >= 1")
        _require(self.heldout_size >= 0, "heldout_size", self.heldout_size, "must be >= 0")
        _require(0 <= self.data_seed < 2**31, "data_seed", self.data_seed, "must be in [0, 2**31)")
        _require(bool(self.val_path), "val_path", self.val_path, "use 'heldout' or a dataset spec")
        _require(self.val_limit >= 0, "val_limit", self.val_limit, "must be >= 0")


@dataclass
class RolloutConfig:
    group_size: int = knob(8, "G, samples per prompt (SPEC 8: 8; 16 for the final models).")
    max_new_tokens: int = knob(1300, """Maximum response length in tokens (released Seg-Zero configs:
        max_response_length 1300).""")
    temperature: float = knob(1.0, """Sampling temperature; the same scaling is used in every log-prob (old,
        reference, current).""")
    top_p: float = knob(1.0, "Nucleus sampling threshold (1.0 = off).")
    think: bool = knob(True, """Ask for a reasoning chain and reward its format (False = the paper's non-CoT
        ablation).""")
    with_example: bool = knob(True, "Put the example answer in the prompt (False = paper Table 5 ablation).")

    def __post_init__(self):
        _check_types(self)
        _require(self.group_size >= 2, "group_size", self.group_size,
                 "GRPO needs at least 2 samples per prompt (group-normalised advantages)")
        _require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        _require(self.temperature > 0 and math.isfinite(self.temperature), "temperature",
                 self.temperature, "must be a finite number > 0")
        _require(0.0 < self.top_p <= 1.0, "top_p", self.top_p, "must be in (0, 1]")


@dataclass
class RewardConfig:
    soft_accuracy: bool = knob(False, """Soft accuracy rewards (IoU value, 1 - L1/840) instead of hard
        thresholds (SPEC 4).""")
    strict_format: bool = knob(True, """Strict segmentation-format reward (exact keys) instead of the soft one
        (SPEC 4).""")

    def __post_init__(self):
        _check_types(self)


@dataclass
class GRPOConfig:
    kl_coef: float = knob(5e-3, """beta, weight of the KL-to-reference loss term (0 = no reference model is
        built).""")
    kl_estimator: str = knob("k3", """KL estimator: k1 (log ratio), k2 (half squared log ratio), k3
        (low-variance, SPEC 8).""")
    entropy_coef: float = knob(1e-3, "Weight of the entropy bonus (subtracted from the loss; SPEC 8: 1e-3).")
    clip_eps: float = knob(0.2, "PPO clip range epsilon (ratio clipped to [1 - eps, 1 + eps]).")
    clip_eps_high: float = knob(0.0, """Upper clip range (DAPO clip-higher); 0 = the same as clip_eps
        (symmetric, the paper).""")
    aggregation: str = knob("seq-mean-token-mean", """Loss aggregation (grpo.losses): seq-mean-token-mean
        (mean over responses of each response's token mean: GRPO paper eq. 3, and what the released configs
        compute with their micro-batches of one response, SPEC 8), token-mean (over all tokens of the batch:
        DAPO, each response weighs by its length), seq-mean-token-sum-norm (Dr. GRPO, normalised by
        max_new_tokens).""")
    adv_estimator: str = knob("grpo", """Advantage estimator (grpo.advantages): grpo (group z-score, SPEC 8)
        or rloo.""")
    scale_by_std: bool = knob(True, """Divide the advantage by the group std (False = Dr. GRPO's unscaled
        advantage).""")
    ppo_epochs: int = knob(1, "Passes over each rollout batch (SPEC 8: 1).")
    num_mini_batches: int = knob(1, "Optimizer steps per pass over the rollout batch (SPEC 8: 1).")
    micro_batch_size: int = knob(8, """Samples per forward/backward on one rank (memory knob; does not change
        the result). Keep it a multiple of group_size: the training forward computes each prompt and its image
        once per micro-batch it appears in, so fewer rows than G recompute every prompt G / micro_batch_size
        times (train.py prints the cost).""")
    adv_eps: float = knob(1e-6, "Added to the group std in the advantage (SPEC 8).")
    tis_cap: float = knob(0.0, """Truncated importance sampling: weight each token's policy-gradient term by
        min(pi_trainer / pi_sampler, tis_cap) for the sampler-vs-trainer mismatch (Yao et al. 2025); 0 = off
        (the recipe; the released code has none).""")

    def __post_init__(self):
        _check_types(self)
        _require(self.kl_coef >= 0, "kl_coef", self.kl_coef, "must be >= 0")
        _require(self.kl_estimator in ("k1", "k2", "k3"), "kl_estimator", self.kl_estimator,
                 "use k1, k2 or k3")
        _require(self.entropy_coef >= 0, "entropy_coef", self.entropy_coef, "must be >= 0")
        _require(0 < self.clip_eps < 1, "clip_eps", self.clip_eps, "must be in (0, 1)")
        _require(0 <= self.clip_eps_high < 10, "clip_eps_high", self.clip_eps_high, "must be in [0, 10)")
        _require(self.aggregation in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
                 "aggregation", self.aggregation,
                 "use token-mean, seq-mean-token-mean or seq-mean-token-sum-norm")
        _require(self.adv_estimator in ("grpo", "rloo"), "adv_estimator", self.adv_estimator,
                 "use grpo or rloo")
        _require(self.ppo_epochs >= 1, "ppo_epochs", self.ppo_epochs, "must be >= 1")
        _require(self.num_mini_batches >= 1, "num_mini_batches", self.num_mini_batches, "must be >= 1")
        _require(self.micro_batch_size >= 1, "micro_batch_size", self.micro_batch_size, "must be >= 1")
        _require(self.adv_eps > 0, "adv_eps", self.adv_eps, "must be > 0")
        _require(self.tis_cap >= 0 and math.isfinite(self.tis_cap), "tis_cap", self.tis_cap,
                 "must be a finite number >= 0 (0 = off)")


@dataclass
class OptimConfig:
    optimizer: str = knob("adamw", """adamw (SPEC 8) or sgd (plain gradient descent; used by tests, where
        AdamW's first step, lr * sign(grad), would hide a wrong gradient scale).""")
    lr: float = knob(1e-6, "AdamW learning rate (SPEC 8: 1e-6).")
    weight_decay: float = knob(0.01, "AdamW weight decay (SPEC 8: 0.01).")
    beta1: float = knob(0.9, "AdamW beta1.")
    beta2: float = knob(0.999, "AdamW beta2.")
    adam_eps: float = knob(1e-8, "AdamW epsilon.")
    max_grad_norm: float = knob(1.0, "Global gradient-norm clip (SPEC 8: 1.0; 0 = no clipping).")
    warmup_steps: int = knob(0, """Linear learning-rate warmup from 0, in training steps (one scheduler step
        per rollout).""")
    lr_schedule: str = knob("constant", "After warmup: constant or cosine (to 0 at the last step).")

    def __post_init__(self):
        _check_types(self)
        _require(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "use adamw or sgd")
        _require(0 < self.lr <= FLOAT32_MAX, "lr", self.lr, "must be > 0 and representable in float32 (the "
                 "optimizer state's dtype, max 3.4e38)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.beta1 < 1, "beta1", self.beta1, "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, "beta2", self.beta2, "must be in [0, 1)")
        _require(self.adam_eps > 0, "adam_eps", self.adam_eps, "must be > 0")
        _require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "must be >= 0")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        _require(self.lr_schedule in ("constant", "cosine"), "lr_schedule", self.lr_schedule,
                 "use constant or cosine")


@dataclass
class ParallelConfig:
    device: str = knob("auto", """cpu, cuda, or auto (cuda when available). The process-group backend follows:
        gloo / nccl.""")
    mixed_precision: bool = knob(True, """bf16 parameters and compute, fp32 gradient reduction, fp32 master
        weights and optimizer state (FSDP2 MixedPrecisionPolicy), on CPU (gloo) and GPU alike; false: fp32
        throughout.""")
    activation_checkpointing: bool = knob(False, """Recompute each decoder / vision block in the backward pass
        to save memory.""")
    ref_cpu_offload: bool = knob(False, """Keep the frozen reference model's shards in CPU memory (FSDP2 CPU
        offload).""")
    gather_once: bool = knob(False, """Keep each FSDP2 unit gathered from its first forward until the next
        optimizer step, in the reference pass, the update and the SFT steps (grpo.parallel.gathered_between_steps):
        one all-gather per unit per step instead of one per forward and per backward of every micro-batch,
        the same numbers bit for bit, one full copy of the parameters more memory. For small models, whose
        steps are bound by collectives rather than compute (the toy run on gloo).""")

    def __post_init__(self):
        _check_types(self)
        _require(self.device in ("auto", "cpu", "cuda"), "device", self.device, "use auto, cpu or cuda")


@dataclass
class TrainConfig:
    preset: str = knob("tiny", "Name of the preset the run started from (informational once resolved).")
    algo: str = knob("grpo", "grpo (the paper) or sft (the supervised baseline on ground-truth answer text).")
    task: str = knob("single", """single: Seg-Zero's one box + two points and its five rewards (SPEC 2-4);
        multi: the authors' current list of objects (one box + one point each), its prompt, data (solution
        lists; 'synthetic' = multi-object scenes) and three rewards (SPEC 9, rewards.multi_object;
        soft_accuracy and strict_format do not apply to them).""")
    seed: int = knob(0, """Seed of the rollouts' sampling (one generator per step and prompt position,
        seeded from it) and of the global RNGs; the training set's order follows data_seed and the
        random tiny model tiny_seed, so runs that differ in seed alone see the same prompts.""")
    max_steps: int = knob(30, "Optimizer steps (one step = one rollout batch of prompts_per_step prompts).")
    prompts_per_step: int = knob(16, "B, GLOBAL prompts per step, split evenly over ranks (SPEC 8: 16).")
    output_dir: str = knob("runs/tiny", """Run directory: config.json, metrics.jsonl, heldout.jsonl, best.json,
        checkpoints/, hf_export/... A directory that holds an earlier run is refused unless resume or
        overwrite is given.""")
    resume: bool = knob(False, """Continue the run in output_dir from its latest complete checkpoint in
        output_dir/checkpoints (from step 0 when there is none); the rows its predecessor logged after that
        checkpoint are dropped from metrics.jsonl and heldout.jsonl.""")
    overwrite: bool = knob(False, """Replace the earlier run in output_dir: once the setup checks pass, its
        files (config.json, metrics.jsonl, heldout.jsonl, best.json, curves.png, checkpoints/, hf_export/,
        warmstart_sft/, val/, tb/) are deleted; other files stay. Not with resume.""")
    checkpoint_every: int = knob(0, """Save a checkpoint every K steps (0 = only after the last step, if
        save_last).""")
    eval_every: int = knob(0, """Validate every K steps (policy -> answer -> SAM2 -> gIoU / cIoU on
        data.val_path, logged as val/*; needs model.sam2); a new best val gIoU saves a checkpoint and updates
        best.json. 0 = the start and end reports only.""")
    save_last: bool = knob(True, "Save a checkpoint after the last step (besides the checkpoint_every ones).")
    export_hf: bool = knob(True, """At the end, export the policy in Hugging Face format to
        output_dir/hf_export.""")
    tensorboard: bool = knob(False, """Also log to TensorBoard (output_dir/tb) if the tensorboard package is
        installed.""")
    warmstart_sft_steps: int = knob(0, """GRPO only: a short SFT pass of this many steps before GRPO (the tiny
        run's warm start; the paper uses none). The reference model is the warm-started policy.""")
    warmstart_lr: float = knob(1e-3, "Learning rate of the warm-start SFT pass.")
    progress: bool = knob(True, "tqdm progress bar on rank 0.")

    def __post_init__(self):
        _check_types(self)
        _require(self.algo in ("grpo", "sft"), "algo", self.algo, "use grpo or sft")
        _require(self.task in ("single", "multi"), "task", self.task, "use single or multi")
        _require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        _require(self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step, "must be >= 1")
        _require(0 <= self.seed < MAX_SEED, "seed", self.seed,
                 f"must be in [0, {MAX_SEED}) (the rollout generators' seeds, built from it, are int64)")
        _require(bool(self.output_dir), "output_dir", self.output_dir, "must be a directory path")
        _require(not (self.resume and self.overwrite), "overwrite", self.overwrite,
                 "--resume continues the run in output_dir and --overwrite deletes it: pass one of them")
        _require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be >= 0")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        _require(self.warmstart_sft_steps >= 0, "warmstart_sft_steps", self.warmstart_sft_steps,
                 "must be >= 0")
        _require(0 < self.warmstart_lr <= FLOAT32_MAX, "warmstart_lr", self.warmstart_lr,
                 "must be > 0 and representable in float32 (max 3.4e38)")


@dataclass
class Config:
    """The whole run. Sections: model, data, rollout, reward, grpo, optim, parallel, train."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.task == "multi":
            _require(self.rollout.think and self.rollout.with_example, "task", self.train.task,
                     "the multi-object prompt has no think=false / with_example=false variants")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return build_config({f"{s}.{k}": v for s, sec in d.items() for k, v in sec.items()})


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def check_world_size(cfg: Config, world_size: int) -> None:
    """Checks that need the number of ranks: every rank gets the same number of whole prompts."""
    if cfg.train.prompts_per_step % world_size != 0:
        raise ValueError(
            f"config field prompts_per_step={cfg.train.prompts_per_step} is not divisible by the "
            f"{world_size} ranks: each rank must get the same number of prompts; use a multiple of "
            f"{world_size}")
    n_local = cfg.train.prompts_per_step // world_size * cfg.rollout.group_size
    if cfg.train.algo == "grpo" and n_local % cfg.grpo.num_mini_batches != 0:
        raise ValueError(
            f"config field num_mini_batches={cfg.grpo.num_mini_batches} does not divide the "
            f"{n_local} samples per rank (prompts_per_step / ranks * group_size)")


def prompt_passes(num_prompts: int, group_size: int, micro_batch_size: int, num_mini_batches: int = 1) -> int:
    """Prompt (and image) forwards in one pass of the shared-prefix training forward over one rank's
    rollout: the number of (micro-batch, prompt) pairs, micro-batches being consecutive rows of each
    strided mini-batch (grpo.update). Example: 2 prompts x G = 8 rows, micro-batches of 4 rows -> 4
    micro-batches, each inside one group -> 4 (every prompt twice); of 8 rows -> 2; of 12 rows ->
    rows 0-11 (prompts 0, 1) and 12-15 (prompt 1) -> 3."""
    group_of_row = [row // group_size for row in range(num_prompts * group_size)]
    passes = 0
    for k in range(num_mini_batches):
        mini = group_of_row[k::num_mini_batches]  # grpo.update.mini_batch_rows
        for start in range(0, len(mini), micro_batch_size):
            passes += len(set(mini[start:start + micro_batch_size]))
    return passes


def micro_batch_note(cfg: Config, world_size: int) -> str | None:
    """What ``micro_batch_size`` costs when its micro-batches split prompt groups; None when they do not.

    Compared with one micro-batch per mini-batch (every prompt computed once per mini-batch it has
    rows in), using :func:`prompt_passes` on this rank's rollout.
    """
    if cfg.train.algo != "grpo":
        return None
    b_local, g = cfg.train.prompts_per_step // world_size, cfg.rollout.group_size
    m, minis = cfg.grpo.micro_batch_size, cfg.grpo.num_mini_batches
    got = prompt_passes(b_local, g, m, minis)
    best = prompt_passes(b_local, g, b_local * g // minis, minis)
    if got <= best:
        return None
    return (f"note: micro_batch_size={m} splits the groups of group_size={g} samples: the training "
            f"forward computes {got} prompt (and image) passes per rank instead of {best}, "
            f"{got / best:.2g}x the prompt compute of each update and pi_old pass; micro-batches of "
            f"a multiple of {g} rows compute each prompt once, if memory allows.")


# --------------------------------------------------------------------------------------------------
# Presets: name -> (docstring with the launch command, overrides)


def preset_tiny() -> dict:
    """The default run: GRPO with the paper's hard rewards from the toy pretrained Qwen2.5-VL,
    synthetic scenes, CPU + gloo, validation through the toy SAM2.

    Launch (2 processes on 2 CPU cores):
        torchrun --standalone --nproc_per_node=2 train.py
    then, end to end on the run's export:
        python evaluate.py --preset tiny --model-path runs/tiny/hf_export --data-path synthetic:256 \\
            --data-seed 10000 --output-dir runs/tiny/eval

    What it does: starts from the shipped toy checkpoint (``model_path`` 'toy' = assets/toy/policy,
    built by ``python -m models.toy policy``: pretraining, then two grounding rounds; it already
    writes the answer format and localises, like the Instruct model the paper starts from; no warm
    start), then GRPO as in the paper:
    strict format + HARD accuracy rewards (IoU > 0.5, L1 < 10 px, points < 100 px and inside the
    box; a degenerate answer, such as a zero-area box or points outside the box, earns no accuracy
    reward), KL k3 5e-3, seq-mean-token-mean, temperature 1.0, G = 8. Validation (gIoU / cIoU with
    the shipped toy SAM2, assets/toy/sam2.safetensors) on 256 held-out scenes at the start, every
    ``eval_every`` steps and at the end; best.json points at the best checkpoint; curves.png.
    Departures from the paper (sized for 2 CPU cores): a 1.46 M-parameter policy that writes each
    coordinate as one token (models.tiny.build_toy_tokenizer), 8 prompts per step, 150 steps at lr
    3e-5 (the paper's 1e-6 is for a 3 B model), no entropy bonus, 96 new tokens, fp32,
    ``gather_once`` (the FSDP2 units stay gathered between optimizer steps: the same numbers, fewer
    gloo collectives).

    Measured 2026-12-07 on 2 CPU cores, seeds 0, 1, 2 (--seed):
      wall time ........................ 8.6 min (seed 0; 150 steps, 4 validations); 9.0 / 8.8 / 8.9
                                         min with the rollout's check_every at 16 instead of
                                         its CPU default 1 (the same figures), as the longer
                                         runs below were timed
      validation (256 held-out scenes, greedy, toy SAM2), start -> steps 50, 100, 150:
        seed 0: gIoU 60.4 -> 61.6, 58.4, 61.5
        seed 1: gIoU 60.4 -> 61.7, 63.1, 64.4
        seed 2: gIoU 60.4 -> 60.3, 60.6, 61.7   (end mean 62.5: +2.1)
        cIoU 60.9 -> 61.5 / 62.2 / 60.0 (mean 61.2: +0.3); box IoU 0.357 -> 0.365 / 0.362 /
        0.366 (mean 0.364: +0.007); parse failures 0.012 -> 0.016 / 0.016 / 0.012
      best.json: step 50 / 150 / 150; evaluate.py on hf_export (256 scenes) gives the same gIoU /
        cIoU as the last validation (seed 0: 61.5 / 61.5)
      metrics.jsonl (sampled, T = 1.0), mean of the first vs last 10 steps: reward/total 2.48 ->
        2.65 / 2.50 -> 2.53 / 2.50 -> 2.70, bbox_iou 0.127 -> 0.208 / 0.148 -> 0.163 / 0.133 ->
        0.209; kl -> 0.015 / 0.024 / 0.019.
    Other schedules from the shipped policy (seed 0, the same validation; gIoU at steps 50, 100,
    150): sampling at temperature 0.7: 62.2, 61.5, 60.5; lr 1e-4: 59.1, 60.5, 57.1 (box IoU
    0.325, KL 0.070); G = 16 with 4 prompts per step: 61.2, 62.9, 59.8 (8.1 min). None is
    better than the noise between seeds. GRPO does learn what it is shown: on 8 fixed training
    scenes (``--num-synthetic 8 --lr 1e-4``, 60 steps) the sampled bbox_iou reward rises from
    0.14 to 0.46 (point_l1 0.44 -> 0.79, first vs last 10 steps); on fresh scenes every step it
    rises by 0.015-0.08 in 150 steps: what the rewards of one scene teach carries over little to
    the next at this model size. Longer runs of the same schedule learn more, past the 10-min
    budget: 600 steps (``--max-steps 600 --eval-every 150``; 31.5 min for seed 0; seeds 1, 2 run
    to 300 steps, then resumed to 600) validate at gIoU
        seed 0: 61.5, 65.4, 65.3, 66.0 at steps 150, 300, 450, 600
        seed 1: 64.4, 63.2, 65.0, 65.1
        seed 2: 61.7, 63.4, 64.9, 65.4   (end mean 65.5: +5.1)
    cIoU 62.7 / 63.1 / 63.5 (mean +2.2) and box IoU 0.380 / 0.388 / 0.379 (mean 0.382: +0.025) at
    600, the sampled bbox_iou rising from 0.135-0.145 to 0.194-0.199 and point_l1 from 0.39-0.40
    to 0.51-0.52 (first vs last 100 steps); at 300 steps (16.2-16.7 min) the mean is 64.0 (+3.6).
    The schedule (lr, length) was chosen on 64 validation scenes with the toy policy built with
    an 800-step vision phase of kind weight 1 (models.toy; box IoU 0.311, validation start gIoU
    48.7 / cIoU 49.4), from which this preset, validating 64 scenes, ended at gIoU 52.8 /
    51.6 / 54.3 (mean +4.2), cIoU mean +3.4, box IoU mean +0.009, and after others from that
    policy: 40 steps at lr 1e-4 ended at gIoU 55.0 / 48.8 / 47.1 (mean +1.6, range -1.6 to
    +6.3), cIoU mean -0.6, box IoU mean -0.001; 150 steps at lr 1e-4 (one process) validated at
    gIoU 54.6 / 47.8 / 47.7 at steps 50 / 100 / 150 (box IoU 0.325 / 0.291 / 0.282) as the KL
    grew to 0.07. From that policy's first grounding round alone (box IoU 0.246) 40 steps at lr
    1e-4 gained +5.6 gIoU and +0.010 box IoU on average over 3 seeds, and lr 3e-4 collapsed it.
    Met: wall time, parse failures, end-to-end gIoU / cIoU >= 50 (every seed), the toy SAM2 (gIoU
    91.2 with ground-truth prompts), a validation gIoU that rises in every seed, +5 gIoU in 600
    steps (not within the 10 min). Not met: GRPO adding +5 gIoU within the 10 min, +0.05 box
    IoU, box IoU >= 0.6: the toy policy grounds a query among distractors only partly
    (models.toy), and its sampled answers hit the box (IoU > 0.5) 13-15 % of the time in the
    first steps.
    """
    return {
        "model.model_path": "toy", "model.sam2": "toy", "model.dtype": "float32",
        "data.data_path": "synthetic", "data.num_synthetic": 4096, "data.heldout_size": 256,
        "rollout.group_size": 8, "rollout.max_new_tokens": 96, "rollout.temperature": 1.0,
        "reward.soft_accuracy": False, "reward.strict_format": True,
        "grpo.kl_coef": 5e-3, "grpo.entropy_coef": 0.0, "grpo.micro_batch_size": 8,
        "grpo.aggregation": "seq-mean-token-mean",
        "optim.lr": 3e-5, "optim.weight_decay": 0.0, "optim.warmup_steps": 0,
        "parallel.device": "cpu", "parallel.mixed_precision": False, "parallel.gather_once": True,
        "train.max_steps": 150, "train.prompts_per_step": 8, "train.output_dir": "runs/tiny",
        "train.checkpoint_every": 0, "train.eval_every": 50, "train.warmstart_sft_steps": 0,
        "train.warmstart_lr": 1e-3,
    }


def preset_tiny_multi() -> dict:
    """The default run's multi-object variant (SPEC 9, ``task`` multi): the object-list answer,
    its three rewards and validation through the toy SAM2 on the union masks, on CPU.

    Launch (2 processes on 2 CPU cores):
        torchrun --standalone --nproc_per_node=2 train.py --preset tiny_multi
    then, end to end on the run's export:
        python evaluate.py --task multi --preset tiny --model-path runs/tiny-multi/hf_export \\
            --data-path synthetic:128:present --data-seed 10000 --max-new-tokens 256 \
            --output-dir runs/tiny-multi/eval

    What it does: the shipped toy policy writes the single-object answer, so a warm start of
    ``warmstart_sft_steps`` SFT steps (lr 1e-3) on the training scenes first teaches it the object
    list (the same warm start for every seed); then 80 GRPO steps at the default run's lr 3e-5,
    validated every 20 on 128 held-out scenes, with the multi-object rewards (format +
    Hungarian-matched accuracy + non-repeat), otherwise as in ``tiny`` but for the sampling
    temperature. The scenes (``synthetic:4096:present``, data.multi_object.MultiObjectSynthetic:
    3-6 shapes, 2-3 colours, objects listed left to right) hold queries that refer to one shape or
    several ("every red shape", "the two circles") but never to nothing, like the authors'
    multi-object training data: the released accuracy reward gives the empty answer 0 even on an
    empty target, so GRPO on scenes with empty targets unlearns the empty answer (measured:
    no-target accuracy 16.7 % -> 0 % in 10 steps). 256 new tokens hold a list of 6 objects (223 toy
    tokens); at 160 the longest answers are cut, and GRPO learns to list one object only.
    Departure from the released config: temperature 0.7 (theirs 1.0). At 1.0 the warm-started
    policy's sampled lists fail to parse in 13 % of the rows (1-2 % at 0.7), so the group
    advantages mostly teach the list format, which its greedy answers already have (0 parse
    failures), and the held-out gIoU does not rise in 80 steps (below).

    Measured 2026-12-07 on 2 CPU cores, seeds 0, 1, 2 (--seed): 10.3 min alone (seed 2, warm start
    included; 6.6 min for the GRPO steps and validations of seed 1); validation gIoU from 29.9 at
    the start of GRPO (cIoU 33.7, matched-box IoU 0.140) at steps 20, 40, 60, 80:
        seed 0: 30.3, 32.4, 32.5, 34.2   (cIoU 38.9, matched-box IoU 0.157)
        seed 1: 30.7, 32.6, 34.0, 34.1   (cIoU 39.6, 0.150)
        seed 2: 30.3, 28.9, 31.6, 32.7   (cIoU 36.2, 0.145)
    an end mean of 33.7 (+3.7; cIoU 38.2: +4.5; matched-box IoU 0.151: +0.011); `evaluate.py --task
    multi` on seed 0's export gives 34.2 / 38.9, its last validation. GRPO moves where the listed
    boxes lie, not how many it lists: mask IoU on queries with 2 targets 0.347 -> 0.383-0.391 and
    with 3 or more 0.287 -> 0.317-0.368 (1 target: 0.247 -> 0.260-0.264), while the greedy lists
    hold 1.24 / 2.0 / 1.95 objects for 1 / 2 / 3+ targets before and after. The sampled lists' mean
    accuracy reward stays near 0.05-0.07 (of 3) and about half of the groups earn the same reward
    in every sample (no advantage). The policy localises the objects of a list poorly (matched-box
    IoU 0.14-0.16; the single-object policy's box IoU is 0.357): it lists two objects for every
    colour or size query and fares worst on queries that name a kind (mask IoU 0.21 at the start).
    At temperature 1.0 (seed 0, the rest the same; 9.6 min): 32.1, 31.3, 31.9, 30.7 (cIoU 33.7 ->
    33.2, matched-box IoU 0.140 -> 0.139); 300 steps at 1.0 (``--temperature 1.0 --max-steps 300
    --eval-every 50``, 25.3 min) rise unevenly: 32.2, 32.3, 32.0, 24.9, 27.8, 35.4 (seed 0) and
    30.9, 32.4, 35.4, 33.1, 31.9, 33.5 (seed 1) at steps 50-300, while the sampled lists' parse
    failures fall from 10-12 % to 5 %. At 0.7, seed 0's run continued to 300 steps (``--resume
    --max-steps 300 --eval-every 40``) validates at 31.7, 34.0, 34.5, 34.8, 37.6, 36.1 at steps 120,
    160, 200, 240, 280, 300 (cIoU 40.2, matched-box IoU 0.159 at 300).
    What was measured on the way (64 held-out scenes, temperature 1.0): the objects in the shapes'
    drawing order instead of left to right gave a warm start at gIoU 24.0 (matched-box IoU 0.093),
    which 60 steps at lr 1e-4 took to 19.0; left to right it starts at 30.7 (0.141), and lr 1e-4
    takes it to 20.7 in 10 steps and 18.6 in 20 (the sampled lists failed to parse in 3-27 % of the
    rows of each step); a 1000-step warm start starts lower (26.3), and lr 3e-5 then gives 27.5,
    27.2, 28.7, 29.7 at steps 10-40. Scenes painted with the single-object scenes' background
    ramp (data.synthetic.SyntheticDataset._paint) instead of a flat background gave a lower warm
    start (128 scenes: gIoU 27.1, matched-box IoU 0.104, parse failures 4 %).
    """
    d = preset_tiny()
    d.update({
        "train.task": "multi", "data.data_path": "synthetic:4096:present", "rollout.max_new_tokens": 256,
        "train.warmstart_sft_steps": 300, "train.max_steps": 80, "optim.lr": 3e-5, "train.eval_every": 20,
        "data.heldout_size": 128, "rollout.temperature": 0.7,
        "train.output_dir": "runs/tiny-multi",
    })
    return d


def preset_seg_zero_3b() -> dict:
    """The paper's recipe (SPEC 8) on Qwen2.5-VL-3B-Instruct: G=8, 16 prompts/step, lr 1e-6, bf16 on GPU.

    Launch (one node, 8 GPUs):
        torchrun --nproc_per_node=8 train.py --preset seg_zero_3b \\
            --model-path /path/to/Qwen2.5-VL-3B-Instruct --data-path /path/to/refCOCOg_9k_840 \\
            --output-dir runs/seg_zero_3b
    The final paper models use 16 samples per prompt: add ``--group-size 16 --micro-batch-size 16``.

    Values of the released configs (training_scripts/seg_zero_{3b,7b}.yaml, identical for 3B and
    7B): rollout_batch_size 16 = global_batch_size 16 prompts (one optimizer step per rollout),
    n 8, temperature 1.0, max_response_length 1300, kl_loss_coef 5e-3 low_var_kl, lr 1e-6,
    weight_decay 1e-2, max_grad_norm 1.0, one episode, a checkpoint every 50 steps, and
    micro_batch_size_per_device_for_update 1: a token mean per response, averaged over responses
    (``aggregation`` seq-mean-token-mean, SPEC 8). Their min_pixels 3136 / max_pixels 12845056
    are the Qwen2.5-VL processor defaults (``min_pixels`` / ``max_pixels`` 0 here); an 840 x 840
    image is 900 image tokens either way. Departure: micro-batches of G = 8 rows (one prompt group:
    its prompt and image computed once) instead of 1; the loss and gradient are the same.
    """
    return {
        "model.model_path": "", "model.dtype": "float32", "model.attn_implementation": "sdpa",
        "data.data_path": "", "data.heldout_size": 0,
        "rollout.group_size": 8, "rollout.max_new_tokens": 1300, "rollout.temperature": 1.0,
        "rollout.top_p": 1.0,
        "grpo.kl_coef": 5e-3, "grpo.kl_estimator": "k3", "grpo.entropy_coef": 1e-3,
        "grpo.clip_eps": 0.2, "grpo.ppo_epochs": 1, "grpo.num_mini_batches": 1,
        "grpo.aggregation": "seq-mean-token-mean", "grpo.micro_batch_size": 8,
        "optim.lr": 1e-6, "optim.weight_decay": 0.01, "optim.max_grad_norm": 1.0,
        "parallel.device": "cuda", "parallel.mixed_precision": True,
        "parallel.activation_checkpointing": True,
        # 9,000 samples / 16 prompts per step = one epoch (SPEC 8): 562 steps, 8,992 samples.
        "train.max_steps": 9000 // 16, "train.prompts_per_step": 16,
        "train.output_dir": "runs/seg_zero_3b", "train.checkpoint_every": 50,
        "train.warmstart_sft_steps": 0,
    }


def preset_seg_zero_7b() -> dict:
    """The paper's recipe (SPEC 8) on Qwen2.5-VL-7B-Instruct; reference model offloaded to CPU.

    Launch (one node, 8 GPUs):
        torchrun --nproc_per_node=8 train.py --preset seg_zero_7b \\
            --model-path /path/to/Qwen2.5-VL-7B-Instruct --data-path /path/to/refCOCOg_9k_840 \\
            --output-dir runs/seg_zero_7b
    The released 7B config has the same values as the 3B one (see ``seg_zero_3b``).
    """
    d = preset_seg_zero_3b()
    d.update({"parallel.ref_cpu_offload": True, "train.output_dir": "runs/seg_zero_7b"})
    return d


def preset_visionreasoner_7b() -> dict:
    """The authors' released multi-object config (VisionReasoner, SPEC 9) on Qwen2.5-VL-7B-Instruct.

    Launch (one node, 8 GPUs):
        torchrun --nproc_per_node=8 train.py --preset visionreasoner_7b \\
            --model-path /path/to/Qwen2.5-VL-7B-Instruct \\
            --data-path /path/to/VisionReasoner_multi_object_7k_840 --output-dir runs/visionreasoner_7b

    Values of the released multi-object config: 16 prompts x 8 samples per step, lr 1e-6, KL loss
    k3 (low_var_kl) 5e-3, max 2000 new tokens, update micro-batches of 16 responses per device;
    the rest as the Seg-Zero recipe (``seg_zero_7b``: temperature 1.0, weight decay 0.01, grad
    clip 1.0, one optimizer step per rollout, bf16 compute, reference offloaded to CPU).
    Aggregation: the released loss is a token mean over each device's 16 responses, averaged over
    the 8 devices; ``token-mean`` here is the token mean over all 128 responses, which equals it
    when every device holds as many response tokens and otherwise differs only in how devices
    with longer responses are weighted. ``max_steps`` stays at the Seg-Zero value (562); for one
    epoch set ``--max-steps`` to the number of rows / 16.
    """
    d = preset_seg_zero_7b()
    d.update({
        "train.task": "multi", "rollout.group_size": 8, "train.prompts_per_step": 16,
        "optim.lr": 1e-6, "grpo.kl_coef": 5e-3, "grpo.kl_estimator": "k3",
        "rollout.max_new_tokens": 2000, "grpo.micro_batch_size": 16, "grpo.aggregation": "token-mean",
        "train.output_dir": "runs/visionreasoner_7b",
    })
    return d


PRESETS: dict[str, Callable[[], dict]] = {
    "tiny": preset_tiny,
    "tiny_multi": preset_tiny_multi,
    "seg_zero_3b": preset_seg_zero_3b,
    "seg_zero_7b": preset_seg_zero_7b,
    "visionreasoner_7b": preset_visionreasoner_7b,
}

# --------------------------------------------------------------------------------------------------
# Building from presets and overrides


def _field_index() -> dict[str, tuple[str, str]]:
    """Bare field name -> (section, field). Field names are unique across sections."""
    index: dict[str, tuple[str, str]] = {}
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in index, f"duplicate field name {f.name}"
            index[f.name] = (sec, f.name)
    return index


FIELD_INDEX = _field_index()


def _resolve_name(name: str) -> tuple[str, str]:
    key = name.lstrip("-").replace("-", "_")
    if "." in key:
        sec, _, fname = key.partition(".")
        if sec in SECTIONS and fname in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
            return sec, fname
    elif key in FIELD_INDEX:
        return FIELD_INDEX[key]
    raise ValueError(f"unknown config option {name!r}; known: "
                     + ", ".join(sorted("--" + k.replace("_", "-") for k in FIELD_INDEX)))


def _field_type(sec: str, fname: str) -> Any:
    return typing.get_type_hints(SECTIONS[sec])[fname]


def _convert(sec: str, fname: str, value: Any) -> Any:
    """String (from the command line) or JSON value -> the field's type; ValueError if it is not one."""
    tp = _field_type(sec, fname)
    if not isinstance(value, str):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is bool and not isinstance(value, bool):
            raise ValueError(f"config field {fname}={value!r}: expected true or false")
        return value
    if tp is bool:
        try:
            return parse_bool(value)
        except ValueError:
            raise ValueError(f"config field {fname}={value!r}: expected true or false") from None
    if tp in (int, float):
        try:
            return tp(float(value)) if tp is int and float(value).is_integer() else tp(value)
        except ValueError:
            raise ValueError(f"config field {fname}={value!r}: expected a number ({tp.__name__})") from None
    return value


def parse_bool(value: str) -> bool:
    """A boolean option's value as train.py, evaluate.py and models.infer spell it: true / false
    (or 1 / 0, yes / no, on / off, any case). ValueError otherwise."""
    low = value.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def build_config(overrides: dict[str, Any] | None = None, preset: str | None = None) -> Config:
    """Preset values, then ``overrides`` ({'section.field' or 'field': value}); validated once."""
    overrides = dict(overrides or {})
    preset = preset or str(overrides.pop("preset", overrides.pop("train.preset", "tiny")))
    if preset not in PRESETS:
        raise ValueError(f"config field preset={preset!r}: unknown preset; choose from {sorted(PRESETS)}")
    values: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    for key, v in PRESETS[preset]().items():
        sec, fname = _resolve_name(key)
        values[sec][fname] = v
    for key, v in overrides.items():
        sec, fname = _resolve_name(key)
        values[sec][fname] = _convert(sec, fname, v)
    values["train"]["preset"] = preset
    return Config(**{sec: SECTIONS[sec](**vals) for sec, vals in values.items()})


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d|\.\d|inf$|nan$)")  # -1e-6 and -inf are values

    def error(self, message):  # a user mistake is a ValueError (train.py prints it as one line)
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    """train.py's command line, one option per config field: ``--name value`` where ``name`` is the
    field (``-`` or ``_``) or ``section.field``; a boolean without a value means true. Values stay
    strings here: the config converts and validates them (build_config)."""
    tiny = build_config(preset="tiny")  # the values a bare `train.py` runs with, shown in the help
    parser = _Parser(prog="train.py", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Seg-Zero GRPO training. Each option shows its value in the default preset "
                                 "(tiny), then its help.",
                     epilog="\n\n".join(f"preset {name}: {inspect.getdoc(fn)}" for name, fn in PRESETS.items()))
    parser.add_argument("--preset", help=f"starting values, overridden by the options: {', '.join(PRESETS)}")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (preset + options) as JSON and exit")
    for sec, cls in SECTIONS.items():
        group = parser.add_argument_group(sec)
        for f in dataclasses.fields(cls):
            if f.name == "preset":
                continue
            flags = dict.fromkeys(f"--{name}" for name in (f.name.replace("_", "-"), f.name, f"{sec}.{f.name}"))
            boolean = _field_type(sec, f.name) is bool
            group.add_argument(*flags, dest=f"{sec}.{f.name}", default=argparse.SUPPRESS, metavar="VALUE",
                               nargs="?" if boolean else None, const="true" if boolean else None,
                               help=f"[{getattr(getattr(tiny, sec), f.name)!r}] {f.metadata['help']}".replace("%", "%%"))
    return parser


def parse_args(argv: list[str]) -> Config:
    """Command line -> Config (see :func:`build_parser`)."""
    overrides = vars(build_parser().parse_args(argv))
    overrides.pop("print_config")
    return build_config(overrides, preset=overrides.pop("preset"))
