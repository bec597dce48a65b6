"""`make click-crossval DATA=dir LOGS=dir`: K-fold cross-validation by query of learning from clicks, through the
served path (issue 38's protocol).

    .venv/bin/python -m training.evaluate.click_cv --data ../shared/data/cisi --logs build/clicks/cisi \\
        --sessions 1000,10000,100000

LOGS holds simulated sessions over the data's queries (`make simulate --split all` against the zero-shot service,
logging with exploration). For each fold f, on fold f's held-out queries, each ranked by a model that never saw
them or their sessions (training drops the sessions of the test fold's queries before estimating anything):

- zero_shot_served: the service without a model, which also served the logged sessions;
- clicks_naive@N: trained on the click labels of the first N sessions, uncorrected (`--propensity none`);
- clicks_ipw@N: the same sessions with inverse-propensity-weighted labels (`--propensity swap`, or --propensity);
- judgments: trained on the true judgments of the training folds (the ceiling), as `make crossval` does.

Prints nDCG@10 per fold with mean and sd over folds and a learning curve by sessions, the propensities estimated
from all usable sessions beside the users' true ones (LOGS/simulation.json), and writes a JSON report. Every
model is trained with the same `--train-args`. Exit codes: 0 done, 2 it could not run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from index.cli_logging import configure_cli_logging
from index.data.records import DataError, Query, fold_of
from index.runtime.files import ArtifactError
from index.runtime.lexical import NO_ANALYSIS
from index.runtime.query_text import normalize_text
from training.evaluate.crossval import gate_verdict, train_fold
from training.evaluate.data import EvalData, load_eval_data
from training.evaluate.errors import EvaluateError, one_line
from training.evaluate.scoring import QueryMetrics, query_metrics
from training.evaluate.served import load_in_process, served_rankings
from training.feedback.propensity import em_propensity, swap_propensity
from training.feedback.sessions import FeedbackError, FeedbackLog, read_feedback_log

ZERO_SHOT, CEILING = "zero_shot_served", "judgments"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return statistics.mean(finite) if finite else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate.click_cv", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the judged dataset the sessions were simulated on")
    parser.add_argument("--logs", type=Path, required=True, help="the service's log of the simulated sessions")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sessions", default="1000,10000,100000", help="N for the learning curve, comma-separated")
    parser.add_argument("--naive", default="", help="N for the uncorrected models (default: the largest of --sessions)")
    parser.add_argument("--propensity", default="swap", choices=("em", "swap"))
    parser.add_argument("--only-folds", default="", help="run these folds only (e.g. 0,1), for a partial run")
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument(
        "--zero-shot", type=Path, required=True, help="the zero-shot bundle the sessions were served by"
    )
    parser.add_argument("--work", type=Path, default=Path("build/click-cv"))
    parser.add_argument("--train-args", default="", help="extra `training.cli train` options for every model")
    parser.add_argument("--out", type=Path, help="JSON report (default: reports/click-cv-<UTC time>.json)")
    args = parser.parse_args(argv)
    configure_cli_logging()
    try:
        return run(args)
    except (EvaluateError, DataError, ArtifactError, FeedbackError, FileNotFoundError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


@dataclass
class Results:
    """Per system, each query's metrics and each fold's gate verdict; per fold, the estimated propensities."""

    systems: list[str]
    per_query: dict[str, dict[str, QueryMetrics]] = field(default_factory=dict)
    gates: dict[str, dict[int, bool]] = field(default_factory=dict)
    propensities: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def fold_ndcg(self, system: str, queries: list[Query]) -> float:
        return _mean([self.per_query[system][q.id].ndcg_at_10 for q in queries])


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    data = load_eval_data(args.data, "all")
    k = args.folds
    sizes = [int(n) for n in args.sessions.split(",") if n.strip()]
    naive = [int(n) for n in args.naive.split(",") if n.strip()] or [max(sizes)]
    folds = [int(f) for f in args.only_folds.split(",") if f.strip()] or list(range(k))
    log = read_feedback_log(args.logs)
    print(f"{args.logs}: {log.summary()}", flush=True)
    no_model = args.work / "no-model"
    no_model.mkdir(parents=True, exist_ok=True)
    zero_shot = load_in_process(args.zero_shot, no_model, args.encoder)

    runs: dict[str, list[str]] = {}
    feedback = ["--feedback", str(args.logs), "--labels", "clicks", "--feedback-sessions"]
    runs.update({f"clicks_naive@{n}": [*feedback, str(n), "--propensity", "none"] for n in naive})
    runs.update({f"clicks_ipw@{n}": [*feedback, str(n), "--propensity", args.propensity] for n in sizes})
    runs[CEILING] = []
    results = Results([ZERO_SHOT, *runs])
    for system in results.systems:
        results.per_query[system], results.gates[system] = {}, {}
    base = ["--query-encoder", zero_shot.engine.encoder.variant, "--analysis", NO_ANALYSIS]
    base += shlex.split(args.train_args)
    out = args.out or Path("reports") / f"click-cv-{started:%Y%m%d-%H%M%S}.json"
    for done, fold in enumerate(folds, 1):
        held_out = [q for q in data.queries if fold_of(q.id, k) == fold]
        texts = {normalize_text(q.text) for q in held_out}
        usable = [s for s in log.sessions if s.query not in texts]
        results.propensities[fold] = {
            "em": np.round(em_propensity(usable), 4).tolist(),
            "swap": np.round(swap_propensity(usable), 4).tolist(),
        }
        for query, ranking in zip(held_out, served_rankings(zero_shot, held_out, zero_shot.catalog), strict=True):
            results.per_query[ZERO_SHOT][query.id] = query_metrics(query.id, ranking, data.judged[query.id])
        for system, extra in runs.items():
            began = time.perf_counter()
            model_dir = train_fold(
                args.data, args.encoder, args.work / system.replace("@", "-"), fold, k, [*base, *extra]
            )
            _, results.gates[system][fold], _ = gate_verdict(model_dir)
            served = load_in_process(model_dir / "bundle", model_dir, args.encoder, gate=False)
            for query, ranking in zip(held_out, served_rankings(served, held_out, served.catalog), strict=True):
                results.per_query[system][query.id] = query_metrics(query.id, ranking, data.judged[query.id])
            print(
                f"fold {fold + 1}/{k} {system}: nDCG@10 {results.fold_ndcg(system, held_out):.4f}, gate "
                f"{'passed' if results.gates[system][fold] else 'refused'} ({time.perf_counter() - began:.0f}s)",
                flush=True,
            )
        table, report = summarize(args, data, log, results, folds[:done])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every fold: a partial run is kept
    print(table)
    print(f"wrote {out}")
    return 0


def summarize(
    args: argparse.Namespace, data: EvalData, log: FeedbackLog, results: Results, folds: list[int]
) -> tuple[str, dict[str, Any]]:
    """The table of the folds done, and the JSON report."""
    k = args.folds
    truth = _true_propensity(args.logs)
    lines = [
        f"{k}-fold cross-validation by query on '{data.name}' ({len(data.queries)} judged queries): served nDCG@10 on "
        f"each fold's held-out queries; click models from {args.logs} ({len(log.sessions)} simulated sessions)",
        f"{'system':<22} " + " ".join(f"{f'fold {f + 1}':>8}" for f in folds) + f" {'mean':>8} {'sd':>7}",
    ]
    report: dict[str, Any] = {"dataset": data.name, "folds": k, "run_folds": folds, "systems": {}}
    for system in results.systems:
        values = [results.fold_ndcg(system, [q for q in data.queries if fold_of(q.id, k) == f]) for f in folds]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"{system:<22} " + " ".join(f"{v:>8.4f}" for v in values) + f" {_mean(values):>8.4f} {sd:>7.4f}")
        report["systems"][system] = {
            "per_fold_ndcg@10": [round(v, 4) for v in values],
            "mean_ndcg@10": round(_mean(values), 4),
            "gate_passed": [results.gates[system].get(f) for f in folds],
        }
    lines.append("propensity by position 1..10, estimated from the first fold's usable sessions, beside the true one:")
    first = results.propensities[folds[0]]
    for name, values in (("true", truth[:10]), ("em", first["em"]), ("swap", first["swap"])):
        if values:
            lines.append(f"  {name:<5} " + " ".join(f"{v:.3f}" for v in values))
    report.update(
        {
            "propensity": {"true": truth, **{str(f): p for f, p in results.propensities.items()}},
            "sessions_in_log": len(log.sessions),
            "train_args": args.train_args,
            "command": sys.argv,
        }
    )
    return "\n".join(lines), report


def _true_propensity(logs: Path) -> list[float]:
    """The simulated users' examination probabilities, when LOGS/simulation.json says them."""
    path = logs / "simulation.json"
    return json.loads(path.read_text()).get("true_propensity", []) if path.exists() else []


if __name__ == "__main__":
    sys.exit(main())
