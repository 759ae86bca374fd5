"""Multi-object evaluation extras: no-target and target accuracy (gRefCOCO's N-acc / T-acc).

gIoU and cIoU are computed exactly as in the single-object mode (SPEC.md section 7) over the UNION
masks; an empty target answered with an empty mask scores IoU 1. For data with empty targets
(gRefCOCO, GRES arXiv 2306.00968, section 5) two more numbers, over the readable samples:

    no-target accuracy = #(empty target, parsed answer, empty predicted mask) / #(empty target)
    target accuracy    = #(non-empty target, parsed answer, non-empty predicted mask) / #(non-empty target)

An answer that did not parse counts as wrong in both (as it counts IoU 0, SPEC section 7). Both
come from each record's ``target_area`` / ``pred_area``; records without them are left out.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from eval.results import ALL, PredictionRecord, format_table, table_from_records


def target_accuracies(records: Sequence[PredictionRecord]) -> dict[str, Any]:
    """{"no_target_acc", "target_acc" (percent, NaN without such samples), "num_empty_targets",
    "num_targets"} over the records that are not bad samples (module docstring)."""
    empty_ok = empty_n = target_ok = target_n = 0
    for r in records:
        if r.is_bad or r.target_area is None or r.pred_area is None:
            continue
        predicted = r.status == "ok" and r.pred_area > 0
        if r.target_area == 0:
            empty_n += 1
            empty_ok += int(r.status == "ok" and r.pred_area == 0)
        else:
            target_n += 1
            target_ok += int(predicted)
    return {
        "no_target_acc": 100 * empty_ok / empty_n if empty_n else math.nan,
        "target_acc": 100 * target_ok / target_n if target_n else math.nan,
        "num_empty_targets": empty_n,
        "num_targets": target_n,
    }


def multi_object_table(records: Sequence[PredictionRecord]) -> dict[str, dict[str, Any]]:
    """``eval.results.table_from_records`` with the two accuracies added to the "all" row."""
    table = table_from_records(records)
    table[ALL].update(target_accuracies(records))
    return table


def format_multi_object_table(table: dict[str, dict[str, Any]], title: str = "") -> str:
    """The usual table, then one line with the no-target / target accuracies."""
    row = table[ALL]

    def pct(v: float) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"

    return (format_table(table, title) + f"\nno-target accuracy {pct(row.get('no_target_acc'))} "
            f"({row.get('num_empty_targets', 0)} empty targets)   target accuracy {pct(row.get('target_acc'))} "
            f"({row.get('num_targets', 0)} targets)")
