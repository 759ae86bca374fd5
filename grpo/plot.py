"""A picture of a run: ``curves.png`` from ``metrics.jsonl``, drawn with PIL (no matplotlib).

Four panels over training steps: the reward terms (training samples, per step), the validation
gIoU / cIoU and box IoU x 100 (phase 'val' rows; the start report is step 0), the KL to the
reference, and the response length (mean, with min-max band). ``python -m grpo.plot RUN_DIR``
redraws it.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
W, H = 560, 300  # one panel
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 150, 28, 30


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows: list[dict], key: str, phase: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in rows if r.get("phase") == phase and _finite(r.get(key))]


def _panel(title: str, series: dict[str, list[tuple[float, float]]], x_max: float,
           band: tuple[list, list] | None = None) -> Image.Image:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((MARGIN_L, 8), title, fill="black")
    pts = [p for s in series.values() for p in s] + ([p for b in band for p in b] if band else [])
    x0, x1 = MARGIN_L, W - MARGIN_R
    y0, y1 = H - MARGIN_B, MARGIN_T
    d.rectangle([x0, y1, x1, y0], outline=(90, 90, 90))
    if not pts:
        d.text((x0 + 10, (y0 + y1) // 2), "no data", fill="gray")
        return img
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xm = max(x_max, 1.0)

    def px(x: float, y: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * x / xm, y0 - (y0 - y1) * (y - lo) / (hi - lo)

    for k in range(5):  # y ticks
        v = lo + (hi - lo) * k / 4
        _, yy = px(0, v)
        d.line([x0 - 4, yy, x0, yy], fill="black")
        d.text((4, yy - 6), f"{v:.3g}", fill="black")
    for k in range(5):  # x ticks
        v = xm * k / 4
        xx, _ = px(v, lo)
        d.line([xx, y0, xx, y0 + 4], fill="black")
        d.text((xx - 8, y0 + 8), f"{v:.0f}" if xm >= 8 else f"{v:.1f}", fill="black")
    if band:
        upper, lower = band
        poly = [px(*p) for p in upper] + [px(*p) for p in reversed(lower)]
        if len(poly) >= 3:
            d.polygon(poly, fill=(220, 230, 245))
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        xy = [px(*p) for p in s]
        if len(xy) >= 2:
            d.line(xy, fill=color, width=2)
        for x, y in xy if len(xy) <= 40 else []:
            d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
        d.text((x1 + 8, y1 + 4 + 14 * i), name[:22], fill=color)
    return img


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``run_dir/curves.png`` (or ``out``) from ``run_dir/metrics.jsonl``; returns the path."""
    from grpo.tracking import read_metrics

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    train = [r for r in rows if r.get("phase") == "train"]
    x_max = max([float(r["step"]) for r in rows if r.get("phase") in ("train", "val")] or [1.0])
    terms = sorted({k for r in train for k in r if k.startswith("reward/")})
    rewards = {k[7:]: _series(rows, k, "train") for k in terms}
    val = {"val gIoU": _series(rows, "val/giou", "val"), "val cIoU": _series(rows, "val/ciou", "val"),
           "val box IoU x100": [(x, 100 * y) for x, y in _series(rows, "val/iou_proxy", "val")]}
    kl = {"kl": _series(rows, "kl", "train")}
    length = {"response length (mean)": _series(rows, "response_len_mean", "train")}
    band = (_series(rows, "response_len_max", "train"), _series(rows, "response_len_min", "train"))
    panels = [_panel("reward terms (training samples)", rewards, x_max),
              _panel("validation (greedy, SAM2 masks)", val, x_max),
              _panel("KL to the reference", kl, x_max),
              _panel("response length (tokens; band: min-max)", length, x_max, band)]
    sheet = Image.new("RGB", (2 * W, 2 * H), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % 2) * W, (i // 2) * H))
    out = Path(out) if out is not None else run_dir / "curves.png"
    sheet.save(out)
    return out


if __name__ == "__main__":
    print(plot_run(sys.argv[1]))
