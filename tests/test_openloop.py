"""The open-loop load generator (loadtests/openloop.py) against a small local HTTP server: it keeps the arrival rate
when the server falls behind and counts the queueing in each request's latency (no coordinated omission)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from loadtests.openloop import OpenLoopResult, capacity, capacity_under, open_loop


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real services
    work_seconds = 0.0
    chunked = False
    lock = threading.Lock()  # one request at a time: a single-server queue

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers["content-length"]))
        with self.lock:
            time.sleep(self.work_seconds)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if self.chunked:  # as Ray Serve's proxy answers
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (body[:5], body[5:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            return
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # http.server's 5 drops a burst of new connections into 1 s SYN retries; uvicorn's is 2048


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    work, chunked = request.param if isinstance(request.param, tuple) else (request.param, False)
    handler = type("Handler", (_Handler,), {"work_seconds": work, "chunked": chunked, "lock": threading.Lock()})
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("server", [0.002, (0.002, True)], indirect=True, ids=["content-length", "chunked"])
def test_a_server_with_room_is_offered_the_rate_and_answers_fast(server: str) -> None:
    result = open_loop(server, "/rank", lambda i: {"query": f"q {i}"}, rate=50, seconds=2)
    assert result.sent == 100 and result.errors == 0
    assert 40 < result.achieved <= 55
    assert 2.0 <= result.p50_ms < 50.0


@pytest.mark.parametrize("server", [0.002], indirect=True)
def test_the_generators_own_lateness_is_reported_apart_not_charged_to_the_server(server: str) -> None:
    """The generator stalls 300 ms before its first request (as when its own timers or CPU run late): the requests
    it then issues behind schedule are late by its doing, which `lag_p99_ms` shows and the latencies leave out (the
    burst it then sends still queues at the server, and that wait counts)."""

    def body(i: int) -> dict:
        if i == 0:
            time.sleep(0.3)
        return {"query": f"q {i}"}

    result = open_loop(server, "/rank", body, rate=50, seconds=2)
    assert result.errors == 0 and result.sent == 100
    assert result.lag_p99_ms > 250.0
    assert result.p99_ms < 150.0  # counted from the due times it would be over 250 ms


@pytest.mark.parametrize("server", [0.03], indirect=True)
def test_an_overloaded_server_shows_the_queue_it_builds(server: str) -> None:
    """30 ms of work per request offered every 20 ms: a closed loop would report about 30 ms; arrivals outpace the
    server, so by the end requests wait for all the work queued before them."""
    result = open_loop(server, "/rank", lambda i: {"query": "q"}, rate=50, seconds=2)
    assert result.errors == 0 and result.sent == 100
    assert result.p99_ms > 500.0  # about 100 x (30 - 20) ms behind by the last request
    assert result.achieved < 40  # the server answered at most ~33/s


def test_capacity_is_the_last_rate_that_met_the_p99_before_the_first_miss() -> None:
    p99s = {10.0: 2.0, 20.0: 4.0, 40.0: 12.0, 80.0: 3.0}  # 80 would pass, but the ladder stops at the first miss

    def fake(rate: float) -> OpenLoopResult:
        return OpenLoopResult(rate, rate, int(rate), 0, 1.0, p99s[rate])

    best, tried = capacity(fake, [80.0, 10.0, 40.0, 20.0], max_p99_ms=10.0)
    assert best == 20.0 and [r.rate for r in tried] == [10.0, 20.0, 40.0]
    best, _ = capacity(fake, [40.0], max_p99_ms=10.0)
    assert best == 0.0
    # A tighter threshold read off the same ladder: the last rate before its own first miss.
    assert capacity_under(tried, 3.0) == 10.0 and capacity_under(tried, 10.0) == 20.0
    assert capacity_under(tried, 1.0) == 0.0 and capacity_under(tried, 50.0) == 40.0
