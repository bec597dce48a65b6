"""The evaluation's report: the printed table of system x metric (with folds, a table of per-fold nDCG@10) and the
JSON report with per-query figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from index.data.records import fold_of
from index.runtime.hybrid import RRF_K
from training.evaluate.scoring import Evaluation, rounded
from training.evaluate.served import Served
from training.evaluate.systems import label
from training.metrics import NDCG_CONVENTION, RELEVANT_GRADE


def _fmt(value: float | None, width: int = 8) -> str:
    return f"{'n/a':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.4f}"


def report_table(evaluation: Evaluation, served: Served | None, folds: int) -> str:
    """The printed report: one table of system x metric, and with folds one of per-fold nDCG@10."""
    d, k = evaluation.data, evaluation.cutoff
    systems = list(evaluation.per_query)
    any_summary = evaluation.summary(systems[0])
    synthetic = "SYNTHETIC " if d.synthetic else ""
    split = "every query (--split all)" if d.split == "all" else f"the {d.split} split"
    lines = [
        f"Quality on {split} of {synthetic}dataset '{d.name}' ({d.path}): {any_summary.queries} queries of "
        f"{d.queries_in_file}, {any_summary.queries_without_relevant} without a judged relevant item; "
        f"{len(d.items)} catalog items",
    ]
    if served is not None and "served" in systems:
        lines.append(f"served = {served.description}")
        if d.split != "test":
            lines.append("  (not held out: the served model may have been trained on some of these queries)")
    lines.append(f"{'system':<18} {'nDCG@10':>8} {'MRR':>8} {f'recall@{k}':>10} {'queries':>8}")
    for system in systems:
        s = evaluation.summary(system)
        lines.append(f"{label(system):<18} {_fmt(s.ndcg_at_10)} {_fmt(s.mrr)} {_fmt(s.recall, 10)} {s.queries:>8}")
    lines.append(
        f"({NDCG_CONVENTION}; ideal over all judged items, so what a system missed counts; MRR: first item with "
        f"grade >= {RELEVANT_GRADE} in the top {k}, mean over all queries; recall@{k}: share of a query's grade >= "
        f"{RELEVANT_GRADE} items in its top {k}; zero-shot systems search the whole catalog; bm25 analysis: "
        f"{evaluation.analysis}; rrf k={RRF_K})"
    )
    if folds > 1:
        lines.append("")
        lines.append(
            f"nDCG@10 over {folds} query folds (fold = sha256(query id) mod {folds}); mean and sample sd over folds"
        )
        header = " ".join(f"{f'fold {f + 1}':>8}" for f in range(folds))
        lines.append(f"{'system':<18} {header} {'mean':>8} {'sd':>8}")
        sizes = [evaluation.summary(systems[0], f, folds).queries for f in range(folds)]
        lines.append(f"{'(queries)':<18} " + " ".join(f"{n:>8}" for n in sizes))
        for system in systems:
            per_fold = [evaluation.summary(system, f, folds).ndcg_at_10 for f in range(folds)]
            cells = " ".join(_fmt(v) for v in per_fold)
            if system == "served":
                lines.append(f"{label(system):<18} {cells} {'-':>8} {'-':>8}")
            else:
                mean, sd = _fold_spread(per_fold)
                lines.append(f"{label(system):<18} {cells} {_fmt(mean)} {_fmt(sd)}")
        lines.append(
            "(zero-shot systems learn nothing, so their spread over folds is the noise of a test set this size; the "
            "served model is whatever is loaded, so its row only shows the folds' figures)"
        )
    return "\n".join(lines)


def _fold_spread(values: Sequence[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if not len(finite):
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


def report_json(evaluation: Evaluation, served: Served | None, folds: int, settings: dict[str, Any]) -> dict[str, Any]:
    d, k = evaluation.data, evaluation.cutoff
    out: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {
            "name": d.name,
            "path": str(d.path),
            "synthetic": d.synthetic,
            "items": len(d.items),
            "queries_in_file": d.queries_in_file,
        },
        "split": d.split,
        "convention": NDCG_CONVENTION + "; ideal over all judged items; MRR mean over all queries",
        "settings": settings,
        "served": None if served is None else {"description": served.description, "model": served.model_version},
        "systems": {label(s): evaluation.summary(s).as_dict(k) for s in evaluation.per_query},
    }
    if folds > 1:
        fold_figures: dict[str, Any] = {}
        for system in evaluation.per_query:
            per_fold = [evaluation.summary(system, f, folds) for f in range(folds)]
            entry: dict[str, Any] = {"per_fold": [s.as_dict(k) for s in per_fold]}
            if system != "served":
                for metric, values in (
                    ("ndcg@10", [s.ndcg_at_10 for s in per_fold]),
                    ("mrr", [s.mrr for s in per_fold]),
                    (f"recall@{k}", [s.recall for s in per_fold]),
                ):
                    mean, sd = _fold_spread(values)
                    entry[metric] = {"mean": rounded(mean), "sd": rounded(sd)}
            fold_figures[label(system)] = entry
        out["folds"] = {"k": folds, "rule": f"sha256(query id) mod {folds}", "systems": fold_figures}
    out["per_query"] = {
        label(system): [
            {
                "query_id": m.query_id,
                "fold": fold_of(m.query_id, folds),
                "ndcg@10": rounded(m.ndcg_at_10, 6),
                "reciprocal_rank": rounded(m.reciprocal_rank, 6),
                f"recall@{k}": rounded(m.recall, 6),
                "relevant": m.relevant,
            }
            for m in rows
        ]
        for system, rows in evaluation.per_query.items()
    }
    return out
