"""`python -m training.evaluate` (`make evaluate`): the command line of the evaluation; the package docstring says
what it measures. Exit codes: 0 done, 2 the evaluation could not run (one sentence on stderr says why)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from index.cli_logging import configure_cli_logging
from index.data.records import DataError
from index.runtime.hybrid import RRF_K
from index.runtime.lexical import TOKEN, Analyzer, analysis_choices
from index.runtime.text_encoder import TextEncoder
from training.evaluate.data import SPLITS, load_eval_data
from training.evaluate.errors import EvaluateError, one_line
from training.evaluate.report import report_json, report_table
from training.evaluate.scoring import run_systems
from training.evaluate.served import HttpServed, InProcessServed, Served, load_in_process, served_analysis
from training.evaluate.systems import DEFAULT_BM25, DEFAULT_TOP_K, RRF_DEPTH, SYSTEMS, label


def _systems(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown system(s) {unknown or value!r}; choose from {', '.join(SYSTEMS)}")
    return [s for s in SYSTEMS if s in chosen]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from service.settings import Settings

    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Label-based quality of what the service serves (in process, or --url over HTTP), beside "
        "zero-shot MiniLM cosine, BM25 and their RRF over the whole catalog, on the same held-out queries.",
        epilog="Exit codes: 0 done, 2 the evaluation could not run (one sentence on stderr says why).",
    )
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="dataset directory (user format)")
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="queries to evaluate: a split, or all (default: test)"
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)} (default: all); leave out served for a catalog the "
        "service does not serve",
    )
    parser.add_argument("--url", help="evaluate a running service over HTTP POST /rank instead of in process")
    for name, flag in (("bundle_dir", "--bundle"), ("model_dir", "--model"), ("encoder_dir", "--encoder")):
        parser.add_argument(
            flag,
            type=Path,
            help=f"in-process served artifacts (default: RANK_{name.upper()} or {defaults[name].default})"
            + ("; the encoder also makes the MiniLM baseline" if flag == "--encoder" else ""),
        )
    parser.add_argument(
        "--top-k", type=_positive, default=DEFAULT_TOP_K, help=f"ranked items per query (default: {DEFAULT_TOP_K})"
    )
    parser.add_argument(
        "--num-candidates", type=_positive, help="served: candidates per query (default: the service's default)"
    )
    parser.add_argument(
        "--folds",
        type=_positive,
        default=1,
        help="also report nDCG@10 over K query folds (sha256 of the query id mod K): for each zero-shot system the "
        "mean and spread over folds, which is how much a test set of that size moves; for the served system only "
        "each fold's figure (the loaded model is evaluated as it is, nothing is retrained per fold) (default: 1)",
    )
    parser.add_argument(
        "--bm25-method",
        choices=("lucene", "robertson"),
        default=DEFAULT_BM25.method,
        help="bm25s's idf variant: lucene log(1+(N-n+.5)/(n+.5)), or robertson log((N-n+.5)/(n+.5)) floored at 0 "
        f"(default: {DEFAULT_BM25.method})",
    )
    parser.add_argument(
        "--analysis",
        choices=analysis_choices(),
        metavar="{none,LANGUAGE}",
        help="the bm25 baseline's lexical analysis: none, or a Snowball language (stop words and stems), e.g. "
        "english (default: the served bundle's, --bundle or RANK_BUNDLE_DIR; none without one)",
    )
    parser.add_argument(
        "--rrf-depth", type=_positive, default=RRF_DEPTH, help=f"depth of each list RRF fuses (default: {RRF_DEPTH})"
    )
    parser.add_argument("--out", type=Path, help="JSON report (default: reports/evaluate-<UTC time>.json)")
    return parser


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    data = load_eval_data(args.data, args.split)
    served: Served | None = None
    try:
        if "served" in args.systems:  # first: a service or artifacts that are not there fail before the long work
            if args.url:
                served = HttpServed(args.url, args.top_k, args.num_candidates)
            else:
                served = load_in_process(args.bundle, args.model, args.encoder, args.top_k, args.num_candidates)
                catalog = served.catalog if isinstance(served, InProcessServed) else None
                items = {item.id for item in data.items}
                if catalog is not None and not catalog <= items:
                    raise EvaluateError(
                        f"the served bundle holds {len(catalog - items)} of its {len(catalog)} items outside "
                        f"{args.data}'s catalog: it serves another dataset (leave served out with --systems)"
                    )
        encoder = None
        if {"minilm", "rrf"} & set(args.systems):
            from service.settings import load_settings

            encoder_dir = args.encoder or load_settings().encoder_dir
            try:
                encoder = TextEncoder(encoder_dir)
            except Exception as exc:  # noqa: BLE001 - a broken encoder is one sentence
                raise EvaluateError(f"the MiniLM encoder at {encoder_dir} does not load: {one_line(exc)}") from None
        analysis = args.analysis or served_analysis(served, args.bundle)
        evaluation = run_systems(
            data,
            args.systems,
            served=served,
            encoder=encoder,
            top_k=args.top_k,
            rrf_depth=args.rrf_depth,
            bm25_method=args.bm25_method,
            analysis=analysis,
        )
    finally:
        if isinstance(served, HttpServed):
            served.close()
    print(report_table(evaluation, served, args.folds))
    settings = {
        "top_k": args.top_k,
        "num_candidates": args.num_candidates,
        "systems": [label(s) for s in args.systems],
        "minilm": {"text": "title and text joined (Item.full_text)", "search": "exact inner product"},
        "bm25": {
            "library": "bm25s",
            "k1": DEFAULT_BM25.k1,
            "b": DEFAULT_BM25.b,
            "method": args.bm25_method,
            "tokens": TOKEN.pattern,
            "analysis": evaluation.analysis,
            "terms": Analyzer(evaluation.analysis).describe(),
        },
        "rrf": {"k": RRF_K, "depth": args.rrf_depth, "of": ["minilm_cosine", "bm25"]},
        "command": sys.argv,
    }
    out = args.out or Path("reports") / f"evaluate-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_json(evaluation, served, args.folds, settings), indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cli_logging()
    try:
        return run(args)
    except (EvaluateError, DataError, FileNotFoundError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
