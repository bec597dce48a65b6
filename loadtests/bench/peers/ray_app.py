"""The same model and index behind Ray Serve with `@serve.batch`, for `make bench` (runs in .venv-bench).

The deployment reuses this project's `RankingEngine.process_batch`, so the ranking work per batch is identical to
the service's; what differs is the serving stack: Ray's HTTP proxy, actor hand-off and `@serve.batch` instead of
uvicorn and the in-process micro-batcher. Run: PYTHONPATH=. .venv-bench/bin/python loadtests/bench/peers/ray_app.py
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.text_encoder import TextEncoder
from service.batcher import Batched
from service.engine import RankingEngine
from service.metrics import Metrics
from service.outcomes import RankOutcome
from service.protocol import RankRequest
from service.routes import rank_body
from service.settings import Settings


# Access logs off: a log line per request would charge Ray for work the other systems do not do.
@serve.deployment(max_ongoing_requests=256, logging_config={"enable_access_log": False, "log_level": "WARNING"})
class Ranker:
    """One replica holding the bundle, the ONNX ranker and the text encoder."""

    def __init__(self, model_dir: str, bundle_dir: str, encoder_dir: str) -> None:
        settings = Settings(model_dir=Path(model_dir), bundle_dir=Path(bundle_dir), encoder_dir=Path(encoder_dir))
        ranker = ExportedModel(settings.model_dir)
        encoder = TextEncoder(settings.encoder_dir, cache_size=settings.query_cache_size)
        self.engine = RankingEngine(Bundle.load(settings.bundle_dir), ranker, encoder, settings, Metrics())
        self.lock = threading.Lock()  # the engine's query cache and FAISS index have one user at a time

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0001)
    async def rank_batch(self, requests: list[RankRequest]) -> list[dict[str, Any]]:
        jobs = [Batched(self.engine.prepare_rank(r), 0.0) for r in requests]
        with self.lock:
            outcomes = self.engine.process_batch(jobs)
        return [rank_body(o, dict(o.timing)) if isinstance(o, RankOutcome) else {"error": str(o)} for o in outcomes]

    async def __call__(self, request: Request) -> dict[str, Any]:
        return await self.rank_batch(RankRequest(**await request.json()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--model-dir", default="artifacts")
    parser.add_argument("--bundle-dir", default="artifacts/bundle")
    parser.add_argument("--encoder-dir", default="artifacts/encoders/minilm")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = Ranker.bind(
        str(Path(args.model_dir).resolve()), str(Path(args.bundle_dir).resolve()), str(Path(args.encoder_dir).resolve())
    )
    serve.run(app, route_prefix="/rank")
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
