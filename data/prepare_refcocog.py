"""Turn RefCOCOg (refer format + COCO train2014 images) into a training set in the authors' format.

    python -m data.prepare_refcocog --refer-root DIR --images DIR --out FILE.parquet \
        [--split train] [--limit N] [--image-format png|jpeg] \
        [--sam2 CONFIG::CHECKPOINT [--device cuda]]

Each referring sentence of the split becomes one row (SPEC.md sections 5-6): the image resized
to 840 x 840 (bilinear), ``problem`` = the sentence, ``solution`` =
``<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>`` computed from the mask with
:func:`data.solution_from_mask`, ``img_height``, ``img_width``, ``id``. The paper trains on 9,000
such rows (``--limit 9000`` keeps the first 9,000 that pass; the paper does not say which).

Bad samples (unreadable image, polygon with fewer than 3 points, empty mask, missing key,
mismatched sizes) are counted by reason and skipped; they never stop the run. With ``--sam2``
(spelt as for train.py: CONFIG::CHECKPOINT, a hub id, or 'toy'), a sample is kept only if SAM2
prompted with the ground-truth box and p1 reconstructs the mask with IoU >= ``--sam2-threshold``
(the authors' optional filter); SAM2 is imported only then. The output is written to a temporary
file and moved into place at the end.

Command-line mistakes (a missing or unknown option, ``--out`` naming a directory or an unwritable
place, a folder that is not there, a refer file that cannot be read, a bad SAM2 config,
checkpoint, threshold or device) are one line "error: ..." on stderr and exit code 2, found before
any sample is converted.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import Counter
from typing import Callable

from tqdm import tqdm

from data.ground_truth import sam2_consistency_filter
from data.parquet import TRAIN_SCHEMA, _AtomicParquetWriter, authors_train_row
from data.paths import check_output_file
from data.refer import ReferDataset
from data.types import BadSampleError


def build_sam2_segmenter(sam2: str, device: str = "cpu") -> Callable:
    """A ``(image, bbox, points) -> bool mask`` SAM2 callable for the consistency filter: the
    project's :class:`models.segmenter.Segmenter` for a ``--sam2`` value (box + positive points,
    multimask output, the highest-scoring mask; a config checked before Hydra builds anything).
    Imported lazily so that the data package never needs models / sam2 / torch unless the filter
    is on."""
    from models.pipeline import load_segmenter

    return load_segmenter(sam2, device=device)


def _reason_kind(reason: str) -> str:
    """The stable part of a BadSampleError reason: "unreadable image: ..." -> "unreadable image"."""
    return reason.split(":", 1)[0].strip()


def prepare(dataset, out: str, limit: int | None = None, segmenter: Callable | None = None,
            threshold: float = 0.6, image_format: str = "PNG",
            progress: bool = True) -> tuple[int, Counter]:
    """Convert a SampleSource with masks to the authors' training parquet at ``out``.

    Returns (number of rows kept, Counter of skip reasons).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    skipped: Counter = Counter()
    total = len(dataset) if limit is None else min(limit, len(dataset))
    bar = tqdm(total=total, desc="refcocog", unit="sample", disable=not progress)
    with _AtomicParquetWriter(out, TRAIN_SCHEMA) as writer:
        for i in range(len(dataset)):
            if limit is not None and writer.num_rows >= limit:
                break
            try:
                sample = dataset[i]
                if segmenter is not None:
                    keep, _iou = sam2_consistency_filter(sample.image, sample.mask, segmenter,
                                                         threshold)
                    if not keep:
                        skipped["sam2 consistency below threshold"] += 1
                        continue
                row = authors_train_row(sample, image_format)
            except BadSampleError as e:
                skipped[_reason_kind(e.reason)] += 1
                continue
            except ValueError as e:  # solution_from_mask on an empty mask
                skipped["empty mask" if "empty mask" in str(e) else "bad sample"] += 1
                continue
            writer.add(row)
            bar.update(1)
            bar.set_postfix(skipped=sum(skipped.values()))
    bar.close()
    return writer.num_rows, skipped


class _Parser(argparse.ArgumentParser):
    """argparse whose errors raise ValueError (printed as one line by :func:`main`)."""

    def error(self, message):
        raise ValueError(f"{message} (python -m data.prepare_refcocog --help lists the options)")


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the option for a value that would fail later (before any conversion)."""
    check_output_file(args.out, "--out")
    for option, folder in (("--refer-root", args.refer_root), ("--images", args.images)):
        if not os.path.isdir(folder):
            raise ValueError(f"{option} {folder!r} is not a directory")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    if not (math.isfinite(args.sam2_threshold) and 0.0 <= args.sam2_threshold <= 1.0):
        raise ValueError(f"--sam2-threshold must be an IoU in [0, 1], got {args.sam2_threshold}")
    if args.sam2:
        from models.segmenter import split_sam2

        split_sam2(args.sam2)  # CONFIG::CHECKPOINT has both parts
        if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
            raise ValueError(f"--device {args.device!r}: use cpu, cuda or cuda:K")
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {args.device!r} requested but CUDA is not available here; "
                                 f"use --device cpu")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (2 and one line on stderr for a mistake)."""
    try:
        return run(argv)
    except (ValueError, FileNotFoundError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m data.prepare_refcocog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--refer-root", required=True,
                        help="folder holding refcocog/instances.json and refcocog/refs(umd).p")
    parser.add_argument("--images", required=True, help="the COCO train2014 image folder")
    parser.add_argument("--out", required=True, help="output parquet file")
    parser.add_argument("--split", default="train", help="refs split (default: train)")
    parser.add_argument("--dataset", default="refcocog", help="refer dataset name")
    parser.add_argument("--split-by", default="umd", help="refs(SPLIT_BY).p (default: umd)")
    parser.add_argument("--limit", type=int, default=None, help="keep at most N samples")
    parser.add_argument("--image-format", default="png", choices=["png", "jpeg"],
                        help="encoding of the 840 images (HF datasets writes PNG)")
    parser.add_argument("--sam2", default=None,
                        help="keep only samples this SAM2 reconstructs from box + p1 (IoU >= --sam2-threshold): "
                             "CONFIG::CHECKPOINT (e.g. configs/sam2.1/sam2.1_hiera_l.yaml::sam2.1_hiera_large.pt), "
                             "a hub id, or 'toy'")
    parser.add_argument("--sam2-threshold", type=float, default=0.6)
    parser.add_argument("--device", default="cpu", help="device for SAM2")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    check_args(args)

    dataset = ReferDataset(args.refer_root, dataset=args.dataset, split_by=args.split_by,
                           split=args.split, image_dir=args.images)
    segmenter = None
    if args.sam2:
        segmenter = build_sam2_segmenter(args.sam2, args.device)
    kept, skipped = prepare(dataset, args.out, limit=args.limit, segmenter=segmenter,
                            threshold=args.sam2_threshold, image_format=args.image_format.upper(),
                            progress=not args.no_progress)
    print(f"wrote {args.out}: kept {kept}, skipped {sum(skipped.values())} "
          f"(of {len(dataset)} sentences in the {args.split!r} split)")
    for reason, n in skipped.most_common():
        print(f"  skipped {n:6d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
