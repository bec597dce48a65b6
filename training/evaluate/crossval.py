"""`make crossval DATA=dir FOLDS=5`: K-fold cross-validation by query of the whole pipeline, through the served path.

    .venv/bin/python -m training.evaluate.crossval --data ../shared/data/cisi --folds 5

For each fold f (fold = sha256(query id) mod K, `index.data.records.fold_split`): train with `--folds K --fold f`
(test = fold f, validation = fold f+1, train = the rest), export (parity checked), build the bundle, load the engine
as the service starts (checksums, canaries, warm-up), and send fold f's queries through the request path. Every
query is thus ranked by a model that never saw it. Beside it, on the same queries:

- zero_shot_served: the service with a bundle built without a model (dense + BM25, RRF prior): what a user serves
  before having judgments, and what ships when the quality gate refuses a trained model;
- minilm_cosine, bm25, rrf(minilm,bm25): the zero-shot searches of `training.evaluate`, over the whole catalog
  (BM25 with --analysis, none by default, as in the zero-shot bundle);
- shipped: per fold, the trained model where its quality gate (against the best zero-shot system on that fold's
  test queries, recorded at training) passed, zero_shot_served where it refused it.

Prints nDCG@10 per fold with mean and sample sd over folds, MRR and recall, and writes a JSON report. Work files go
to --work (default build/crossval); each fold's training log is there. Queries are embedded with the service's
query encoder (RANK_QUERY_ENCODER) in training as in serving. Exit codes: 0 done, 2 it could not run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from index.cli_logging import configure_cli_logging
from index.data.records import DataError, fold_of
from index.runtime.files import ArtifactError
from index.runtime.lexical import NO_ANALYSIS, analysis_choices
from index.runtime.text_encoder import TextEncoder
from training.evaluate.data import load_eval_data
from training.evaluate.errors import EvaluateError, one_line
from training.evaluate.scoring import Evaluation, QueryMetrics, query_metrics, run_systems
from training.evaluate.served import load_in_process, served_rankings

TRAINED, ZERO_SHOT, SHIPPED = "trained_served", "zero_shot_served", "shipped"
ORDER = (SHIPPED, TRAINED, ZERO_SHOT, "minilm", "bm25", "rrf")
LABELS = {"minilm": "minilm_cosine", "bm25": "bm25", "rrf": "rrf(minilm,bm25)"}


@dataclass(frozen=True)
class FoldRun:
    """One fold's trained model and whether the service's quality gate would ship it."""

    fold: int
    model_version: str
    gate_passed: bool
    gate_reason: str
    seconds: float


def _run(command: list[str], log_path: Path) -> None:
    """Run a pipeline step, its output to `log_path`; EvaluateError with the log's last line when it fails."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        last = log_path.read_text(encoding="utf-8").strip().splitlines()[-1:]
        raise EvaluateError(f"`{shlex.join(command)}` failed ({last[0] if last else 'no output'}); see {log_path}")


def train_fold(data: Path, encoder: Path, work: Path, fold: int, folds: int, train_args: list[str]) -> Path:
    """Train, export and index fold `fold`'s model under work/fold-<f>; returns that directory."""
    out = work / f"fold-{fold}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pipeline.log"
    log.write_text("")
    py = sys.executable
    common = ["--data-dir", str(data), "--encoder-dir", str(encoder), "--out-dir", str(out)]
    _run([py, "-m", "training.cli", "train", *common, "--folds", str(folds), "--fold", str(fold), *train_args], log)
    _run([py, "-m", "training.cli", "export", "--out-dir", str(out)], log)
    build = ["--data", str(data), "--model", str(out), "--encoder", str(encoder), "--out", str(out / "bundle")]
    _run([py, "-m", "index.offline.build", *build], log)
    return out


def gate_verdict(model_dir: Path) -> tuple[str, bool, str]:
    """(model version, whether the service's quality gate passes it, the gate's sentence when it does not)."""
    from index.runtime.exported_model import ModelCard
    from service.loading import check_quality_gate

    card = ModelCard.load(model_dir)
    try:
        check_quality_gate(card, 0.0, True)
    except ArtifactError as exc:
        return card.version, False, str(exc)
    return card.version, True, ""


