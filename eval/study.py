"""The paper's claims at toy scale: every arm trained and evaluated from one warm start, on CPU.

    python -m eval.study --out runs/study               # 3 seeds, 40 steps per arm
    python -m eval.study --out runs/study --quick       # 1 seed, 20 steps per arm (<= 15 min)
    python -m eval.study --out runs/study --seeds 5     # more seeds; the finished ones are kept

Seg-Zero's claims (arXiv 2503.06520: Tables 1, 2, 4 and 6) are structural, so the toy world (the toy
pretrained Qwen2.5-VL, the toy SAM2, synthetic scenes; :mod:`models.toy`) can test them:

1. RL (format + accuracy rewards) beats SFT on the same data, most out of domain;
2. reasoning before answering (the think block) helps, most out of domain;
3. the reward design matters: hard over soft accuracy, strict over soft format; SAM2 prompted with
   box + points over box only or points only;
4. more samples per prompt help.

Domains. Training uses only the **referring** queries of the synthetic scenes ("the small green
triangle", "the purple shape": attribute phrases, like RefCOCOg); the **reasoning** queries ("the
shape with the most corners", "the shape to the left of the blue circle", "the largest red
shape", "the shape with the same colour as the red star": comparisons and relations,
:func:`data.synthetic.scene_queries` lists every family) are never trained on and are the
out-of-domain test, as ReasonSeg is for the paper. Data specs ``synthetic:N:referring`` /
``synthetic:N:reasoning`` (:func:`data.readers.parse_synthetic_spec`). The toy pretrained policy has
seen both families, as the Instruct model the paper starts from has seen general data.

Protocol, per seed s (the replicate: data seed, sampling seed and held-out scenes all follow s):

- two **warm starts** from the shipped toy policy: ``warmstart_steps`` SFT steps on referring
  scenes (lr 2e-4, 5 warmup steps) with the think block (``warmstart``) and without
  (``warmstart_nothink``: the toy policy was built with the think template, so the answer-only
  format must be taught before RL can start). Every other arm starts from one of them, and the
  warm starts themselves are the "no RL" baselines;
- every trained arm: ``steps`` optimizer steps of 8 prompts (``train.py --preset tiny``, 2 gloo
  processes), so each arm sees the same number of training prompts; the group-size arms keep the
  number of sampled responses per step (G x prompts = 64): G=4 with 16 prompts, G=16 with 4;
  the SFT arm takes the same 8 prompts per step with the same optimizer (lr 1e-4);
- every policy is evaluated by ``evaluate.py`` (greedy, the toy SAM2) on ``eval_scenes`` held-out
  scenes of each domain (data seed s + 10,000); the GRPO arm also with SAM2 prompted by the box
  only and by the points only. Validation during training (``--eval-every``) gives the curves.

Each cell: gIoU and cIoU (SPEC 7, percent), parse-failure rate, mean response length (tokens of the
greedy answers); mean +- sample standard deviation over seeds. A claim's verdict compares the
per-seed paired differences of gIoU (same seed, same scenes): with mean gap m and standard
deviation sd of the differences over >= 2 seeds, "agrees" when m > sd, "disagrees" when m < -sd,
else "inconclusive" (the spread is at least the gap); one seed is always "inconclusive". The same rule
on (out-of-domain gap - in-domain gap) says whether the favoured arm's gap "grows out of domain"
(what claims 1 and 2 predict), "shrinks out of domain" or is inconclusive; the gaps are signed, so
for a favoured arm that trails, "grows" means it trails by less.

Output in ``--out``: ``study.json`` (the settings; a rerun with other settings is refused),
``seed{s}/{arm}/`` (``train/``: the train.py run; ``eval_{domain}_{mode}/``: the evaluate.py
outputs; ``result.json``: the arm's figures, written last and atomically), ``results.json`` (every
figure, the aggregates, the verdicts), ``report.md`` (the tables), and, with matplotlib installed
(``pip install -e .[plots]``), ``val_giou.png`` and ``rewards.png``.

Resume: run the same command again. An arm with ``result.json`` is not rerun; an arm whose
training finished (``train/hf_export``) is only evaluated (evaluate.py resumes its own files); an
arm interrupted while training is trained again from its start.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eval.results import read_predictions, table_from_records
from grpo.tracking import write_atomic

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("referring", "reasoning")
DOMAIN_TITLES = {"referring": "in-domain (referring)", "reasoning": "out-of-domain (reasoning)"}
BOTH = "box+points"


@dataclass(frozen=True)
class Arm:
    """One arm: ``train.py`` options on top of ``--preset tiny``, where it starts, what SAM2 is prompted with."""

    name: str
    title: str
    args: tuple[str, ...]
    start: str = "warmstart"  # 'toy' (a warm start itself) or the warm-start arm it starts from
    think: bool = True
    modes: tuple[str, ...] = (BOTH,)


WARMSTART_ARGS = ("--algo", "sft", "--lr", "2e-4", "--warmup-steps", "5")
#: the learning rate of every trained arm (the warm starts set their own): the study's protocol,
#: kept apart from the default run's (``--preset tiny``, which trains longer at a lower rate)
ARM_LR = "1e-4"
ARMS = (
    Arm("warmstart", "warm start (no RL)", WARMSTART_ARGS, start="toy"),
    Arm("warmstart_nothink", "warm start, no think", WARMSTART_ARGS + ("--think", "false"), start="toy",
        think=False),
    Arm("sft", "SFT", ("--algo", "sft")),
    Arm("grpo", "GRPO (recipe)", (), modes=(BOTH, "box", "points")),
    Arm("grpo_nothink", "GRPO, no think", ("--think", "false"), start="warmstart_nothink", think=False),
    Arm("soft_accuracy", "GRPO, soft accuracy", ("--soft-accuracy", "true")),
    Arm("soft_format", "GRPO, soft format", ("--strict-format", "false")),
    Arm("group4", "GRPO, G=4 x 16 prompts", ("--group-size", "4", "--prompts-per-step", "16")),
    Arm("group16", "GRPO, G=16 x 4 prompts", ("--group-size", "16", "--prompts-per-step", "4")),
)
ARM_BY_NAME = {a.name: a for a in ARMS}
MODE_TITLES = {BOTH: "", "box": ", SAM2 box only", "points": ", SAM2 points only"}

#: (claim, favoured row, other row): the paper's choice first, so a positive gap agrees with it.
#: A row is "arm" or "arm@mode".
CLAIMS = (
    ("1. RL beats SFT on the same data", "grpo", "sft"),
    ("1. RL improves on its warm start", "grpo", "warmstart"),
    ("1. SFT improves on its warm start", "sft", "warmstart"),
    ("2. reasoning (think block) helps", "grpo", "grpo_nothink"),
    ("3. hard accuracy rewards over soft", "grpo", "soft_accuracy"),
    ("3. strict format reward over soft", "grpo", "soft_format"),
    ("3. SAM2 box + points over box only", "grpo", "grpo@box"),
    ("3. SAM2 box + points over points only", "grpo", "grpo@points"),
    ("4. G=8 over G=4 (same responses per step)", "grpo", "group4"),
    ("4. G=16 over G=8 (same responses per step)", "group16", "grpo"),
)


@dataclass(frozen=True)
class Settings:
    """What determines the study's numbers (recorded in study.json; a resume must not change it)."""

    steps: int = 40
    warmstart_steps: int = 30
    eval_every: int = 10
    val_scenes: int = 64
    eval_scenes: int = 128
    train_scenes: int = 4096
    nproc: int = 2
    arms: tuple[str, ...] = tuple(a.name for a in ARMS)

    @classmethod
    def quick(cls) -> "Settings":
        return cls(steps=20, eval_every=10, val_scenes=32, eval_scenes=64)


