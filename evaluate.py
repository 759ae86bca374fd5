"""Evaluate Seg-Zero (policy + SAM2) on a segmentation set: gIoU, cIoU, parse failures.

Metrics as in SPEC.md section 7 (Seg-Zero arXiv 2503.06520, section 4, LISA's protocol): per
sample I and U with "ignore" pixels excluded, gIoU = mean I/U, cIoU = sum I / sum U, in percent
with one decimal; an unparseable answer is an empty mask (IoU 0). For ReasonSeg the table also has
the short-query and sentence-query rows (``Sample.is_sentence``). Inference as in SPEC section 1:
greedy decoding, SAM2 on the ORIGINAL image.

Launch commands
---------------
The options that name what train.py names are spelt as train.py spells them (``--model-path``,
``--data-path``, ``--data-seed``, ``--sam2``, ``--think``, ``--with-example``, ``--task``,
``--max-new-tokens``, ``--attn-implementation``, ``--tiny-seed``, ``--device``, ``--output-dir``).

The default training run's policy with the shipped toy SAM2 on held-out synthetic scenes (any CPU
machine, no download; ``--preset tiny`` without ``--model-path`` uses the random tiny policy)::

    python evaluate.py --preset tiny --model-path runs/tiny/hf_export --data-path synthetic:256 \\
        --data-seed 10000 --output-dir runs/tiny/eval

The authors' ReasonSeg parquet (val: 200 rows, test: 779), the released Seg-Zero-7B, 8 GPUs::

    torchrun --nproc_per_node 8 evaluate.py --data-path /data/ReasonSeg_test \\
        --model-path /ckpt/Seg-Zero-7B --sam2 facebook/sam2-hiera-large \\
        --batch-size 8 --output-dir runs/reasonseg-test --visualize-first 20 --visualize-worst 20

LISA's ReasonSeg folders (``--split val`` picks ``ReasonSeg/val``) and RefCOCO(+/g) in the refer
format (``--refer-dataset refcoco --split testA``; RefCOCOg: ``--refer-dataset refcocog --split
test``; the images are COCO train2014, ``--image-dir``)::

    torchrun --nproc_per_node 8 evaluate.py --data-path /data/ReasonSeg --split val --model-path PATH ...
    torchrun --nproc_per_node 8 evaluate.py --data-path /data/refer --refer-dataset refcoco \\
        --split testA --image-dir /data/coco/train2014 --model-path PATH --output-dir runs/refcoco-testA

The paper's ablations: ``--prompt-mode box|points`` (Table 2), ``--with-example false`` (Table 5),
``--think false`` (non-CoT, Table 1). SAM2 as a config and checkpoint file:
``--sam2 configs/sam2.1/sam2.1_hiera_l.yaml::/ckpt/sam2.1_hiera_large.pt``.

Multi-object mode (SPEC section 9, the authors' VisionReasoner format): ``--task multi`` asks for
the list of objects, prompts SAM2 with each (box, point) and scores the union mask; the table adds
the no-target and target accuracies (:mod:`eval.multi_object`). gRefCOCO (``grefs(unc).json``)::

    torchrun --nproc_per_node 8 evaluate.py --task multi --data-path /data/grefcoco --split val \\
        --image-dir /data/coco/train2014 --model-path /ckpt/VisionReasoner-7B --output-dir runs/grefcoco-val
    python evaluate.py --task multi --preset tiny --output-dir runs/eval-tiny-multi   # CPU plumbing

Ignore regions of LISA's ReasonSeg folders (:mod:`data.lisa`): ``--ignore-regions exclude`` (the
default) leaves them out of intersection and union, LISA's evaluation and the protocol of LISA's
ReasonSeg numbers; ``--ignore-regions as-target`` counts them as target, which is what the Seg-Zero
authors' ReasonSeg parquet holds and so the protocol of the Seg-Zero paper's ReasonSeg numbers.
The authors' parquet is read as it is (its masks are 0 / 1), whatever the option says.

Output directory (see :mod:`eval.results` for the formats)
----------------------------------------------------------
``predictions.jsonl`` (one line per sample; written per rank as ``predictions.rank{r}.jsonl`` with
an fsync per batch, merged by rank 0 at the end; an unreadable sample is a line with status
``bad_sample`` and its reason), ``metrics.json`` (the table
and the run config, written atomically), ``run_config.json``, and ``vis/index.html`` with PNG
panels when ``--visualize-first`` / ``--visualize-worst`` are set.

Resume: run the same command again; samples already recorded are skipped (a different world size
is fine). A run config that differs in what determines the predictions or their scores (data,
image folder, ignore-region protocol, model, SAM2, prompt, generation length) is a ValueError
instead of a silently mixed result; ``--limit`` may change. A bad sample counts as done, so a run
made with the wrong ``--image-dir`` is not completed by one with the right folder: that is the
same ValueError (start over in another ``--output-dir``).
``python evaluate.py --recompute DIR`` prints the table of DIR from its predictions alone (a DIR
without any prediction record is a ValueError).

User mistakes (a bad option or ``--device``, an ``--output-dir`` that is a file or not writable, a
dataset file that cannot be read at all, an image folder that does not exist, a split the dataset
does not hold, a dataset without masks such as the authors' training parquet, a dataset whose
sample ids repeat, a ``run_config.json`` or prediction file that cannot be read) end with one line
"error: ..." and exit code 2, found before the models load; a sample that cannot be read is
counted (a ``bad_sample`` line of the predictions) and the evaluation goes on.

Distributed: under ``torchrun`` every rank loads both models and takes the dataset indices
``rank, rank + world, ...`` (:func:`eval.loop.shard_indices`); there is no collective until the
final barrier, after which rank 0 merges the files and recomputes the metrics from the merged
predictions (so 1 rank and N ranks give the same table by construction).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

import torch

from data.lisa import IGNORE_REGION_PROTOCOLS
from data.paths import check_output_dir
from data.parquet import TRAIN_COLUMNS
from eval.loop import check_source_ids, evaluate_shard
from eval.multi_object import format_multi_object_table, multi_object_table
from eval.results import done_ids, format_table, merge_predictions, read_predictions, table_from_records, write_metrics
from grpo.parallel import barrier, init_distributed, shutdown
from grpo.tracking import write_atomic
from grpo.recipe import parse_bool
from models.segmenter import DEFAULT_SAM2_HUB_ID, split_sam2

RUN_CONFIG = "run_config.json"

#: Arguments that determine the predictions or their scores: a resume must not change them.
PREDICTION_KEYS = ("task", "data_path", "split", "refer_dataset", "split_by", "image_dir", "data_seed",
                   "ignore_regions", "model_path", "tiny_seed", "sam2", "preset", "prompt_mode", "with_example",
                   "think", "max_new_tokens", "single_quotes")

#: What ``--preset tiny`` sets (unless given on the command line).
TINY_DEFAULTS = {"model_path": "tiny", "sam2": "toy", "data_path": "synthetic:8", "max_new_tokens": 96,
                 "batch_size": 4}


def build_parser() -> argparse.ArgumentParser:
    """The options that name what train.py names use train.py's words (grpo.recipe's fields)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="single", choices=["single", "multi"],
                   help="single: Seg-Zero's one box + two points; multi: the object list (SPEC 9)")
    p.add_argument("--data-path", help="'synthetic[:N][:FAMILY]' (FAMILY: referring, reasoning or mixed), a "
                                       "parquet file/folder, a LISA ReasonSeg folder, or a refer root "
                                       "(instances.json + refs(...).p)")
    p.add_argument("--split", help="dataset split (LISA sub-folder, parquet file prefix, refer split)")
    p.add_argument("--refer-dataset", default="refcocog", help="refer format: refcoco|refcoco+|refcocog")
    p.add_argument("--split-by", help="refer format: unc|umd|google (default: the dataset's usual one)")
    p.add_argument("--image-dir", help="refer format: folder of the COCO train2014 images")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic set")
    p.add_argument("--ignore-regions", default="exclude", choices=list(IGNORE_REGION_PROTOCOLS),
                   help="LISA ReasonSeg folders: 'exclude' leaves ignore regions out of I and U "
                        "(LISA's evaluation); 'as-target' counts them as target (the Seg-Zero "
                        "authors' ReasonSeg conversion). Other formats are read as they are")
    p.add_argument("--model-path", help="Qwen2.5-VL checkpoint directory or hub id; 'toy' (the shipped toy "
                                        "policy) or 'tiny' (random tiny, built in memory)")
    p.add_argument("--tiny-seed", type=int, default=0, help="seed of the random tiny model (--model-path tiny)")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention implementation of the reasoning model")
    p.add_argument("--sam2", help=f"SAM2: a hub id (default {DEFAULT_SAM2_HUB_ID}), 'toy' (the shipped toy "
                                  "SAM2), or CONFIG::CHECKPOINT (a sam2 package config, or a yaml file that "
                                  "only instantiates sam2 classes, and a checkpoint file)")
    p.add_argument("--preset", choices=["tiny"], help="tiny: --model-path tiny --sam2 toy --data-path "
                                                      "synthetic:8, CPU sizes, unless given")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples of the dataset")
    p.add_argument("--batch-size", type=int, help="samples per generation batch, per rank (default 1)")
    p.add_argument("--output-dir", required=False, help="where predictions, metrics and panels go")
    p.add_argument("--prompt-mode", default="box+points", choices=["box+points", "box", "points"],
                   help="what SAM2 is prompted with (paper Table 2)")
    p.add_argument("--with-example", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="put the example answer in the prompt (false: paper Table 5 ablation)")
    p.add_argument("--think", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="ask for a reasoning chain (false: answer only, non-CoT, paper Table 1)")
    p.add_argument("--single-quotes", action="store_true",
                   help="also accept {'bbox': ...} answers (off: score what training rewarded)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default 1024, SPEC)")
    p.add_argument("--visualize-first", type=int, default=0, help="draw panels of the first K samples")
    p.add_argument("--visualize-worst", type=int, default=0, help="draw panels of the K lowest IoUs")
    p.add_argument("--device", help="cpu | cuda | cuda:K (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--recompute", metavar="DIR",
                   help="print the table of DIR from its predictions alone (with --limit: of the first N)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line; fills the preset and SPEC defaults."""
    args = build_parser().parse_args(argv)
    if args.recompute:
        return args
    if args.preset == "tiny":
        for key, value in TINY_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    elif not args.model_path:
        raise ValueError("--model-path is required (or --preset tiny)")
    args.sam2 = args.sam2 or DEFAULT_SAM2_HUB_ID
    split_sam2(args.sam2)  # CONFIG::CHECKPOINT has both parts
    if not args.data_path:
        raise ValueError("--data-path is required (or --preset tiny)")
    if args.task == "multi" and (not args.with_example or not args.think or args.single_quotes):
        raise ValueError("--with-example false, --think false and --single-quotes are single-object options; "
                         "the multi-object prompt and parser have no such variants")
    if not args.output_dir:
        raise ValueError("--output-dir is required")
    args.batch_size = 1 if args.batch_size is None else args.batch_size
    args.max_new_tokens = 1024 if args.max_new_tokens is None else args.max_new_tokens
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("limit", "visualize_first", "visualize_worst"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    check_device(args.device)
    check_output_dir(args.output_dir, "--output-dir")
    return args


def check_device(device: str | None) -> None:
    """ValueError unless ``device`` is None, cpu, cuda or cuda:K for a CUDA device that exists here."""
    if device is None:
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r}: use cpu, cuda or cuda:K")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(f"--device {device!r} requested but this machine has {count} CUDA device(s); "
                             f"use --device cpu" + (f" or cuda:0..cuda:{count - 1}" if count else ""))


