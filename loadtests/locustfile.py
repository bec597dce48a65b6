"""Locust load for the ranking service: a realistic mix of /rank, /rerank and invalid requests (see mix.py).

Normally run by `make loadtest` (`python -m loadtests.run`, which puts the repo root on PYTHONPATH); by hand, from
the repo root. Locust 2.47 takes only a file for -f, not a module name, and loads it as the top-level module
`locustfile`, so its `from loadtests.mix import` needs the repo root importable (PYTHONPATH=.):

    PYTHONPATH=. .venv/bin/locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 -u 20 -r 10 -t 60s

Never import this module from the service or from pytest: `import locust` monkey-patches the process with gevent.

Task weights: /rank 88, /rerank 10, invalid 2. Request names (Locust's stats rows): `/rank`, `/rerank`, and
`/rank [invalid]`, `/rerank [invalid]` for the requests that are wrong by design; those count as successes when
answered 4xx and as failures otherwise, so the failure count is the service's real error count. Besides Locust's
own CSV (which rounds response times to whole milliseconds), `--samples-csv` writes every request's exact client
time and the server's `total` from its Server-Timing header, so the runner can compare client and server
percentiles over the same requests.
"""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, events, task
from locust.env import Environment

from loadtests.mix import MixConfig, QueryStream, RequestMix, load_documents, load_queries
from training.paths import ROOT

JSON_HEADERS = {"content-type": "application/json"}

# Filled by the init listener; gevent greenlets share one process, so one mix keeps the tail never-repeating.
_mix: RequestMix | None = None
_samples: list[tuple[float, str, int, float, str, str, str, str]] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--queries", default=str(ROOT / "data/synthetic/queries.jsonl"), help="query set (JSONL)")
    parser.add_argument("--items", default="", help="items JSONL for /rerank ids (default: beside --queries)")
    parser.add_argument("--user-rps", type=float, default=10.0, help="requests/s per user (0: no wait)")
    parser.add_argument("--zipf-s", type=float, default=MixConfig.zipf_s, help="Zipf exponent of the head")
    parser.add_argument("--head-size", type=int, default=MixConfig.head_size, help="Zipf over the first N (0: all)")
    parser.add_argument("--tail-share", type=float, default=MixConfig.tail_share, help="share of never-seen queries")
    parser.add_argument("--mix-seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--samples-csv", default="", help="write every request's client and server time here")


@events.init.add_listener
def _build_mix(environment: Environment, **_: Any) -> None:
    global _mix
    options = environment.parsed_options
    if options is None:
        return
    queries_path = Path(options.queries)
    config = MixConfig(
        head_size=options.head_size, zipf_s=options.zipf_s, tail_share=options.tail_share, seed=options.mix_seed
    )
    ids, titles = load_documents(Path(options.items) if options.items else queries_path.with_name("items.jsonl"))
    _mix = RequestMix(QueryStream(load_queries(queries_path), config), ids, titles)


@events.request.add_listener
def _record(
    name: str, response_time: float, response: Any = None, exception: BaseException | None = None, **_: Any
) -> None:
    # Every request, including those that finish while Locust stops its users, which its own CSV leaves out: the
    # samples match the server's counters request for request.
    status = int(getattr(response, "status_code", 0) or 0)
    server = ""
    headers = response.headers if response is not None and response.headers else {}
    header = headers.get("server-timing", "")
    for part in header.split(","):
        stage, separator, duration = part.strip().partition(";dur=")
        if stage == "total" and separator:
            server = duration
    error = "" if exception is None else str(exception) or type(exception).__name__
    version = headers.get("x-model-version", "")
    replica = headers.get("x-replica", "")  # set on Ray Serve (service/ray_deployment.py)
    start = time.time() - response_time / 1000.0
    _samples.append((start, name, status, response_time, server, version, error, replica))


@events.quitting.add_listener
def _write_samples(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or not options.samples_csv:
        return
    with open(options.samples_csv, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["start", "name", "status", "client_ms", "server_total_ms", "model_version", "error", "replica"]
        )
        writer.writerows(
            (f"{t:.4f}", name, status, f"{ms:.4f}", server, version, error, replica)
            for t, name, status, ms, server, version, error, replica in _samples
        )


class RankingUser(FastHttpUser):
    """One client, mostly /rank, sending at Poisson times at --user-rps on average.

    Exponential gaps between request *starts* make the users' merged arrivals a Poisson process, so the offered load
    is users x rate whatever the latency (until a response takes longer than the gap). A constant pace would
    phase-lock the users: responses from one micro-batch return together, and the users then arrive together again,
    which turns steady load into bursts.
    """

    def on_start(self) -> None:
        assert _mix is not None, "the request mix was not built (run with locust -f loadtests/locustfile.py)"
        self.mix = _mix
        options = self.environment.parsed_options
        self._rate = float(options.user_rps) if options is not None else 0.0
        self._rng = random.Random()
        self._next_start = time.monotonic()  # the first task runs right after on_start

    def wait_time(self) -> float:
        if self._rate <= 0:
            return 0.0
        self._next_start += self._rng.expovariate(self._rate)
        now = time.monotonic()
        if self._next_start < now:  # behind schedule (a slow response): go now, and do not try to catch up
            self._next_start = now
        return self._next_start - now

    def _expect(self, route: str, body: Any, name: str, ok: range) -> None:
        data = body.decode() if isinstance(body, bytes) else json.dumps(body)
        with self.client.post(route, data=data, headers=JSON_HEADERS, name=name, catch_response=True) as response:
            if response.status_code in ok:
                response.success()
            elif not response.status_code:
                response.failure(f"no response: {getattr(response, 'error', None) or 'connection failed'}")
            else:
                expected = "200" if ok.start == 200 else "4xx"
                response.failure(f"HTTP {response.status_code}, expected {expected}")

    @task(88)
    def rank(self) -> None:
        self._expect("/rank", self.mix.rank_body(), "/rank", range(200, 201))

    @task(10)
    def rerank(self) -> None:
        self._expect("/rerank", self.mix.rerank_body(), "/rerank", range(200, 201))

    @task(2)
    def invalid(self) -> None:
        route, body, _ = self.mix.invalid()
        self._expect(route, body, f"{route} [invalid]", range(400, 500))