@dataclass
class StudyResult:
    settings: dict
    seeds: list[int]
    per_seed: dict = field(default_factory=dict)  # seed -> arm -> result.json contents
    rows: dict = field(default_factory=dict)  # row -> domain -> metric -> {"mean", "std", "n", "values"}
    verdicts: list = field(default_factory=list)
    compute_seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# Statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1; nan for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def verdict(favoured: list[float], other: list[float]) -> tuple[str, float, float]:
    """(verdict, mean gap, sd of the gaps) from per-seed paired values (module docstring)."""
    if len(favoured) != len(other):
        raise ValueError(f"paired values need the same seeds, got {len(favoured)} and {len(other)}")
    gaps = [a - b for a, b in zip(favoured, other)]
    m, sd = mean_std(gaps)
    if len(gaps) < 2:
        return "inconclusive (one seed)", m, sd
    if m > sd:
        return "agrees", m, sd
    if m < -sd:
        return "disagrees", m, sd
    return "inconclusive", m, sd


def aggregate(per_seed: dict[int, dict[str, dict]], seeds: list[int]) -> dict:
    """row -> domain -> metric -> {"mean", "std", "values"} over ``seeds`` (a row is "arm" for its
    box + points evaluation, "arm@mode" for another SAM2 prompt mode)."""
    rows: dict = {}
    for arm in ARMS:
        for mode in arm.modes:
            row = arm.name if mode == BOTH else f"{arm.name}@{mode}"
            cells = [per_seed.get(s, {}).get(arm.name, {}).get("eval", {}).get(mode) for s in seeds]
            if any(c is None for c in cells):
                continue
            rows[row] = {}
            for domain in DOMAINS:
                rows[row][domain] = {}
                for metric in ("giou", "ciou", "parse_fail", "response_tokens"):
                    values = [float(c[domain][metric]) for c in cells]
                    m, sd = mean_std(values)
                    rows[row][domain][metric] = {"mean": m, "std": sd, "values": values}
    return rows


