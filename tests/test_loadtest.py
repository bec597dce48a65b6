"""The load test (`make loadtest`, loadtests/): the request mix, the PromQL-style histogram quantile, the SLO file,
the report, and real runs of Locust (as a subprocess: importing it would monkey-patch pytest with gevent) against a
real uvicorn process serving the tiny artifacts. Every run is a few seconds long and stops by itself."""

from __future__ import annotations

import csv
import http.server
import itertools
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loadtests import mix, process, slo
from loadtests.report import figures, markdown
from service.metrics import Metrics
from training.paths import ROOT
from training.release import promstats

from .conftest import TinyPipeline
from .live_service import LiveService, tiny_env

LOCUST = Path(sys.executable).parent / "locust"
needs_locust = pytest.mark.skipif(
    find_spec("locust") is None or not LOCUST.exists(),
    reason="Locust is not installed in this environment: `make setup` installs it (the loadtest extra)",
)


# -- PromQL's histogram_quantile -----------------------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = {0.001: 10.0, 0.002: 30.0, 0.005: 40.0, math.inf: 40.0}
    # rank 20 of 40 lies in (0.001, 0.002]: 10 below, 20 in the bucket -> halfway.
    assert promstats.histogram_quantile(0.5, buckets) == pytest.approx(0.0015)
    # rank 4 in the first bucket, whose lower bound is 0.
    assert promstats.histogram_quantile(0.1, buckets) == pytest.approx(0.0004)
    assert promstats.histogram_quantile(0.99, buckets) == pytest.approx(0.002 + 0.003 * (39.6 - 30) / 10)
    # observations above the last finite bound clamp to it, as in PromQL
    assert promstats.histogram_quantile(0.99, {0.001: 1.0, math.inf: 10.0}) == 0.001
    assert math.isnan(promstats.histogram_quantile(0.5, {0.001: 0.0, math.inf: 0.0}))
    assert promstats.bucket_width_at(0.0015, buckets) == pytest.approx(0.001)
    assert promstats.bucket_width_at(0.0004, buckets) == pytest.approx(0.001)


def test_client_and_server_p99_agree_within_a_bound_that_holds_when_stalls_split_the_tails() -> None:
    # Stalls hit some requests inside the server (a long batch) and others outside it (the event loop busy before
    # the middleware starts): 0.6% each. Neither p99 sees its stall, the client's does; their p99.5s do.
    rng = np.random.default_rng(0)
    server = rng.normal(10.0, 1.0, 50_000)
    overhead = rng.normal(5.0, 0.5, 50_000)
    stall = rng.random(50_000)
    server[stall < 0.006] += 40.0
    overhead[(stall >= 0.006) & (stall < 0.012)] += 40.0
    client = server + overhead
    p = {q: (float(np.percentile(server, q)), float(np.percentile(overhead, q))) for q in (99, 99.5)}
    client_p99 = float(np.percentile(client, 99))
    assert client_p99 > p[99][0] + p[99][1] + 20.0  # a sum of p99s would call this a disagreement
    agreement = figures.Agreement("/rank", client_p99, p[99][0], 0.0, p[99.5][0], p[99.5][1])
    assert agreement.agrees
    assert not figures.Agreement("/rank", 3 * client_p99, p[99][0], 0.0, p[99.5][0], p[99.5][1]).agrees
    # and the client can never be faster than the server by more than the histogram's resolution
    assert not figures.Agreement("/rank", p[99][0] - 6.0, p[99][0], 5.0, p[99.5][0], p[99.5][1]).agrees


def test_counter_deltas_count_series_born_during_the_run_from_zero() -> None:
    before = 'rank_http_requests_total{route="/rank",status="200"} 5.0\n'
    after = (
        'rank_http_requests_total{route="/rank",status="200"} 12.0\n'
        'rank_http_requests_total{route="/rank",status="422"} 2.0\n'
    )
    deltas = promstats.counter_deltas(after, before, "rank_http_requests_total", ("route", "status"))
    assert deltas == {("/rank", "200"): 7.0, ("/rank", "422"): 2.0}


