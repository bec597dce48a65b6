"""The systems `make bench` compares, started on a port of 127.0.0.1 over the same model and bundle: `service` (this
project, started by loadtests.process.start_service as every tool starts it), `naive` (PyTorch in a plain FastAPI
handler: peers/naive_app.py) and `ray-serve` (Ray Serve with @serve.batch over the same engine: peers/ray_app.py,
in .venv-bench)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.process import spawn, start_service, wait_ready
from training.paths import ROOT


def log_path(system: str) -> Path:
    """Where a started system's stdout and stderr go."""
    return Path(tempfile.gettempdir()) / f"bench-{system}.log"


def peer_command(system: str, port: int, args: argparse.Namespace) -> list[str]:
    """The command line that serves peer `system` on `port` over args.model and args.bundle (args.encoder and
    args.bench_python for Ray Serve)."""
    paths = ["--port", str(port), "--model-dir", str(args.model), "--bundle-dir", str(args.bundle)]
    if system == "naive":
        return [sys.executable, "loadtests/bench/peers/naive_app.py", *paths]
    if system == "ray-serve":
        return [str(args.bench_python), "loadtests/bench/peers/ray_app.py", *paths, "--encoder-dir", str(args.encoder)]
    raise ValueError(f"unknown system {system!r}; choose naive, ray-serve or service")


def start(system: str, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Start `system` on `port` in its own process group (stop it with loadtests.process.stop_group), logging to
    log_path(system): the service through `start_service`, a peer by its command line. One OpenMP thread each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if system == "service":
        options = {"model_dir": args.model, "bundle_dir": args.bundle, "encoder_dir": args.encoder}
        return start_service(env, {**options, "log_level": "warning"}, log=log_path(system), port=port).process
    return spawn(peer_command(system, port, args), env, log_path(system))


def wait_serving(url: str, system: str, body: dict, process: subprocess.Popen[bytes], seconds: float = 240.0) -> None:
    """Wait until a real /rank request answers 200 (the peers have no readiness route); NotReady otherwise."""
    wait_ready(url, process, timeout=seconds, path="/rank", body=body, interval=1.0, log=log_path(system), name=system)
