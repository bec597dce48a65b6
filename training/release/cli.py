"""`make rollout`: a new model from training to serving every request, one gated step at a time.

`python -m training.release`: the command line, the order of the steps (training.release.steps) and the summary
table; the package docstring describes each step. Exit codes: 0 promoted, 1 a gate stopped the candidate, 2 the
rollout could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.paths import ROOT
from training.release.steps import Admin, Rollout, RolloutError, Step, Stopped


def summary_table(steps: list[Step]) -> str:
    lines = ["| step | result | seconds | figures |", "| --- | --- | --- | --- |"]
    for step in steps:
        shown = json.dumps(step.figures)[:110]
        lines.append(
            f"| {step.step} | {step.status}{': ' + step.reason if step.reason else ''} | {step.seconds:.1f} | {shown} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from service.settings import load_settings

    defaults = load_settings()  # the artifacts the service reads, by the same RANK_* variables
    parser = argparse.ArgumentParser(prog="python -m training.release", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    parser.add_argument("--model", type=Path, default=None, help="an exported model dir to roll out (else: train one)")
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic", help="training and held-out queries")
    parser.add_argument("--split", default="test", help="held-out queries of the offline gate (default test)")
    parser.add_argument("--seed", type=int, default=1, help="training seed of a new candidate (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where a new candidate goes (default artifacts/rollout-<time>)"
    )
    parser.add_argument("--serving-model", type=Path, default=defaults.model_dir)
    parser.add_argument("--serving-bundle", type=Path, default=defaults.bundle_dir)
    parser.add_argument("--encoder", type=Path, default=defaults.encoder_dir)
    parser.add_argument("--tolerance", type=float, default=0.005, help="nDCG@10 the candidate may lose (0.005)")
    parser.add_argument("--allow-below-zero-shot", action="store_true", help="skip the beat-zero-shot rule")
    parser.add_argument("--shadow-share", type=float, default=100.0)
    parser.add_argument("--shadow-requests", type=int, default=200, help="request pairs to compare (200)")
    parser.add_argument("--shadow-seconds", type=float, default=120.0, help="at most this long in shadow (120)")
    parser.add_argument("--min-overlap", type=float, default=0.5, help="mean overlap@10 the shadow needs (0.5)")
    parser.add_argument("--min-rbo", type=float, default=0.5, help="mean RBO (p = 0.9) the shadow needs (0.5)")
    parser.add_argument("--canary-share", type=float, default=10.0)
    parser.add_argument("--canary-seconds", type=float, default=30.0)
    parser.add_argument("--max-latency-ratio", type=float, default=1.5, help="candidate / serving cached p99 (1.5)")
    parser.add_argument(
        "--min-latency-samples",
        type=int,
        default=200,
        help="judge the p99 ratio only with this many cached requests per version (200): fewer give a noisy p99",
    )
    parser.add_argument("--log", type=Path, default=ROOT / "reports/rollout.jsonl")
    return parser


def run(args: argparse.Namespace) -> int:
    token = os.environ.get("RANK_ADMIN_TOKEN", "")
    if not token:
        print("error: set RANK_ADMIN_TOKEN to the service's admin token", file=sys.stderr)
        return 2
    rollout = Rollout(args, Admin(args.url.rstrip("/"), token), args.log)
    if args.model is not None:
        if not args.model.is_dir():
            print(f"error: --model {args.model} is not a directory", file=sys.stderr)
            return 2
        rollout.candidate_dir = args.model
    else:
        rollout.candidate_dir = args.out or ROOT / f"artifacts/rollout-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [("serving", rollout.serving)]
    if args.model is None:
        steps.append(("train", rollout.train))
    steps += [
        ("export", rollout.export),
        ("bundle", rollout.bundle),
        ("offline gate", rollout.offline_gate),
        ("shadow", rollout.shadow),
        ("canary", rollout.canary),
        ("promote", rollout.promote),
    ]
    code = 0
    try:
        for name, action in steps:
            rollout.run(name, action)
    except Stopped:
        code = 1
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    print()
    print(summary_table(rollout.steps))
    verdict = {0: "PROMOTED", 1: "STOPPED", 2: "FAILED"}[code]
    print(
        f"\n{verdict}: candidate {rollout.candidate_version or '(none)'}, "
        f"serving {rollout.serving_version}; log {args.log}"
    )
    return code


def main(argv: list[str] | None = None) -> int:
    from service.settings import SettingsError

    try:
        parser = build_parser()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
