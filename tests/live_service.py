"""A real `python -m service` process on a free 127.0.0.1 port, serving the tiny artifacts (for the load-test and
Prometheus tests, which need a server other processes can reach), started by loadtests.process.start_service as
the load tools and benchmarks start theirs."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from loadtests.process import NotReady, free_port, start_service, stop_group, wait_ready

from .conftest import TinyPipeline


def tiny_env(tiny: TinyPipeline) -> dict[str, str]:
    """Environment that makes `python -m service` serve the tiny artifacts. The tiny model does not beat the text
    baseline (60 training queries), so that part of the quality gate is off, as in conftest.serving_settings."""
    return {
        **os.environ,
        "RANK_BUNDLE_DIR": str(tiny.bundle),
        "RANK_MODEL_DIR": str(tiny.model),
        "RANK_ENCODER_DIR": str(tiny.encoder),
        "RANK_WARMUP_QUERIES": "2",
        "RANK_REQUIRE_BEATS_BASELINE": "false",
        "RANK_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }


@dataclass
class LiveService:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, tiny: TinyPipeline, ready_within: float = 90.0, **env: str) -> LiveService:
        """Serve the tiny artifacts, with `env` (RANK_* variables) on top."""
        started = start_service({**tiny_env(tiny), **env})
        service = cls(started.url, started.port, started.process)
        try:
            wait_ready(service.url, service.process, timeout=ready_within, interval=0.2, name="the service")
        except NotReady as exc:
            service.stop()
            raise AssertionError(f"{exc}\n{exc.output}") from None
        return service

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, payload, {"content-type": "application/json"} if payload else {})
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def metrics(self) -> str:
        status, body, _ = self.request("GET", "/metrics")
        assert status == 200
        return body.decode()

    def stop(self) -> None:
        """SIGKILL the process group this helper started (by its id)."""
        stop_group(self.process, grace=0)


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """`app` behind a real uvicorn on a free 127.0.0.1 port, in a thread of this process, for tests that need real
    HTTP clients (urllib, SDKs) but not a process of its own; yields its URL and stops it after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
