"""One-image Seg-Zero inference from the command line (SPEC.md section 1).

    python -m models.infer --image cat.jpg --query "the animal that could catch the mouse" \\
        --output-dir out/ --model-path /path/to/Seg-Zero-7B --sam2 facebook/sam2-hiera-large
    python -m models.infer --image cat.jpg --query "the cat" --output-dir out/ \\
        --model-path tiny --sam2 toy                                       # no weights needed
    python -m models.infer --task multi --image cups.jpg --query "all the cups" --output-dir out/ \\
        --model-path /path/to/VisionReasoner-7B                            # the object list (SPEC 9)

Prints the reasoning and the answer (status; bbox and points in the 840 frame the policy sees and
in the original frame), and writes in ``--output-dir``:

- ``mask.png``: the predicted mask, 8-bit single channel, 255 = object, original image size
  (all zero when the answer did not parse: SPEC section 1.6);
- ``overlay.png``: the image with the mask, box and points drawn (``models.draw.overlay``);
- ``prediction.json``: query, completion, reasoning, status, coordinates, image size, mask area.

The options that name what train.py names are spelt as train.py spells them. ``--model-path``: a
Qwen2.5-VL checkpoint directory or hub id, 'toy' (the shipped toy policy, ``models.toy``) or
'tiny' (the random tiny Qwen2.5-VL of ``models.tiny``, seeded by ``--tiny-seed``). ``--sam2``: a
hub id (default ``facebook/sam2-hiera-large``, the authors'), 'toy' (the shipped toy SAM2 trained
on the synthetic scenes) or CONFIG::CHECKPOINT (a sam2 package config or yaml file, and a
checkpoint file). ``--model-path tiny --sam2 toy`` runs the whole path on a CPU machine without
any download (the text is garbage); ``--model-path runs/tiny/hf_export --sam2 toy`` runs the
policy exported by the default training run with the toy SAM2. ``--think false`` and
``--with-example false`` are the paper's non-CoT (Table 1) and no-example (Table 5) prompts.

``--task multi`` uses the multi-object prompt and answer (SPEC section 9): every object's box and
point are printed and drawn, the mask is the union of SAM2's object masks, and ``prediction.json``
lists the objects; an empty list ("nothing here") gives an empty mask.

User mistakes (a query that is not text or is empty once normalised, an ``--output-dir`` that is a
file or not writable, missing or config-only weights, a damaged weights file (a truncated
*.safetensors, a SAM2 checkpoint torch.load cannot read), unreadable image, CUDA unavailable, a
missing SAM2 checkpoint, a checkpoint file given to ``--sam2`` without its config, a refused SAM2
config, contradictory options) end with exit code 2 and one line "error: ..." on stderr saying what
to do; the options, the query and ``--output-dir`` are checked before any model is loaded, the
policy's weights before anything heavy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from data.paths import check_output_dir
from models.prompt import normalize_query
from grpo.recipe import parse_bool
from models.segmenter import DEFAULT_SAM2_HUB_ID, PROMPT_MODES, split_sam2


class UsageError(Exception):
    """A mistake in the command line or its files; reported as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.infer",
        description="Seg-Zero on one image: reasoning, box, points and mask for a query.",
    )
    parser.add_argument("--image", required=True, help="path of the image (any size, any format PIL reads)")
    parser.add_argument("--query", required=True, help="the referring expression or reasoning question")
    parser.add_argument("--output-dir", required=True, help="output directory (created if missing)")
    parser.add_argument("--model-path",
                        help="reasoning model: Qwen2.5-VL checkpoint directory or hub id, 'toy' (the shipped toy "
                             "policy) or 'tiny' (random tiny, built in memory)")
    parser.add_argument("--tiny-seed", type=int, default=0, help="seed of the random tiny model (--model-path tiny)")
    parser.add_argument("--sam2", default=DEFAULT_SAM2_HUB_ID,
                        help=f"SAM2: a hub id (default {DEFAULT_SAM2_HUB_ID}), 'toy' (the shipped toy SAM2), or "
                             "CONFIG::CHECKPOINT (a sam2 package config such as configs/sam2.1/sam2.1_hiera_l.yaml, "
                             "or a yaml file that only instantiates sam2 classes, and a checkpoint file)")
    parser.add_argument("--task", default="single", choices=("single", "multi"),
                        help="single: one box + two points (Seg-Zero); multi: a list of objects (SPEC 9)")
    parser.add_argument("--prompt-mode", default="box+points", choices=PROMPT_MODES, help="SAM2 prompts (paper Table 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                        help="attention implementation of the reasoning model")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="generation budget (SPEC: 1024)")
    parser.add_argument("--with-example", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                        help="put the example answer in the prompt (false: paper Table 5 ablation)")
    parser.add_argument("--think", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                        help="ask for a reasoning chain (false: answer only, non-CoT, paper Table 1)")
    parser.add_argument("--single-quotes", action="store_true",
                        help="also accept {'bbox': ...} answers (off by default: evaluation parses like training)")
    return parser


def check_args(args: argparse.Namespace) -> str:
    """Option consistency and the device; returns the device. Raises UsageError."""
    if not args.model_path:
        raise UsageError("no reasoning model: pass --model-path PATH_OR_HUB_ID (e.g. a Seg-Zero checkpoint), "
                         "or --model-path tiny to run without weights")
    try:
        split_sam2(args.sam2)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.task == "multi" and (not args.with_example or not args.think or args.single_quotes):
        raise UsageError("--with-example false, --think false and --single-quotes are single-object options; "
                         "drop them with --task multi")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    try:
        normalize_query(args.query)  # the prompt's rule (SPEC 2): valid text, not empty once normalised
    except ValueError as exc:
        raise UsageError(f"--query: {exc}; pass the referring expression or question as text") from exc
    try:
        check_output_dir(args.output_dir, "--output-dir")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available here: use --device cpu")
    return device


def load_models(args: argparse.Namespace, device: str):
    """(policy, segmenter) for the options. Raises UsageError for weights that are not there."""
    from models.pipeline import load_reasoning_model, load_segmenter
    from models.policy import SegZeroPolicy
    from models.segmenter import check_sam2_config

    parts = split_sam2(args.sam2)
    if parts:  # cheap checks before any loading
        config, checkpoint = parts
        if not os.path.isfile(checkpoint):
            raise UsageError(f"SAM2 checkpoint not found: {checkpoint!r}; download it (e.g. sam2.1_hiera_large.pt) "
                             f"or use --sam2 HUB_ID")
        try:
            check_sam2_config(config)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    try:
        # load_policy reports missing weights (e.g. a directory with only config.json) first.
        model, processor = load_reasoning_model(args.model_path, device, args.attn_implementation, args.tiny_seed)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UsageError(f"reasoning model {args.model_path!r}: {exc}") from exc
    policy = SegZeroPolicy(model, processor, with_example=args.with_example, think=args.think, task=args.task)
    try:
        segmenter = load_segmenter(args.sam2, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    return policy, segmenter


def report(prediction, width: int, height: int) -> str:
    """The text printed for one prediction."""
    lines = []
    if prediction.reasoning is not None:
        lines += ["reasoning:", "  " + prediction.reasoning]
    if not prediction.ok:
        lines += [f"answer: none (status {prediction.status}); the mask is empty", "completion:",
                  "  " + prediction.completion]
        return "\n".join(lines)
    area = int(prediction.mask.sum())
    lines += [
        f"answer (status {prediction.status}):",
        f"  bbox    840 frame {prediction.bbox_840}  ->  {width}x{height} image {prediction.bbox}",
        f"  points  840 frame {prediction.points_840}  ->  {width}x{height} image {prediction.points}",
        f"  mask    {area} pixels ({100.0 * area / (width * height):.1f}% of the image)",
    ]
    return "\n".join(lines)


def report_multi(prediction, width: int, height: int) -> str:
    """The text printed for one multi-object prediction: every object in both frames."""
    lines = ["reasoning:", "  " + prediction.reasoning] if prediction.reasoning is not None else []
    if not prediction.ok:
        return "\n".join(lines + [f"answer: none (status {prediction.status}); the mask is empty",
                                  "completion:", "  " + prediction.completion])
    area = int(prediction.mask.sum())
    lines.append(f"answer (status {prediction.status}): {prediction.num_objects} object(s)"
                 + (" -- nothing here, the mask is empty" if not prediction.num_objects else ""))
    for k in range(prediction.num_objects):
        lines.append(f"  object {k}: bbox {prediction.bbox_840[k]} point {prediction.points_840[k]} (840 frame)"
                     f"  ->  {width}x{height} image bbox {prediction.bbox[k]} point {prediction.points[k]}")
    lines.append(f"  mask    {area} pixels ({100.0 * area / (width * height):.1f}% of the image), "
                 f"the union of the object masks")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from data.image import load_image
    from models.draw import mask_to_png, overlay, save_rgb_png
    from models.pipeline import SegZeroPipeline

    device = check_args(args)
    try:
        image = load_image(args.image)  # uint8 RGB [H, W, 3]
    except ValueError as exc:
        raise UsageError(f"{exc}; pass a readable image file (jpg, png, ...)") from exc
    policy, segmenter = load_models(args, device)

    if args.task == "multi":
        from models.multi_object import MultiObjectPipeline

        pipeline = MultiObjectPipeline(policy, segmenter, prompt_mode=args.prompt_mode,
                                       max_new_tokens=args.max_new_tokens)
    else:
        pipeline = SegZeroPipeline(policy, segmenter, prompt_mode=args.prompt_mode,
                                   max_new_tokens=args.max_new_tokens, single_quotes=args.single_quotes)
    prediction = pipeline([image], [args.query])[0]
    height, width = image.shape[:2]
    print((report_multi if args.task == "multi" else report)(prediction, width, height))

    os.makedirs(args.output_dir, exist_ok=True)
    mask_to_png(prediction.mask, os.path.join(args.output_dir, "mask.png"))
    save_rgb_png(overlay(image, prediction.mask, prediction.bbox, prediction.points),
                 os.path.join(args.output_dir, "overlay.png"))
    record = {
        "image": os.path.abspath(args.image), "query": args.query, "width": width, "height": height,
        "model_path": args.model_path, "task": args.task, "prompt_mode": args.prompt_mode,
        "completion": prediction.completion, "reasoning": prediction.reasoning, "status": prediction.status,
        "bbox_840": prediction.bbox_840, "points_840": prediction.points_840,
        "bbox": prediction.bbox, "points": prediction.points, "mask_area": int(prediction.mask.sum()),
    }
    with open(os.path.join(args.output_dir, "prediction.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {os.path.join(args.output_dir, 'mask.png')}, overlay.png and prediction.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
