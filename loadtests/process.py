"""Processes on 127.0.0.1 for the load tools and the tests: a free port, waiting for readiness, stopping a process
group we started. Standard library only (no Locust, no gevent), so pytest can import it.

    port = free_port()
    process = subprocess.Popen([...], stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, timeout=90)
        ...
    finally:
        stop_group(process)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_PATH = "/health/ready"
ROOT = Path(__file__).resolve().parents[1]


class NotReady(RuntimeError):
    """The process exited during start-up, or the URL did not answer 200 in time.

    The message is one sentence (with the last line the process wrote, if it exited); `output` holds everything it
    wrote to stderr (or to its log file), for callers that want the whole traceback.
    """

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Straight to the address: an http_proxy in the environment must not carry a poll for 127.0.0.1 elsewhere.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request_json(url: str, body: Any, timeout: float) -> tuple[int, bytes]:
    """GET `url` (body None) or POST `body` as JSON, straight to the address; the status and the body, 4xx/5xx too."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    try:
        with _DIRECT.open(urllib.request.Request(url, data, headers), timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _output(process: subprocess.Popen[bytes], log: Path | None) -> str:
    """What an exited process wrote: its log file if it has one, else its stderr if that is a pipe."""
    if log is not None:
        return log.read_text(errors="replace") if log.exists() else ""
    if process.stderr is not None:
        return process.stderr.read().decode(errors="replace")
    return ""


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes] | None = None,
    *,
    timeout: float = 90.0,
    path: str = READY_PATH,
    body: Any = None,
    interval: float = 0.25,
    request_timeout: float = 5.0,
    log: Path | None = None,
    name: str = "the process",
) -> bytes:
    """Poll `url + path` until it answers 200 and return that response's body.

    Args:
        url: base URL, e.g. `http://127.0.0.1:8000`.
        process: the server process, if we started it: its exit fails the wait at once instead of at the timeout.
        timeout: seconds before giving up.
        path: what to poll; GET /health/ready by default.
        body: if given, POST it as JSON instead of a GET (e.g. a real /rank request, for a server without a
            readiness route).
        interval: seconds between attempts.
        request_timeout: seconds one attempt may take.
        log: the file the process writes its output to, if not a stderr pipe; quoted when it exits.
        name: what to call the process in the message.

    Raises:
        NotReady: the process exited (with what it wrote) or `timeout` passed without a 200.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            output = _output(process, log)
            lines = [line for line in output.splitlines() if line.strip()]
            raise NotReady(
                f"{name} exited during start-up (code {process.returncode}): "
                f"{lines[-1].strip() if lines else 'no output'}",
                output,
            )
        try:
            status, content = request_json(f"{url}{path}", body, request_timeout)
            if status == 200:
                return content
        except OSError:  # refused while it starts, or a timeout: try again
            pass
        if time.monotonic() + interval > deadline:
            raise NotReady(f"{url}{path} did not answer 200 within {timeout:.0f}s")
        time.sleep(interval)


def stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """Stop a process we started with `start_new_session=True`, and every process in its group.

    SIGTERM to the group (the service drains, then exits), SIGKILL after `grace` seconds; SIGKILL at once when
    `grace` is 0. Only the group whose id is the process's own pid is signalled, never any other; a process that is
    not a group leader gets the signals alone. Returns the exit code.
    """
    if process.poll() is not None:
        return int(process.returncode)

    def send(sig: signal.Signals) -> None:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:  # it exited meanwhile
            pass

    if grace > 0:
        send(signal.SIGTERM)
        try:
            return int(process.wait(grace))
        except subprocess.TimeoutExpired:
            pass
    send(signal.SIGKILL)
    return int(process.wait())


@dataclass(frozen=True)
class Service:
    """`python -m service` on a free 127.0.0.1 port, in its own process group, writing its output to `log`."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, log: Path, env: dict[str, str], options: dict[str, object] | None = None) -> Service:
        """Start it with `--name value` for each of `options` (Settings fields, e.g. `{"bundle_dir": path}`).
        Returns at once: `wait_ready(service.url, service.process, log=service.log)` waits for it."""
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        for name, value in (options or {}).items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(f"http://127.0.0.1:{port}", process, log)
