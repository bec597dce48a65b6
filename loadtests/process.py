"""Processes on 127.0.0.1 for the load tools, the benchmarks and the tests: `start_service` (the one way any of them
starts `python -m service`), a free port, waiting for readiness, stopping a process group we started. Standard
library only (no Locust, no gevent), so pytest can import it.

    service = start_service(env, {"bundle_dir": path})   # --host 127.0.0.1 --port <free> --bundle-dir path
    try:
        wait_ready(service.url, service.process, timeout=90, log=service.log)
        ...
    finally:
        stop_group(service.process)
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.paths import ROOT

READY_PATH = "/health/ready"


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


def spawn(
    command: list[str], env: Mapping[str, str], log: Path | None = None, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start `command` in `root` (this repository by default), in a process group of its own (stop it with
    `stop_group`). Its stdout and stderr go to `log`; without one, stdout is discarded and stderr is a pipe, which
    `wait_ready` quotes when the process exits during start-up."""
    if log is None:
        return subprocess.Popen(
            command, cwd=root, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=root, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@dataclass(frozen=True)
class Service:
    """`python -m service` on a port of 127.0.0.1, in its own process group; its output goes to `log`, or, when
    that is None, stderr is a pipe (stdout discarded)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path | None

    def stop(self, grace: float = 10.0) -> int:
        """`stop_group` on the service: SIGTERM (it drains), SIGKILL after `grace` seconds; the exit code."""
        return stop_group(self.process, grace)


def start_service(
    env: Mapping[str, str] | None = None,
    options: Mapping[str, object] | None = None,
    *,
    log: Path | None = None,
    port: int | None = None,
    root: Path = ROOT,
) -> Service:
    """Start `python -m service --host 127.0.0.1 --port PORT` (a free port unless `port`) in the repository root, or
    in `root`, another checkout of this project, whose code then serves (`python -m` puts the working directory first
    on the import path): two commits side by side, with this interpreter's packages.

    Args:
        env: the process's environment (RANK_* variables are settings); this process's by default.
        options: Settings fields given on the command line as `--name value` (e.g. `{"bundle_dir": path,
            "log_level": "warning"}`), over the environment's RANK_* variables.
        log: the file for its stdout and stderr; None: stdout discarded, stderr a pipe that `wait_ready` quotes.
        port: the port to serve on.
        root: the checkout whose code serves.

    Returns at once: `wait_ready(service.url, service.process, log=service.log)` waits for readiness.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    for name, value in (options or {}).items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    process = spawn(command, os.environ if env is None else env, log, root)
    return Service(f"http://127.0.0.1:{port}", port, process, log)