# ------------------------------------------------------------------------------------------ build

def build_source(args: argparse.Namespace):
    """The dataset named by ``--data-path`` (any format ``data.open_dataset`` reads)."""
    from data import open_dataset, open_multi_object_dataset

    opener = open_multi_object_dataset if args.task == "multi" else open_dataset
    return opener(args.data_path, split=args.split, seed=args.data_seed,
                        dataset=args.refer_dataset, split_by=args.split_by, image_dir=args.image_dir,
                        ignore_regions=args.ignore_regions)


def build_pipeline(args: argparse.Namespace, device: str):
    """Policy + SAM2 -> ``models.pipeline.SegZeroPipeline`` with the ablation switches."""
    from models.pipeline import SegZeroPipeline, load_reasoning_model, load_segmenter
    from models.policy import SegZeroPolicy

    model, processor = load_reasoning_model(args.model_path, device, args.attn_implementation, args.tiny_seed)
    segmenter = load_segmenter(args.sam2, device=device)
    policy = SegZeroPolicy(model, processor, with_example=args.with_example, think=args.think, task=args.task)
    if args.task == "multi":
        from models.multi_object import MultiObjectPipeline

        return MultiObjectPipeline(policy, segmenter, prompt_mode=args.prompt_mode, max_new_tokens=args.max_new_tokens)
    return SegZeroPipeline(policy, segmenter, prompt_mode=args.prompt_mode,
                           max_new_tokens=args.max_new_tokens, single_quotes=args.single_quotes)


