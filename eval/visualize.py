"""Pictures of an evaluation run: one PNG panel per chosen sample and an ``index.html``.

A panel (drawn by :func:`models.draw.panel`) is three tiles side by side, each the original image
scaled to ``height`` pixels:

    [ image | ground truth (green, "ignore" grey) | prediction mask + box + points (red) ]
    [ index, id, parse status, IoU, query and reasoning text, wrapped                     ]

Which samples are drawn (:func:`select_samples`): the first K evaluated samples by dataset index, and the worst K by IoU
(ties broken by index); bad samples (unreadable) are never drawn. A sample in both lists is drawn
once and listed under both headings.

Where the prediction mask comes from: each record of ``predictions.jsonl`` carries the predicted
mask as COCO RLE (:mod:`eval.results`), so panels are drawn after the run from that file and the
dataset (for the image and ground truth), also after a resume, and without running any model
again. The record's ``index`` must still point at the same sample id in the dataset (checked).
"""
from __future__ import annotations

import html
import os
import re
from typing import Sequence

import numpy as np

from eval.results import PredictionRecord, decode_mask

VIS_DIR = "vis"


def select_samples(records: Sequence[PredictionRecord], first_k: int, worst_k: int
                   ) -> tuple[list[PredictionRecord], list[PredictionRecord]]:
    """(first K by dataset index, worst K by IoU then index) among the readable samples."""
    if first_k < 0 or worst_k < 0:
        raise ValueError(f"first_k and worst_k must be >= 0, got {first_k}, {worst_k}")
    good = sorted((r for r in records if not r.is_bad), key=lambda r: r.index)
    worst = sorted(good, key=lambda r: (r.iou, r.index))
    return good[:first_k], worst[:worst_k]


def panel_text(record: PredictionRecord) -> str:
    """The caption under a panel: index, id, status, IoU, query and reasoning."""
    iou = "-" if record.iou is None else f"{100 * record.iou:.1f}%"
    reasoning = record.reasoning if record.reasoning else "(none)"
    return (f"[{record.index}] {record.id}   status: {record.status}   IoU: {iou}\n"
            f"query: {record.query}\nreasoning: {reasoning}")


def make_panel(image: np.ndarray, gt_mask: np.ndarray | None, record: PredictionRecord,
               height: int = 320) -> np.ndarray:
    """uint8 RGB panel of one sample (:func:`models.draw.panel` with the record's prediction)."""
    from models.draw import panel

    pred = decode_mask(record.mask_rle, image.shape[:2])
    return panel(image, gt_mask, pred, pred_bbox=record.bbox, pred_points=record.points,
                 text=panel_text(record), height=height)


def _file_name(record: PredictionRecord) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", record.id)[:80]
    return f"{record.index:07d}_{safe}.png"


def render_visualizations(records: Sequence[PredictionRecord], source, output_dir: str,
                          first_k: int, worst_k: int, height: int = 320) -> str | None:
    """Draw the panels of the first K and worst K samples and write ``vis/index.html``.

    ``source`` is the dataset the run evaluated (indexable, as in :class:`data.types.SampleSource`).
    Returns the path of ``index.html``, or None when nothing was selected.
    """
    from models.draw import save_rgb_png

    first, worst = select_samples(records, first_k, worst_k)
    if not first and not worst:
        return None
    vis_dir = os.path.join(output_dir, VIS_DIR)
    os.makedirs(vis_dir, exist_ok=True)
    drawn: dict[str, str] = {}
    for record in first + worst:
        if record.id in drawn:
            continue
        sample = source[record.index]
        if sample.id != record.id:
            raise ValueError(
                f"dataset index {record.index} is now sample {sample.id!r}, but the predictions say "
                f"{record.id!r}: visualise with the dataset the run evaluated"
            )
        name = _file_name(record)
        save_rgb_png(make_panel(sample.image, sample.mask, record, height=height),
                     os.path.join(vis_dir, name))
        drawn[record.id] = name
    return write_index(vis_dir, {"First samples": first, "Worst samples (lowest IoU)": worst}, drawn)


def write_index(vis_dir: str, sections: dict[str, Sequence[PredictionRecord]],
                files: dict[str, str]) -> str:
    """A static ``index.html``: one table per section, a row per sample with its panel."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Seg-Zero evaluation</title>",
             "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px}"
             " img{max-width:100%}</style></head><body><h1>Seg-Zero evaluation</h1>"]
    for title, records in sections.items():
        parts.append(f"<h2>{html.escape(title)} ({len(records)})</h2><table>")
        for r in records:
            iou = "-" if r.iou is None else f"{100 * r.iou:.1f}"
            parts.append(
                f"<tr><td>#{r.index}<br>{html.escape(r.id)}<br>IoU {iou}%<br>{html.escape(r.status)}"
                f"<br><i>{html.escape(r.query)}</i></td>"
                f"<td><a href='{html.escape(files[r.id])}'><img src='{html.escape(files[r.id])}'"
                f" loading='lazy'></a></td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    path = os.path.join(vis_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
