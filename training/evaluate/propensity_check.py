"""How close the position-bias estimators come to simulated users' true examination propensities, by the number of
sessions they see (the figures behind `--propensity swap` as the default).

    .venv/bin/python -m training.evaluate.propensity_check --logs build/clicks/cisi --sessions 1000,10000,100000

LOGS is a `make simulate` log: its simulation.json holds the users' true propensities. Prints, per estimator and
number of sessions (the log's first N), the mean |log(estimate / truth)| over every position shown and over the
first 10 and 20 (0: exact; 0.69: off by a factor of 2), and the estimates at a few positions beside the truth.
Training clips propensities below `--ipw-clip` (0.05, position 20 of these users), so errors below it matter less.
Exit codes: 0 done, 2 it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from training.evaluate.errors import EvaluateError, one_line
from training.feedback.propensity import em_propensity, swap_propensity
from training.feedback.sessions import FeedbackError, read_feedback_log

POSITIONS = (2, 5, 10, 20, 30, 50)  # 1-based, printed where the answers went that deep


def log_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean |log(estimate / truth)| over the positions both have."""
    n = min(len(estimate), len(truth))
    return float(np.mean(np.abs(np.log(np.maximum(estimate[:n], 1e-6) / truth[:n]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate.propensity_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--logs", type=Path, required=True, help="a make simulate log directory")
    parser.add_argument(
        "--sessions", default="1000,10000,100000", help="N: the log's first N sessions, comma-separated"
    )
    args = parser.parse_args(argv)
    try:
        info = args.logs / "simulation.json"
        if not info.is_file():
            raise EvaluateError(f"{info} is missing: point --logs at a directory `make simulate` wrote")
        truth = np.asarray(json.loads(info.read_text())["true_propensity"], dtype=np.float64)
        log = read_feedback_log(args.logs)
        depth = min(len(truth), max(len(s.shown) for s in log.sessions))
        truth = truth[:depth]
        shown = [p for p in POSITIONS if p <= depth]
        print(f"{args.logs}: {log.summary()}; answers {depth} deep")
        header = f"{'estimator':<10} {'sessions':>9} {'err all':>8} {'err 1-10':>8} {'err 1-20':>8}  "
        print(header + " ".join(f"{f'@{p}':>7}" for p in shown))
        print(f"{'true':<10} {'':>9} {'':>8} {'':>8} {'':>8}  " + " ".join(f"{truth[p - 1]:>7.4f}" for p in shown))
        for n in (int(part) for part in args.sessions.split(",") if part.strip()):
            sessions = log.sessions[:n]
            for name, estimate in (("swap", swap_propensity(sessions, depth)), ("em", em_propensity(sessions, depth))):
                errors = [log_error(estimate[:m], truth[:m]) for m in (depth, 10, 20)]
                print(
                    f"{name:<10} {len(sessions):>9} "
                    + " ".join(f"{e:>8.3f}" for e in errors)
                    + "  "
                    + " ".join(f"{estimate[p - 1]:>7.4f}" for p in shown)
                )
    except (EvaluateError, FeedbackError, KeyError, ValueError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