def check_source(source, data_path: str) -> None:
    """ValueError, before any model loads, when ``source`` cannot be evaluated: its samples carry
    no mask (``has_masks`` False: the authors' training parquet) or its ids are not one unique id
    per sample (:func:`eval.loop.check_source_ids`)."""
    if not getattr(source, "has_masks", True):
        raise ValueError(f"{data_path} has no masks: it is a training set (columns {', '.join(TRAIN_COLUMNS)}: "
                         "a box and points per sample), not an evaluation split; evaluate a split with "
                         "masks (the authors' ReasonSeg parquet, a LISA ReasonSeg folder, a refer dataset)")
    check_source_ids(source)


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in PREDICTION_KEYS}


def read_run_config(output_dir: str) -> dict[str, Any] | None:
    """The ``run_config.json`` of ``output_dir`` (None when there is none); ValueError naming the
    file when it is not readable JSON or not an object."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable run config ({e}); use another --output-dir, or delete "
                         "that one to start over") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object (the run's settings), got {type(config).__name__}")
    return config


def check_run_config(output_dir: str, config: dict[str, Any]) -> None:
    """ValueError when ``output_dir`` holds a run made with different prediction settings (a key
    missing from an older file counts as null, except ``task``: a single-object run)."""
    old = read_run_config(output_dir)
    if old is None:
        return
    old.setdefault("task", "single")  # a run config without a task is a single-object run
    diff = {k: (old.get(k), config[k]) for k in config if old.get(k) != config[k]}
    if diff:
        raise ValueError(
            f"{output_dir} holds predictions made with other settings (key: (then, now)): {diff}; "
            "use another --output-dir, or delete that one to start over"
        )


# -------------------------------------------------------------------------------------------- run

def run(args: argparse.Namespace, *, pipeline=None, source=None, log=print) -> dict | None:
    """Evaluate (resuming), merge, print and save the table; returns it on rank 0 (None elsewhere).

    ``pipeline`` / ``source`` override what the arguments would build (tests inject fakes).
    """
    info = init_distributed(args.device or "auto", timeout_s=6 * 3600)  # ranks meet at the end only
    rank, world, device = info.rank, info.world_size, str(info.device)
    config = run_config(args)
    os.makedirs(args.output_dir, exist_ok=True)
    check_run_config(args.output_dir, config)  # every rank, before anything is written
    done = done_ids(args.output_dir)  # before any rank appends (barrier below); a corrupt file fails here
    source = build_source(args) if source is None else source
    check_source(source, args.data_path)
    pipeline = build_pipeline(args, device) if pipeline is None else pipeline
    barrier()
    if rank == 0:
        write_atomic(os.path.join(args.output_dir, RUN_CONFIG), json.dumps(config, indent=2) + "\n")
    stats = evaluate_shard(pipeline, source, args.output_dir, rank=rank, world_size=world,
                           batch_size=args.batch_size, limit=args.limit, done=done, log=log,
                           progress=(rank == 0 and sys.stderr.isatty()))
    log(f"[rank {rank}] evaluated {stats.num_evaluated}, bad {stats.num_bad}, skipped (done before) "
        f"{stats.num_skipped} of {stats.num_assigned} in {stats.seconds:.1f} s")
    barrier()
    table = None
    if rank == 0:
        records = merge_predictions(args.output_dir)
        if args.limit is not None:  # a resume with a smaller limit: report what was asked
            records = [r for r in records if r.index < args.limit]
        table = multi_object_table(records) if args.task == "multi" else table_from_records(records)
        for r in records:
            if r.is_bad:
                log(f"bad sample {r.id!r} (index {r.index}): {r.reason}")
        split = f" [{args.split}]" if args.split else ""
        show = format_multi_object_table if args.task == "multi" else format_table
        log(show(table, title=f"{args.data_path}{split}: {len(records)} samples"))
        path = write_metrics(args.output_dir, table, {"config": config, "world_size": world,
                                                      "limit": args.limit})
        log(f"metrics: {path}")
        if args.visualize_first or args.visualize_worst:
            from eval.visualize import render_visualizations

            index = render_visualizations(records, source, args.output_dir,
                                          args.visualize_first, args.visualize_worst)
            log(f"visualisations: {index}")
    barrier()
    return table


def recompute(path: str, limit: int | None = None) -> dict:
    """``--recompute``: print and return the table of an ``--output-dir`` (or one predictions file)
    from its records alone, the first ``limit`` dataset indices with ``limit``. ValueError when
    ``path`` holds no prediction record (not an evaluation's output, or nothing evaluated yet)."""
    config = read_run_config(path) if os.path.isdir(path) else None
    task = (config or {}).get("task", "single")
    records = read_predictions(path)
    if not records:
        raise ValueError(f"no prediction records in {path} (no predictions.jsonl or predictions.rank*.jsonl "
                         "with a record): not an --output-dir of evaluate.py, or nothing evaluated yet")
    if limit is not None:
        records = [r for r in records if r.index < limit]
    if task == "multi":
        table = multi_object_table(records)
        print(format_multi_object_table(table, title=path))
    else:
        table = table_from_records(records)
        print(format_table(table, title=path))
    return table


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.recompute:
        return recompute(args.recompute, args.limit)
    try:
        return run(args)
    finally:
        shutdown(barrier=False)


def cli(argv: list[str] | None = None) -> int:
    """``main`` for the command line: a user mistake (ValueError, FileNotFoundError: a bad option,
    a path that is not there or not writable, a data file that cannot be read) is one line
    "error: ..." on stderr and exit code 2, no traceback."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