def row_title(row: str) -> str:
    name, _, mode = row.partition("@")
    return ARM_BY_NAME[name].title + MODE_TITLES[mode or BOTH]


def claim_verdicts(rows: dict) -> list[dict]:
    out = []
    for claim, fav, other in CLAIMS:
        if fav not in rows or other not in rows:
            continue
        item = {"claim": claim, "favoured": fav, "other": other}
        for domain in DOMAINS:
            v, m, sd = verdict(rows[fav][domain]["giou"]["values"], rows[other][domain]["giou"]["values"])
            item[domain] = {"verdict": v, "gap": m, "sd": sd}
        gaps_ood = [a - b for a, b in zip(rows[fav]["reasoning"]["giou"]["values"],
                                          rows[other]["reasoning"]["giou"]["values"])]
        gaps_id = [a - b for a, b in zip(rows[fav]["referring"]["giou"]["values"],
                                         rows[other]["referring"]["giou"]["values"])]
        v, m, sd = verdict(gaps_ood, gaps_id)
        v = {"agrees": "grows out of domain", "disagrees": "shrinks out of domain"}.get(v, v)
        item["larger_out_of_domain"] = {"verdict": v, "gap": m, "sd": sd}
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------------
# Running the arms


def _run(cmd: list[str], log: Path, what: str) -> None:
    """Run ``cmd`` in the repository with its output in ``log``; RuntimeError with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        res = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed (exit code {res.returncode}); log {log}:\n{tail}")


def train_command(arm: Arm, settings: Settings, seed: int, start: str, out: Path) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={settings.nproc}"]
                if settings.nproc > 1 else [sys.executable])
    steps = settings.warmstart_steps if arm.start == "toy" else settings.steps
    return launcher + ["train.py", "--preset", "tiny", "--model-path", start,
                       "--data-path", f"synthetic:{settings.train_scenes}:referring",
                       "--seed", str(seed), "--data-seed", str(seed), "--max-steps", str(steps),
                       "--eval-every", str(settings.eval_every), "--heldout-size", str(settings.val_scenes),
                       "--lr", ARM_LR, "--progress", "false", "--output-dir", str(out), *arm.args]


def eval_command(arm: Arm, settings: Settings, seed: int, model: Path, domain: str, mode: str,
                 out: Path) -> list[str]:
    return [sys.executable, "evaluate.py", "--preset", "tiny", "--model-path", str(model),
            "--data-path", f"synthetic:{settings.eval_scenes}:{domain}", "--data-seed", str(seed + 10_000),
            "--prompt-mode", mode, "--think", str(arm.think).lower(), "--batch-size", "16",
            "--max-new-tokens", "96", "--output-dir", str(out)]


def eval_cell(eval_dir: Path, tokenizer) -> dict:
    """gIoU, cIoU, parse-failure rate (percent), n, and the mean number of tokens of the greedy
    answers, from ``eval_dir``'s predictions (read once)."""
    records = read_predictions(str(eval_dir))
    row = table_from_records(records)["all"]
    tokens = [len(tokenizer(r.completion or "", add_special_tokens=False)["input_ids"]) for r in records]
    return {"giou": row["gIoU"], "ciou": row["cIoU"], "parse_fail": row["parse_failure_rate"],
            "n": row["num_samples"], "response_tokens": sum(tokens) / max(len(tokens), 1)}


