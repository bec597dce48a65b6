"""A real `python -m service` process on a free 127.0.0.1 port, serving the tiny artifacts (for the load-test and
Prometheus tests, which need a server other processes can reach)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import TinyPipeline

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    def start(cls, tiny: TinyPipeline, ready_within: float = 90.0) -> LiveService:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)],
            cwd=ROOT,
            env=tiny_env(tiny),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        service = cls(f"http://127.0.0.1:{port}", port, process)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"the service exited with {process.returncode}: {err}")
            try:
                if service.request("GET", "/health/ready")[0] == 200:
                    return service
            except OSError:
                pass
            time.sleep(0.2)
        service.stop()
        raise AssertionError(f"the service did not become ready within {ready_within:.0f}s")

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
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