def fold_table(evaluation: Evaluation, folds: int, runs: list[FoldRun]) -> str:
    """nDCG@10 per fold, mean and sd over folds, then MRR and recall over every query."""
    systems = [s for s in ORDER if s in evaluation.per_query]
    d = evaluation.data
    header = " ".join(f"{f'fold {f + 1}':>8}" for f in range(folds))
    lines = [
        f"{folds}-fold cross-validation by query on dataset '{d.name}' ({len(d.queries)} queries, {len(d.items)} "
        "items): nDCG@10 on each fold's held-out queries, through the served path",
        f"{'system':<18} {header} {'mean':>8} {'sd':>7} {'MRR':>7} {f'R@{evaluation.cutoff}':>7}",
    ]
    for system in systems:
        per_fold = [evaluation.summary(system, f, folds).ndcg_at_10 for f in range(folds)]
        overall = evaluation.summary(system)
        cells = " ".join(f"{v:>8.4f}" for v in per_fold)
        lines.append(
            f"{LABELS.get(system, system):<18} {cells} {statistics.mean(per_fold):>8.4f} "
            f"{statistics.stdev(per_fold):>7.4f} {overall.mrr:>7.4f} {overall.recall:>7.4f}"
        )
    gates = ", ".join(f"fold {r.fold + 1} {'passed' if r.gate_passed else 'REFUSED'}" for r in runs)
    lines.append(f"quality gate (trained vs best zero-shot on the fold's test queries, from training): {gates}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate.crossval", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset directory with judgments (user format)")
    parser.add_argument("--folds", type=int, default=5, help="K >= 3 (default: 5)")
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument("--work", type=Path, default=Path("build/crossval"), help="models, bundles and logs")
    parser.add_argument("--train-args", default="", help="extra `training.cli train` options, one string")
    parser.add_argument(
        "--analysis",
        choices=analysis_choices(),
        metavar="{none,LANGUAGE}",
        help="BM25's lexical analysis everywhere: the zero-shot bundle, the bm25 and rrf baselines, and each fold's "
        "training (default: none for the zero-shot side, training's auto for the folds)",
    )
    parser.add_argument("--out", type=Path, help="JSON report (default: reports/crossval-<UTC time>.json)")
    args = parser.parse_args(argv)
    configure_cli_logging()
    try:
        if args.folds < 3:
            raise EvaluateError(f"--folds must be at least 3 (test, validation and training folds), got {args.folds}")
        return run(args)
    except (EvaluateError, DataError, ArtifactError, FileNotFoundError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from index.offline.bundle_writer import build_bundle

    started = datetime.now(UTC)
    data = load_eval_data(args.data, "all")
    k = args.folds
    zero_shot_analysis = args.analysis or NO_ANALYSIS
    evaluation = run_systems(
        data, ["minilm", "bm25", "rrf"], encoder=TextEncoder(args.encoder), analysis=zero_shot_analysis
    )
    no_model = args.work / "no-model"
    no_model.mkdir(parents=True, exist_ok=True)
    build_bundle(args.data, no_model, args.encoder, args.work / "zero-shot-bundle", analysis=zero_shot_analysis)
    zero_shot = load_in_process(args.work / "zero-shot-bundle", no_model, args.encoder)
    evaluation.add(ZERO_SHOT, served_rankings(zero_shot, data.queries, zero_shot.catalog))

    # Train on the query embeddings the served path will give the model (RANK_QUERY_ENCODER, as in the service).
    named = ["--analysis", args.analysis] if args.analysis else []  # before --train-args, which may override it
    train_args = ["--query-encoder", zero_shot.engine.encoder.variant, *named, *shlex.split(args.train_args)]
    trained: dict[str, QueryMetrics] = {}
    shipped: dict[str, QueryMetrics] = {}
    by_id = {m.query_id: m for m in evaluation.per_query[ZERO_SHOT]}
    runs = []
    for fold in range(k):
        began = time.perf_counter()
        print(f"fold {fold + 1}/{k}: training, export, index ...", flush=True)
        model_dir = train_fold(args.data, args.encoder, args.work, fold, k, train_args)
        version, passed, reason = gate_verdict(model_dir)
        served = load_in_process(model_dir / "bundle", model_dir, args.encoder, gate=False)
        held_out = [q for q in data.queries if fold_of(q.id, k) == fold]
        for query, ranking in zip(held_out, served_rankings(served, held_out, served.catalog), strict=True):
            trained[query.id] = query_metrics(query.id, ranking, data.judged[query.id], evaluation.cutoff)
            shipped[query.id] = trained[query.id] if passed else by_id[query.id]
        runs.append(FoldRun(fold, version, passed, reason, time.perf_counter() - began))
        print(f"fold {fold + 1}/{k}: model {version}, gate {'passed' if passed else 'refused'}", flush=True)
    evaluation.per_query[TRAINED] = [trained[q.id] for q in data.queries]
    evaluation.per_query[SHIPPED] = [shipped[q.id] for q in data.queries]
    print(fold_table(evaluation, k, runs))
    report: dict[str, Any] = {
        "dataset": data.name,
        "folds": k,
        "rule": f"test = sha256(query id) mod {k} == f, validation = f + 1, train = the rest",
        "systems": {
            LABELS.get(s, s): {
                "per_fold_ndcg@10": [round(evaluation.summary(s, f, k).ndcg_at_10, 4) for f in range(k)],
                **evaluation.summary(s).as_dict(evaluation.cutoff),
            }
            for s in ORDER
        },
        "runs": [r.__dict__ for r in runs],
        "command": sys.argv,
    }
    out = args.out or Path("reports") / f"crossval-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
