"""A real Prometheus server (Debian package `prometheus`, which .ci/run installs) scraping a real service: the shipped
rules load and evaluate, and PromQL's histogram_quantile over the stage histogram gives a sensible p99, the same one
the load-test report computes from its own scrapes. Plus promtool checks of deploy/prometheus/."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtests.process import free_port, stop_group, wait_ready
from training.paths import ROOT
from training.release import promstats

from .conftest import TinyPipeline
from .live_service import LiveService

DEPLOY = ROOT / "deploy/prometheus"
MISSING = (
    "the Debian package 'prometheus' is not installed and could not be installed here "
    "(.ci/run installs it with apt-get; by hand: apt-get install prometheus)"
)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None, reason=MISSING),
]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)


def test_example_config_and_rules_are_valid() -> None:
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", "rules.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alerts_fire_on_slo_burn_5xx_and_not_ready_and_stay_quiet_otherwise() -> None:
    done = _promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


class PromServer:
    """A Prometheus process on a free 127.0.0.1 port, scraping one target every second, with the shipped rules."""

    def __init__(self, target_port: int, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {DEPLOY / 'rules.yml'}\n"
            "scrape_configs:\n  - job_name: fusion-rank\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log_path = workdir / "prometheus.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}{query}", timeout=5) as response:
            return json.loads(response.read())

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = self.get("/api/v1/query", **params)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, promql: str, at: float | None = None) -> float | None:
        result = self.query(promql, at)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, what: str, condition: Any, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}")
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus: {what} within {seconds:.0f}s")

    def stop(self) -> None:
        stop_group(self.process, grace=10)
        self.log.close()


@pytest.fixture
def service(tiny: TinyPipeline) -> Iterator[LiveService]:
    live = LiveService.start(tiny)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def prometheus(service: LiveService, tmp_path: Path) -> Iterator[PromServer]:
    server = PromServer(service.port, tmp_path)
    try:
        wait_ready(
            f"http://127.0.0.1:{server.port}",
            server.process,
            timeout=30,
            path="/-/ready",
            log=server.log_path,
            name="prometheus",
        )
        yield server
    finally:
        server.stop()


def _load(service: LiveService, seconds: float, threads: int = 4) -> list[float]:
    """POST /rank from a few threads for `seconds`; returns each 200's Server-Timing total in ms."""
    texts = ["red gin sour", "green drink with mint", "pink cocktail in a coupe", "tiki drink", "whiskey neat"]
    totals: list[float] = []
    lock = threading.Lock()

    def loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            body = {"query": str(rng.choice(texts)), "top_k": 10, "num_candidates": int(rng.choice([20, 50, 100]))}
            status, _, headers = service.request("POST", "/rank", body)
            if status == 200:
                total = dict(p.strip().split(";dur=") for p in headers["server-timing"].split(","))["total"]
                with lock:
                    totals.append(float(total))

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    return totals


def test_prometheus_scrapes_the_service_and_promql_gives_a_sensible_p99(
    service: LiveService, prometheus: PromServer
) -> None:
    selector = 'rank_stage_seconds_bucket{job="fusion-rank", route="/rank", stage="total"}'
    count = 'sum(rank_stage_seconds_count{job="fusion-rank", route="/rank", stage="total"})'
    assert service.request("POST", "/rank", {"query": "gin"})[0] == 200  # labelled series exist from here on
    prometheus.wait_for("target up", lambda: prometheus.scalar('up{job="fusion-rank"}') == 1.0)
    prometheus.wait_for("the first request scraped", lambda: prometheus.scalar(count) == 1.0)

    before_text, t0 = service.metrics(), time.time()
    totals = _load(service, seconds=4.0)
    after_text = service.metrics()
    expected = promstats.histogram_buckets(after_text, "rank_stage_seconds", route="/rank", stage="total")
    prometheus.wait_for("the load scraped", lambda: prometheus.scalar(count) == expected[float("inf")])
    t1 = time.time()
    assert len(totals) > 100

    # The exact window of the load: bucket deltas between two instants, what the load-test report computes.
    window = f"{int((t1 - t0) * 1000)}ms"
    promql = f"histogram_quantile(0.99, sum by (le) ({selector}) - sum by (le) ({selector} offset {window}))"
    p99 = prometheus.scalar(promql, at=t1)
    deltas = promstats.delta(
        expected, promstats.histogram_buckets(before_text, "rank_stage_seconds", route="/rank", stage="total")
    )
    assert p99 is not None and p99 == pytest.approx(promstats.histogram_quantile(0.99, deltas), rel=1e-9)

    # Sensible: within one bucket of the exact p99 of the very same observations (each response's Server-Timing).
    exact = float(np.percentile(totals, 99)) / 1000.0
    assert 0 < p99 < 1.0
    assert abs(p99 - exact) <= promstats.bucket_width_at(p99, deltas) + 1e-6, (p99, exact)

    # What a dashboard runs: a rate() window, and the shipped recording rule, evaluated by the server itself.
    rate_p99 = prometheus.scalar(f"histogram_quantile(0.99, sum by (le) (rate({selector}[1m])))")
    assert rate_p99 is not None and 0 < rate_p99 < 1.0
    recorded = 'job_route_stage:rank_stage_seconds:p99_rate5m{route="/rank", stage="total"}'
    prometheus.wait_for("the recording rule evaluated", lambda: prometheus.scalar(recorded) is not None)
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} == {"fusion-rank-recording", "fusion-rank-alerts"}
    rules = [rule for g in groups for rule in g["rules"]]
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), [r for r in rules if r["health"] == "err"]
    # a healthy service under light load fires nothing
    alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["state"] == "firing"], alerts
