"""`make simulate DATA=dir URL=http://host:port SESSIONS=N LOGS=dir`: simulated users on a running service, through
its real endpoints, for evaluating learning from clicks (the standard protocol of the unbiased learning-to-rank
literature: Joachims et al. 2017; Wang et al. 2018).

    .venv/bin/python -m training.evaluate.simulate --data ../shared/data/cisi --url http://127.0.0.1:8000 \\
        --sessions 10000 --logs /var/log/rank

Each session draws one of DATA's training queries at random, sends it to `POST /rank` (top 10), and lets a user
look down the answer: position k is examined with probability (1/k)^eta, and an examined item is clicked with
probability noise + (1 - noise) (2^g - 1) / (2^G - 1) for its judged grade g (0 when unjudged; G the data's best
grade). Each click goes to `POST /feedback` with the answer's request_id. The service must log impressions
(`RANK_LOG_DIR` and `RANK_LOG_SAMPLE=1`; `RANK_EXPLORE` for swaps the propensity estimators can use); `--logs` is
that directory, where this writes `simulation.json` (the users' true parameters, to check the estimated
propensities against) and checks, after the service has written its segments, that the impressions arrived.

Only the training queries are drawn: `--split train` (the data's), or with `--folds K --fold f` every query outside
fold f (cross-validation's test fold). Exit codes: 0 done, 2 it could not run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from index.cli_logging import configure_cli_logging
from index.data.records import DataError, Query, fold_of
from training.evaluate.data import load_eval_data
from training.evaluate.errors import EvaluateError, one_line
from training.evaluate.served import HttpServed
from training.feedback.sessions import read_feedback_log

TOP_K = 10  # results a user is shown by default (--top-k)


@dataclass(frozen=True)
class Users:
    """The simulated users: position-based examination and grade-based clicks."""

    eta: float = 1.0
    noise: float = 0.1
    top_grade: int = 3
    seed: int = 0

    def examined(self, position: int) -> float:
        return (1.0 / position) ** self.eta

    def attracted(self, grade: int) -> float:
        return self.noise + (1.0 - self.noise) * (2.0**grade - 1.0) / (2.0**self.top_grade - 1.0)

    def clicks(self, shown: list[str], grades: dict[str, int], rng: random.Random) -> list[str]:
        return [
            item
            for k, item in enumerate(shown, 1)
            if rng.random() < self.examined(k) and rng.random() < self.attracted(grades.get(item, 0))
        ]


@dataclass
class Tally:
    """What was sent."""

    sessions: int = 0
    clicks: int = 0


def _post(served: HttpServed, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = served.call("POST", path, body)
    if status >= 300:
        raise EvaluateError(f"POST {path} answered {status}: {str(answer)[:300]}")
    return answer


def training_queries(queries: list[Query], split: str, folds: int, fold: int) -> list[Query]:
    """The queries sessions are drawn from: outside fold `fold` when cross-validating, else the data's `split`."""
    if folds:
        return [q for q in queries if fold_of(q.id, folds) != fold]
    return [q for q in queries if split == "all" or q.split == split]


def simulate(
    url: str,
    queries: list[Query],
    judged: dict[str, dict[str, int]],
    users: Users,
    sessions: int,
    workers: int,
    top_k: int = TOP_K,
) -> Tally:
    """Run `sessions` sessions against the service at `url`, `workers` at a time, `top_k` results shown each."""
    tally, lock, local = Tally(), threading.Lock(), threading.local()
    seeds = random.Random(users.seed)
    plan = [(seeds.choice(queries), seeds.getrandbits(64)) for _ in range(sessions)]

    def one(session: tuple[Query, int]) -> None:
        query, seed = session
        if not hasattr(local, "served"):  # one kept-alive connection per worker thread
            local.served = HttpServed(url, top_k)
        answer = _post(local.served, "/rank", {"query": query.text, "top_k": top_k})
        shown = [hit["id"] for hit in answer["results"]]
        clicked = users.clicks(shown, judged.get(query.id, {}), random.Random(seed))
        for item in clicked:
            _post(local.served, "/feedback", {"request_id": answer["request_id"], "item_id": item, "event": "click"})
        with lock:
            tally.sessions += 1
            tally.clicks += len(clicked)

    started, step = time.perf_counter(), max(1, sessions // 20)
    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(one, plan), 1):
            if done % step == 0 or done == sessions:
                rate = done / (time.perf_counter() - started)
                print(f"  {done}/{sessions} sessions, {tally.clicks} clicks ({rate:.0f} sessions/s)", flush=True)
    return tally


def wait_for_impressions(logs: Path, expected: int, timeout: float) -> int:
    """Impressions in the complete segments of `logs`, waiting up to `timeout` s for `expected` of them (the service
    closes a segment every RANK_LOG_SEGMENT_SECONDS, and at shutdown)."""
    deadline, seen = time.monotonic() + timeout, 0
    while True:
        try:
            seen = read_feedback_log(logs).impressions
        except ValueError:
            seen = 0
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a judged dataset (user data format)")
    parser.add_argument("--url", required=True, help="the running service, logging to --logs")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--logs", type=Path, required=True, help="the service's RANK_LOG_DIR")
    parser.add_argument("--split", default="train", choices=("train", "val", "all"), help="queries drawn from")
    parser.add_argument("--folds", type=int, default=0, help="K: draw every query outside --fold (cross-validation)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=TOP_K, help=f"results shown per session (default: {TOP_K})")
    parser.add_argument("--eta", type=float, default=1.0, help="examination (1/k)^eta (default: 1)")
    parser.add_argument("--noise", type=float, default=0.1, help="click probability of an examined unjudged item")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8, help="sessions at a time")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the impressions to be written")
    args = parser.parse_args(argv)
    configure_cli_logging()
    try:
        if args.sessions < 1 or args.workers < 1 or args.top_k < 1 or args.eta < 0 or not 0.0 <= args.noise <= 1.0:
            raise EvaluateError("--sessions, --workers and --top-k must be positive, --eta >= 0 and --noise in [0, 1]")
        data = load_eval_data(args.data, "all")
        queries = training_queries(data.queries, args.split, args.folds, args.fold)
        if not queries:
            raise EvaluateError(f"{args.data} has no judged {args.split} query to simulate sessions for")
        top = max(g for grades in data.judged.values() for g in grades.values())
        users = Users(args.eta, args.noise, max(top, 1), args.seed)
        args.logs.mkdir(parents=True, exist_ok=True)
        before = wait_for_impressions(args.logs, 0, 0.0)
        print(f"simulating {args.sessions} sessions over {len(queries)} queries of {data.name} on {args.url}")
        tally = simulate(args.url, queries, data.judged, users, args.sessions, args.workers, args.top_k)
        info = {
            "data": str(args.data),
            "queries": len(queries),
            "users": asdict(users),
            "top_k": args.top_k,
            "true_propensity": [round(users.examined(k), 4) for k in range(1, args.top_k + 1)],
            "sessions": tally.sessions,
            "clicks": tally.clicks,
            "command": sys.argv,
        }
        (args.logs / "simulation.json").write_text(json.dumps(info, indent=2) + "\n")
        arrived = wait_for_impressions(args.logs, before + tally.sessions, args.wait) - before
        print(
            f"{tally.sessions} sessions, {tally.clicks} clicks sent; {arrived} of their impressions in {args.logs} "
            f"so far{'' if arrived >= tally.sessions else ' (the rest when the service closes its segment)'}"
        )
        return 0
    except (EvaluateError, DataError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
