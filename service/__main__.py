"""Run the service: `python -m service [--port 8000 ...]` (every option is also a RANK_* environment variable).

Artifacts are loaded and checked before the server starts, so a bad bundle or model ends with one sentence and
exit code 2 instead of a server that never becomes ready.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

import uvicorn

from index.runtime.files import ArtifactError
from service.app import create_app
from service.lifecycle import AppState
from service.loading import load_engine
from service.logs import configure_logging
from service.metrics import Metrics
from service.rpc.server import RpcServer, RpcStartError
from service.settings import Settings, SettingsError, load_settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before the graceful shutdown: on SIGTERM readiness turns false and new requests get
    503 for `drain_seconds` (load balancers notice), then uvicorn stops accepting connections and waits up to
    `timeout_graceful_shutdown` for in-flight requests. A second signal exits at once. Whether a drain is on is the
    app's lifecycle's to say, not this class's."""

    def __init__(self, config: uvicorn.Config, state: AppState, drain_seconds: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.state.lifecycle.begin_drain():
            log.info("SIGTERM: draining for %.1fs", self.drain_seconds)
            threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame)).start()
            return
        super().handle_exit(sig, frame)


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Settings from the command line over RANK_* variables; every Settings field is an option (`--max-delay-us`).
    Raises SettingsError, one sentence naming the setting, for a bad value."""
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve /rank and /rerank.")
    for name, info in Settings.model_fields.items():
        env = f"RANK_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=f"{env}: {info.description}" if info.description else env,
        )
    overrides = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return load_settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()
    try:
        # gRPC listens first, so that its health service answers NOT_SERVING while the artifacts load and warm.
        rpc = RpcServer(settings).start() if settings.grpc_port else None
    except RpcStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        engine = load_engine(settings, metrics)
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        if rpc is not None:
            rpc.stop(0)
        return 2
    app = create_app(settings, engine=engine, metrics=metrics, rpc=rpc)
    url = f"http://{settings.host}:{settings.port}"
    example = (
        f"curl -s -XPOST {settings.host}:{settings.port}/rank -H 'content-type: application/json' "
        f'-d \'{{"query": "pink gin cocktail in a coupe", "top_k": 3}}\''
    )
    if settings.log_format == "json":  # every line a JSON event, so the greeting is one too
        log.info("serving on %s (docs: %s/docs); try: %s", url, url, example)
    else:
        print(f"serving on {url}  (docs: {url}/docs)")
        print(f"try: {example}", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,  # the app's AccessLogMiddleware writes access lines, with the request id and the model
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    DrainingServer(config, app.state.rank, settings.drain_seconds).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
