"""The held-out report of the training run: greedy answers on held-out samples -> mean reward terms,
the box-IoU proxy and the parse-failure rate, gathered over ranks (train.py prints it at the start
and the end of a run when no SAM2 validation is configured, and appends it to heldout.jsonl)."""
from __future__ import annotations


def heldout_report(policy, samples, *, max_new_tokens: int, think: bool, strict: bool,
                   soft: bool, task: str = "single") -> dict[str, float]:
    """Greedy completions on held-out samples -> mean reward terms and the box-IoU proxy.

    ``iou_proxy`` is the mean IoU (SPEC 4 inclusive-pixel convention) of the predicted box against
    the ground-truth box, 0 for an answer whose parse status is not "ok" (a valid box with broken
    points included: inference gives SAM2 no prompt for it, and eval.validate scores it 0 too): a
    stand-in for gIoU, which needs SAM2 masks (training never loads SAM2). Each rank scores its own
    ``samples``; the result is averaged over all ranks' samples. Call inside ``grpo.parallel.unsharded_for_generation`` under FSDP2.
    """
    from rewards import box_iou, parse_answer, score_completions

    from grpo.parallel import all_gather_objects

    texts = policy.complete([s.image for s in samples], [s.query for s in samples],
                            max_new_tokens=max_new_tokens, greedy=True) if samples else []
    if task == "multi":  # the object list (SPEC 9): its rewards, and the matched-box IoU proxy
        from rewards import matched_box_iou, score_multi_object

        rb = score_multi_object(texts, [s.solution for s in samples])
        ious = [matched_box_iou(text, s.solution) for text, s in zip(texts, samples)]
    else:
        rb = score_completions(texts, [s.solution for s in samples], strict=strict, soft=soft, think=think)
        ious = []
        for text, s in zip(texts, samples):
            parsed = parse_answer(text)
            ious.append(box_iou(parsed.bbox, s.solution["bbox"]) if parsed.ok else 0.0)
    local = {"n": len(samples), "total": float(rb.total.sum()), "iou_proxy": float(sum(ious)),
             "parse_fail": float(sum(st != "ok" for st in rb.statuses)),
             **{f"reward/{k}": float(v.sum()) for k, v in rb.terms.items()}}
    parts = all_gather_objects(local)
    n = max(sum(p["n"] for p in parts), 1)
    out = {k: sum(p[k] for p in parts) / n for k in local if k != "n"}
    out["reward/total"] = out.pop("total")
    out["n"] = float(sum(p["n"] for p in parts))
    out["example"] = texts[0] if texts else ""  # type: ignore[assignment]
    return out


def format_report(title: str, report: dict) -> str:
    """One line: reward terms, total, box-IoU proxy, parse-failure rate."""
    keys = [k for k in report if k.startswith("reward/")]
    body = "  ".join(f"{k[7:]}={report[k]:.3f}" for k in keys)
    return (f"[{title}] held-out n={int(report['n'])}: {body}  box_iou_proxy(not gIoU)="
            f"{report['iou_proxy']:.3f}  parse_fail={report['parse_fail']:.2f}\n"
            f"    example: {str(report.get('example', ''))[:160]!r}")