# -- the request mix -----------------------------------------------------------------------------------------------


def _queries(n: int = 300) -> list[mix.Query]:
    colours = ["red", "green", "blue", "pink", "amber", "golden"]
    glasses = ["coupe", "highball", "tiki mug", "martini glass"]
    return [
        mix.Query(f"{colours[i % 6]} drink number {i} in a {glasses[i % 4]}", {"colour": colours[i % 6]})
        for i in range(n)
    ]


def test_head_queries_repeat_zipf_like_and_tail_queries_never_repeat() -> None:
    queries = _queries()
    stream = mix.QueryStream(queries, mix.MixConfig(zipf_s=1.1, tail_share=0.2, seed=1))
    head: Counter[str] = Counter()
    tail: list[str] = []
    for _ in range(20_000):
        query, from_tail = stream.next()
        (tail.append(query.text) if from_tail else head.update([query.text]))
    assert 0.18 < len(tail) / 20_000 < 0.22
    assert len(set(tail)) == len(tail), "a tail query repeated"
    assert not set(tail) & {q.text for q in queries}, "a tail query is one of the set's (possibly cached) queries"
    counts = [c for _, c in head.most_common()]
    # Zipf with s=1.1: the top query is drawn about 2^1.1 times as often as the second and far more than the median
    assert counts[0] > 1.5 * counts[1] and counts[0] > 20 * counts[len(counts) // 2]
    assert len(head) > 200, "the head should reach deep into the query set"


def test_never_seen_texts_are_new_and_as_long_as_real_queries() -> None:
    # The benchmarks' never-seen queries (server_time, bench.encoder): no marker padding them, so MiniLM's time on
    # them is its time on a real query's length.
    queries = _queries()
    texts = list(itertools.islice(mix.never_seen_texts(queries, seed=3), 2000))
    assert len(set(texts)) == len(texts) and not set(texts) & {q.text for q in queries}
    real = sorted(len(q.text.split()) for q in queries)
    drawn = sorted(len(t.split()) for t in texts)
    assert drawn[len(drawn) // 2] <= real[len(real) // 2] + 1
    assert texts[:50] == list(itertools.islice(mix.never_seen_texts(queries, seed=3), 50)), "seeded: reproducible"


def test_request_bodies_vary_and_stay_valid() -> None:
    m = mix.RequestMix(mix.QueryStream(_queries(), mix.MixConfig(seed=2)), ["syn-1", "syn-2"], ["a title"])
    bodies = [m.rank_body() for _ in range(2000)]
    assert len({b["top_k"] for b in bodies}) >= 4 and len({b.get("num_candidates") for b in bodies}) >= 3
    assert all(b["top_k"] <= b.get("num_candidates", 100) for b in bodies)
    filtered = [b for b in bodies if "filters" in b]
    assert 0 < len(filtered) < 300 and all(set(b["filters"]) == {"colour"} for b in filtered)
    reranks = [m.rerank_body() for _ in range(500)]
    id_calls = [r for r in reranks if isinstance(r["documents"][0], dict)]
    text_calls = [r for r in reranks if isinstance(r["documents"][0], str)]
    assert id_calls and text_calls and all(r["top_n"] <= len(r["documents"]) for r in reranks)
    assert all(d["id"] in ("syn-1", "syn-2") for r in id_calls for d in r["documents"])


# -- the process helpers the tests share with the load tools -------------------------------------------------------


class _Answers(http.server.BaseHTTPRequestHandler):
    """GET /health/ready answers 503 twice, then 200; POST /rank echoes its JSON body."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).calls += 1
        self._reply(200 if type(self).calls > 2 else 503, b'{"ready": true}')

    def do_POST(self) -> None:  # noqa: N802
        self._reply(200, self.rfile.read(int(self.headers["content-length"])))

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_wait_ready_polls_until_200_and_can_post_a_body() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", process.free_port()), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert process.wait_ready(url, timeout=10, interval=0.01) == b'{"ready": true}'
        assert _Answers.calls == 3
        assert process.wait_ready(url, timeout=10, path="/rank", body={"query": "gin"}) == b'{"query": "gin"}'
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(process.NotReady, match=r"/health/ready did not answer 200 within 0s"):
        process.wait_ready(url, timeout=0.3, interval=0.05)


def test_wait_ready_fails_fast_with_what_an_exited_process_wrote(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('Traceback: ...\\nArtifactError: no bundle here\\n'); sys.exit(3)"
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    with pytest.raises(process.NotReady) as raised:
        process.wait_ready(f"http://127.0.0.1:{process.free_port()}", child, timeout=60, name="the service")
    assert str(raised.value) == "the service exited during start-up (code 3): ArtifactError: no bundle here"
    assert "Traceback" in raised.value.output
    log = tmp_path / "server.log"
    log.write_text("starting\nOSError: address in use\n")
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(process.NotReady, match="code 1\\): OSError: address in use$"):
        process.wait_ready(f"http://127.0.0.1:{process.free_port()}", child, timeout=60, log=log)


def test_stop_group_stops_the_whole_group_we_started() -> None:
    # A leader that ignores SIGTERM, with a child in its group: SIGKILL after the grace reaches both.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "child = subprocess.Popen(['sleep', '60']); print(child.pid, flush=True); time.sleep(60)"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    assert process.stop_group(leader, grace=0.5) == -signal.SIGKILL
    for _ in range(100):  # the orphaned sleep is not ours to reap: dead means gone or a zombie
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)
    polite = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert process.stop_group(polite) == -signal.SIGTERM
    assert process.stop_group(polite) == -signal.SIGTERM  # already stopped: nothing is signalled


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# -- the SLO file --------------------------------------------------------------------------------------------------


def test_repo_slo_file_gates_what_the_service_exports() -> None:
    objectives = slo.load_objectives(ROOT / "loadtests/slo.toml")
    assert {o.kind for o in objectives} == {slo.Kind.HISTOGRAM, slo.Kind.LOCUST, slo.Kind.ERROR_RATE}
    # every server-side objective names a histogram the service registers, by labels it has: a renamed metric or
    # label would leave the gate measuring nothing
    families = {family.name: family for family in Metrics().registry.collect()}
    labelnames = {
        "rank_served_seconds": {"route", "encoded", "model_version"},
        "rank_stage_seconds": {"route", "stage"},
    }
    for objective in (o for o in objectives if o.kind is slo.Kind.HISTOGRAM):
        assert families[objective.metric].type == "histogram", objective.name
        assert set(objective.labels) <= labelnames[objective.metric], objective.name
    served = {(o.labels.get("encoded"), o.quantile) for o in objectives if o.metric == "rank_served_seconds"}
    assert {("no", 0.99), ("yes", 0.99)} <= served  # cached and never-seen queries are gated apart
    # The product's promise, "under 2 ms", is gated: a cached /rank's server p50.
    card = [o for o in objectives if o.metric == "rank_served_seconds" and o.labels.get("encoded") == "no"]
    assert any(o.quantile == 0.5 and o.threshold <= 2.0 for o in card)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[objective]]\nname = 'x'\nmax_ms = 2\n", "needs exactly one of"),
        ("[[objective]]\nlocust = '/rank'\nmax_ms = -1\n", "max_ms must be a positive"),
        ("[[objective]]\nlocust = '/rank'\nquantile = 99\nmax_ms = 1\n", "quantile must be between 0 and 1"),
        ("[[objective]]\nmax_error_rate = 2\n", "max_error_rate must be a number between 0 and 1"),
        ("[[objective]]\nmax_error_rate = 0.1\nmax_ms = 3\n", "unknown keys ['max_ms']"),
        ("[[objective]]\nhistogram = 'h'\nlabels = { route = 1 }\nmax_ms = 1\n", "labels must be a table"),
        ("objective = [3]\n", "objective 1 is not a table"),
        ("[slo]\n", "unknown top-level keys"),
        ("", "no [[objective]] tables"),
        ("[[objective]\n", "not valid TOML"),
    ],
)
def test_bad_slo_files_are_refused_with_one_sentence(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "slo.toml"
    path.write_text(text)
    with pytest.raises(slo.SloError) as raised:
        slo.load_objectives(path)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


# -- the report without the optional metric families --------------------------------------------------------------


def _exposition(observations: list[float]) -> str:
    """A /metrics text with only the stage histogram: what an older service, without the batcher's metrics,
    exports."""
    registry = CollectorRegistry()
    stage = Histogram("rank_stage_seconds", "", ["route", "stage"], buckets=(0.001, 0.002, 0.005), registry=registry)
    for value in observations:
        stage.labels("/rank", "rank").observe(value)
    return generate_latest(registry).decode()


def test_report_uses_what_the_service_exports_and_misses_what_it_cannot_measure(tmp_path: Path) -> None:
    before = _exposition([0.0005] * 10)
    after = _exposition([0.0005] * 10 + [0.0015] * 90)  # the run added 90 observations in (1 ms, 2 ms]
    objectives = [
        slo.Objective("ranker p99 (server)", slo.Kind.HISTOGRAM, 2.0, 0.99, "rank_stage_seconds", {"stage": "rank"}),
        slo.Objective("absent family", slo.Kind.HISTOGRAM, 5.0, 0.99, "rank_batch_wait_seconds", {}),
        slo.Objective("error rate", slo.Kind.ERROR_RATE, 0.001),
    ]
    info = figures.RunInfo("http://127.0.0.1:1", False, 1, 1.0, 1.0, 1.0, 0, "q.jsonl", "slo.toml", "now")
    built = figures.build_report(tmp_path, info, figures.Scrapes(before, after), objectives)
    by_name = {o.objective.name: o for o in built.outcomes}
    ranker = by_name["ranker p99 (server)"]
    assert ranker.passed and ranker.measured == pytest.approx(1.0 + 1.0 * (89.1 / 90))
    assert not by_name["absent family"].passed and by_name["absent family"].measured is None
    assert not by_name["error rate"].passed and "no requests" in by_name["error rate"].note
    assert not built.passed
    text = markdown.render_markdown(built)
    assert "rank_batch_size`) | n/a" in text and "rank_deadline_drops_total`) | n/a" in text
    json.dumps(built.to_json(), allow_nan=False)  # strict JSON: no NaN leaks into summary.json


def test_runner_never_imports_locust() -> None:
    code = (
        "import sys, loadtests, loadtests.run, loadtests.bench.compare, loadtests.soak, loadtests.process; "
        "sys.exit(any(m in sys.modules for m in ('locust', 'gevent')))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_runner_cli_errors_are_one_sentence(tmp_path: Path) -> None:
    queries = tmp_path / "queries.jsonl"  # its own query set: a clean clone has no data/synthetic yet
    queries.write_text('{"id": "q1", "text": "gin sour", "split": "test"}\n')
    unreachable = ["--host", "http://127.0.0.1:9", "--ready-timeout", "1", "--out", str(tmp_path)]
    cases = [
        (["--slo", str(tmp_path / "missing.toml")], "no such SLO file"),
        (["--queries", str(tmp_path / "none.jsonl")], "no query set at"),
        ([*unreachable, "--queries", str(queries)], "did not answer 200"),
    ]
    for args, expected in cases:
        done = subprocess.run(
            [sys.executable, "-m", "loadtests.run", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# -- real runs: uvicorn + Locust -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny: TinyPipeline) -> Iterator[LiveService]:
    service = LiveService.start(tiny)
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.integration
def test_server_time_reports_every_stage_of_rank_and_of_a_text_rerank(
    server: LiveService, tiny: TinyPipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadtests import server_time

    for name, path in (("BUNDLE_DIR", tiny.bundle), ("MODEL_DIR", tiny.model), ("ENCODER_DIR", tiny.encoder)):
        monkeypatch.setenv(f"RANK_{name}", str(path))  # the artifacts --floors times alone: the server's
    common = ["--url", server.url, "--requests", "4", "--distinct", "2", "--queries", str(tiny.data / "queries.jsonl")]
    floors = {"floor:encode", "floor:rank", "floor:scoring", "floor:scoring-paused"}
    for extra, title, added in (
        (["--never-seen", "--floors"], "/rank", floors),
        (["--rerank-documents", "3"], "/rerank", set()),
    ):
        assert server_time.main([*common, *extra]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{title} server-side time, 4 requests")
        rows = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[2:]}
        assert set(rows) == {*server_time.STAGES, "client", *added}
        assert rows["encode"] > 0 and rows["client"] >= rows["total"] > 0  # MiniLM ran for every request
        assert all(rows[name] > 0 for name in added)


def _slo_file(path: Path, server_ms: float, client_ms: float) -> Path:
    """An SLO file of the repo's kinds with other thresholds (the tests are about the mechanics, not this machine's
    speed): cached /rank server p99, /rank client p99 and the error rate."""
    path.write_text(
        "[[objective]]\n"
        'name = "/rank cached p99 (server)"\n'
        'histogram = "rank_served_seconds"\n'
        'labels = { route = "/rank", encoded = "no" }\n'
        f"max_ms = {server_ms}\n"
        "[[objective]]\n"
        'name = "/rank p99 (client)"\n'
        'locust = "/rank"\n'
        f"max_ms = {client_ms}\n"
        "[[objective]]\n"
        'name = "error rate"\n'
        "max_error_rate = 0.001\n"
    )
    return path


def _report_dir(out: Path) -> Path:
    (run_dir,) = out.glob("loadtest-*")
    return run_dir


@pytest.mark.integration
@needs_locust
def test_loadtest_against_a_running_service_passes_and_reports(
    tiny: TinyPipeline, server: LiveService, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    command = [
        sys.executable,
        "-m",
        "loadtests.run",
        "--host",
        server.url,
        "--duration",
        "8",
        "--users",
        "5",
        "--spawn-rate",
        "5",
        "--user-rps",
        "10",
        "--queries",
        str(tiny.data / "queries.jsonl"),
        "--slo",
        str(_slo_file(tmp_path / "slo.toml", server_ms=1000.0, client_ms=5000.0)),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    run_dir = _report_dir(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["passed"] and summary["errors"] == 0 and summary["requests"] > 150
    assert 15 < summary["requests_per_s"] < 80  # 5 users x 10/s offered

    rows = {row["name"]: row for row in summary["locust"]}
    assert rows["/rank"]["requests"] > 100 and rows["/rerank"]["requests"] > 5
    # invalid-by-design requests were sent and every one was answered 4xx (else they would count as failures)
    invalid = sum(row["requests"] for name, row in rows.items() if name.endswith("[invalid]"))
    assert invalid > 0 and all(row["failures"] == 0 for row in rows.values())
    statuses = summary["status_counts"]
    assert statuses["/rank"]["200"] > 100 and sum(v for s, v in statuses["/rank"].items() if s.startswith("4")) > 0
    assert "5" not in "".join(s[0] for counts in statuses.values() for s in counts)

    # every request Locust made is in samples.csv, request for request what the server counted, with the server's
    # own time for the 200s
    with (run_dir / "samples.csv").open() as rows_file:
        samples = list(csv.DictReader(rows_file))
    assert len(samples) == summary["requests"]
    for route in ("/rank", "/rerank"):
        sent = Counter(s["status"] for s in samples if s["name"].split(" ")[0] == route)
        assert sent == Counter({k: int(v) for k, v in statuses[route].items()})
    assert all(s["server_total_ms"] for s in samples if s["status"] == "200")

    # client and server agree on the p99 within the bucket width plus the HTTP overhead, and the report says so
    agreement = {a["route"]: a for a in summary["p99_agreement"]}
    rank = agreement["/rank"]
    assert rank["agrees"], rank
    assert rank["client_p99"] > 0 and rank["server_p99"] > 0
    assert summary["server_stage_ms"]["/rank"]["rank"]["n"] == statuses["/rank"]["200"]
    text = (run_dir / "summary.md").read_text()
    assert "PASS" in text.splitlines()[0] and "they agree" in text and "**/rank p99**" in text
    for heading in ("## SLOs", "## Throughput and errors", "## Latency", "### Server stages, /rank", "## Batching"):
        assert heading in text
    for chart in ("latency.png", "throughput.png"):
        assert (run_dir / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({chart})" in text
    assert (run_dir / "metrics-before.prom").exists() and (run_dir / "metrics-after.prom").exists()

    # the warm-up sent every query of the set before the first scrape (the status counts above match Locust's
    # requests alone), so in the run only the never-seen tail (10% of /rank) pays MiniLM: a repeated request is
    # answered from the result cache (and looks the query cache up no more), the rest from the query cache
    queries = (tiny.data / "queries.jsonl").read_text().splitlines()
    assert f"each of the {len(queries)} queries of the set sent once" in summary["info"]["warm_up"]
    assert "query-cache warm-up: head" in text
    results, embeddings = summary["extras"]["result_cache"], summary["extras"]["query_cache"]
    assert embeddings["misses"] > 0 and results["hits"] > 0
    without_minilm = results["hits"] + embeddings["hits"]
    assert without_minilm / (without_minilm + embeddings["misses"]) > 0.75
    # the warm-up's /rank requests also left their results and candidate lists behind: the head's repeats skip FAISS
    # and BM25 (a result hit looks up no candidates)
    candidates = summary["extras"]["candidate_cache"]
    skipped = results["hits"] + candidates["hits"]
    assert candidates["misses"] > 0 and skipped / (skipped + candidates["misses"]) > 0.5
    assert "| result cache (`rank_result_cache_total`) |" in text
    assert "| candidate cache (`rank_candidate_cache_total`) |" in text


@pytest.mark.integration
@needs_locust
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_loadtest_starts_the_service_and_fails_on_a_missed_slo(tiny: TinyPipeline, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    flipped = _slo_file(tmp_path / "slo.toml", server_ms=0.001, client_ms=5000.0)  # no request is that fast
    args = (
        f"--bundle-dir {tiny.bundle} --model-dir {tiny.model} --encoder-dir {tiny.encoder} "
        f"--queries {tiny.data / 'queries.jsonl'} --slo {flipped} --out {out}"
    )
    command = [
        "make",
        "--no-print-directory",
        # never let a test rebuild .venv because pyproject.toml is newer than the install stamp
        "-o",
        ".venv/.installed-cpu",
        "-o",
        ".venv/.installed-gpu",
        "loadtest",
        f"PY={sys.executable}",
        "DURATION=5",
        "USERS=4",
        "SPAWN_RATE=4",
        f"ARGS={args}",
    ]
    dirs = ("RANK_BUNDLE_DIR", "RANK_MODEL_DIR", "RANK_ENCODER_DIR")  # these go by ARGS, to test the flags
    env = {k: v for k, v in tiny_env(tiny).items() if k not in dirs}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "FAIL: 1 of 3 objectives missed" in done.stdout and "/rank cached p99 (server)" in done.stdout
    run_dir = _report_dir(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not summary["passed"] and summary["info"]["started_service"] and summary["errors"] == 0
    outcome = {o["name"]: o for o in summary["slo"]}
    cached = outcome["/rank cached p99 (server)"]
    assert not cached["passed"] and cached["measured"] > 0.001
    assert outcome["error rate"]["passed"] and outcome["/rank p99 (client)"]["passed"]
    assert "**MISSED**" in (run_dir / "summary.md").read_text()
    assert (run_dir / "service.log").exists()