def curves(train_dir: Path) -> dict:
    """Per-step curves of a train.py run: val gIoU / cIoU (phase 'val') and the training rows'
    reward terms, KL, loss and mean response length (phase 'train')."""
    from grpo.tracking import read_metrics

    val, train = {}, {}
    for row in read_metrics(train_dir / "metrics.jsonl"):
        if row.get("phase") == "val":
            val[row["step"]] = {"giou": row["val/giou"], "ciou": row["val/ciou"]}
        elif row.get("phase") == "train":
            train[row["step"]] = {k: v for k, v in row.items()
                                  if k.startswith("reward/") or k in ("kl", "loss", "response_len_mean")}
    return {"val": val, "train": train}


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (grpo.tracking.write_atomic)."""
    write_atomic(str(path), json.dumps(obj, indent=1, sort_keys=True) + "\n")


def run_arm(arm: Arm, settings: Settings, seed: int, out: Path, log=print) -> dict:
    """Train (unless done) and evaluate one arm for one seed; returns (and writes) its result.json."""
    arm_dir = out / f"seed{seed}" / arm.name
    done = arm_dir / "result.json"
    if done.is_file():
        log(f"seed {seed} {arm.name}: done before")
        return json.loads(done.read_text())
    t0 = time.time()
    train_dir = arm_dir / "train"
    export = train_dir / "hf_export"
    if not export.is_dir():
        shutil.rmtree(train_dir, ignore_errors=True)  # an interrupted run starts again
        start = "toy" if arm.start == "toy" else str(out / f"seed{seed}" / arm.start / "train" / "hf_export")
        _run(train_command(arm, settings, seed, start, train_dir), arm_dir / "train.log", f"training {arm.name}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(export))
    evals: dict = {}
    for mode in arm.modes:
        evals[mode] = {}
        for domain in DOMAINS:
            eval_dir = arm_dir / f"eval_{domain}_{mode.replace('+', '_')}"
            _run(eval_command(arm, settings, seed, export, domain, mode, eval_dir), arm_dir / f"{eval_dir.name}.log",
                 f"evaluating {arm.name} on {domain} ({mode})")
            evals[mode][domain] = eval_cell(eval_dir, tokenizer)
    result = {"arm": arm.name, "seed": seed, "eval": evals, "curves": curves(train_dir),
              "seconds": round(time.time() - t0, 1)}
    write_json_atomic(done, result)
    e = evals[BOTH]
    log(f"seed {seed} {arm.name}: gIoU {e['referring']['giou']:.1f} in-domain, {e['reasoning']['giou']:.1f} "
        f"out-of-domain ({result['seconds']:.0f} s)")
    return result


def check_settings(out: Path, settings: Settings) -> None:
    """Record the settings in study.json, or refuse a resume with other settings (ValueError)."""
    path = out / "study.json"
    mine = asdict(settings)
    mine["arms"] = list(mine["arms"])
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{out} holds a study with other settings ({', '.join(diff)}); "
                             f"use another --out or the same settings")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, mine)


def run_study(out: str | os.PathLike, settings: Settings, seeds: list[int], log=print) -> StudyResult:
    """Every arm of ``settings.arms`` for every seed (warm starts first), then the aggregates,
    verdicts, report.md and figures. Resumable (module docstring)."""
    out = Path(out)
    for name in settings.arms:
        if name not in ARM_BY_NAME:
            raise ValueError(f"unknown arm {name!r}; arms: {', '.join(ARM_BY_NAME)}")
        start = ARM_BY_NAME[name].start
        if start != "toy" and start not in settings.arms:
            raise ValueError(f"arm {name!r} starts from {start!r}, which is not among the arms")
    check_settings(out, settings)
    order = [a for a in ARMS if a.name in settings.arms]
    order = [a for a in order if a.start == "toy"] + [a for a in order if a.start != "toy"]
    result = StudyResult(settings=asdict(settings), seeds=list(seeds))
    for seed in seeds:
        result.per_seed[seed] = {a.name: run_arm(a, settings, seed, out, log) for a in order}
    result.compute_seconds = sum(r["seconds"] for s in result.per_seed.values() for r in s.values())
    result.rows = aggregate(result.per_seed, seeds)
    result.verdicts = claim_verdicts(result.rows)
    write_json_atomic(out / "results.json", asdict(result))
    figures = plot_study(result, out)
    write_atomic(str(out / "report.md"), format_report(result, figures))
    return result


# --------------------------------------------------------------------------------------------------
# Report and figures


def _cell(stat: dict, digits: int = 1) -> str:
    m, sd = stat["mean"], stat["std"]
    if math.isnan(sd):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def format_report(result: StudyResult, figures: list[str]) -> str:
    s = result.settings
    n = len(result.seeds)
    lines = [f"Seeds {', '.join(map(str, result.seeds))} (mean ± sample std over {n} seed{'s' * (n > 1)}); "
             f"{s['steps']} steps per arm, warm starts of {s['warmstart_steps']} SFT steps, "
             f"{s['eval_scenes']} held-out scenes per domain; compute {result.compute_seconds / 60:.1f} min "
             f"(sum over arms, 2 CPU cores).", ""]
    for domain in DOMAINS:
        lines += [f"### {DOMAIN_TITLES[domain]}", "",
                  "| arm | gIoU | cIoU | parse failures % | response tokens |", "|---|---|---|---|---|"]
        for row, cells in result.rows.items():
            c = cells[domain]
            lines.append(f"| {row_title(row)} | {_cell(c['giou'])} | {_cell(c['ciou'])} | "
                         f"{_cell(c['parse_fail'])} | {_cell(c['response_tokens'])} |")
        lines.append("")
    lines += ["### Claims (gIoU gap, favoured minus other, mean ± sd of the per-seed gaps)", "",
              "| claim | in-domain | out-of-domain | out-of-domain gap minus in-domain gap |", "|---|---|---|---|"]
    for v in result.verdicts:
        cells = []
        for key in (*DOMAINS, "larger_out_of_domain"):
            g, sd = v[key]["gap"], v[key]["sd"]
            spread = "" if math.isnan(sd) else f" ± {sd:.1f}"
            cells.append(f"{v[key]['verdict']} ({g:+.1f}{spread})")
        lines.append(f"| {v['claim']} ({row_title(v['favoured'])} vs {row_title(v['other'])}) | " + " | ".join(cells)
                     + " |")
    lines.append("")
    if figures:
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    else:
        lines += ["Figures: matplotlib is not installed (`pip install -e .[plots]`, then rerun the same "
                  "command: the finished arms are not rerun).", ""]
    return "\n".join(lines)


def plot_study(result: StudyResult, out: Path) -> list[str]:
    """val_giou.png (validation gIoU over steps per arm, mean over seeds) and rewards.png (each
    reward term over steps per GRPO arm); [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

    def mean_curve(arm: str, phase: str, key: str) -> tuple[list[int], list[float]]:
        per_step: dict[int, list[float]] = {}
        for seed in result.seeds:
            for step, row in result.per_seed[seed][arm]["curves"][phase].items():
                if key in row:
                    per_step.setdefault(int(step), []).append(float(row[key]))
        steps = sorted(per_step)
        return steps, [sum(per_step[k]) / len(per_step[k]) for k in steps]

    arms = [a for a in ARMS if a.name in result.settings["arms"]]
    # one colour per arm in both figures; arms that can coincide (soft format) dashed
    style = {a.name: dict(color=plt.get_cmap("tab10")(i % 10), linestyle="--" if a.name == "soft_format" else "-")
             for i, a in enumerate(ARMS)}
    files = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm in arms:
        if arm.start == "toy":
            continue
        ax.plot(*mean_curve(arm.name, "val", "giou"), marker="o", label=arm.title, **style[arm.name])
    ax.set_xlabel("training step (0 = the warm start)")
    ax.set_ylabel("validation gIoU (in-domain, %)")
    ax.set_title(f"validation gIoU, {result.settings['val_scenes']} held-out referring scenes, "
                 f"mean over {len(result.seeds)} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out / "val_giou.png", dpi=110)
    plt.close(fig)
    files.append(str(out / "val_giou.png"))

    grpo_arms = [a for a in arms if a.start != "toy" and a.name != "sft"]
    terms = sorted({k for a in grpo_arms for s in result.seeds
                    for row in result.per_seed[s][a.name]["curves"]["train"].values() for k in row
                    if k.startswith("reward/")})
    if terms:
        cols = 3
        rows = math.ceil(len(terms) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, term in zip(axes.flat, terms):
            for arm in grpo_arms:
                steps, values = mean_curve(arm.name, "train", term)
                ax.plot(steps, values, label=arm.title, linewidth=1, **style[arm.name])
            ax.set_title(term + " (sampled answers, T = 1)", fontsize=9)
            ax.set_xlabel("training step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(terms):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
        fig.suptitle("reward terms of the GRPO arms' training samples (soft-accuracy arm: soft values), "
                     f"mean over {len(result.seeds)} seed(s)", fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 0.96))
        fig.savefig(out / "rewards.png", dpi=100)
        plt.close(fig)
        files.append(str(out / "rewards.png"))
    return files


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study", help="study directory (resumable)")
    p.add_argument("--quick", action="store_true", help="1 seed, 20 steps per arm, 64 scenes per domain")
    p.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default 3; --quick: 1)")
    p.add_argument("--arms", help=f"comma-separated subset of {','.join(ARM_BY_NAME)}")
    for name, f in Settings.__dataclass_fields__.items():
        if name != "arms":
            p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {f.default} (--quick: "
                           f"{getattr(Settings.quick(), name)})")
    args = p.parse_args(argv)
    base = Settings.quick() if args.quick else Settings()
    overrides = {name: getattr(args, name) for name in Settings.__dataclass_fields__
                 if name != "arms" and getattr(args, name) is not None}
    if args.arms:
        overrides["arms"] = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    settings = Settings(**{**asdict(base), **overrides})
    bad = [k for k, v in asdict(settings).items() if k != "arms" and v < 1]
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if bad or seeds < 1:
        print(f"error: {', '.join('--' + k.replace('_', '-') for k in bad) or '--seeds'} must be >= 1",
              file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        result = run_study(args.out, settings, list(range(seeds)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    print(f"study: {args.out} (this invocation {(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
