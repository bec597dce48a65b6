"""The served system: each query through the service's real request path, in this process (the engine the service
builds at start-up) or over HTTP POST /rank to a running service; and the lexical analysis it serves with, which
the BM25 baseline matches. `service` is imported inside the functions that need it, so that importing this module
loads no web framework."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from index.data.records import Query
from index.runtime.lexical import NO_ANALYSIS
from training.evaluate.errors import EvaluateError, one_line
from training.evaluate.systems import DEFAULT_TOP_K, Ranking, progress_bar


class Served(Protocol):
    """Something that answers a query the way the service does."""

    description: str
    model_version: str
    synthetic_model: bool

    def rank(self, query: Query) -> Ranking: ...


class InProcessServed:
    """The service's engine in this process: `prepare_rank` (validation, normalisation) then `serve_one` (the
    unbatched path, a batch of one, ranked exactly as a batch of many)."""

    def __init__(self, engine: Any, top_k: int = DEFAULT_TOP_K, num_candidates: int | None = None) -> None:
        from service.protocol import RankRequest

        self._request = RankRequest
        self.engine = engine
        self.top_k, self.num_candidates = top_k, num_candidates
        self.model_version: str = engine.model_version
        self.synthetic_model: bool = engine.synthetic
        candidates = num_candidates or engine.settings.default_candidates
        self.description = (
            f"in process: model {engine.model_version}, bundle {engine.bundle.version} ({engine.bundle.size} items), "
            f"top {top_k} of {candidates} candidates"
        )
        self.catalog: set[str] | None = set(engine.bundle.ids)

    def rank(self, query: Query) -> Ranking:
        from service.errors import RequestError

        try:
            job = self.engine.prepare_rank(
                self._request(query=query.text, top_k=self.top_k, num_candidates=self.num_candidates)
            )
        except RequestError as exc:
            raise EvaluateError(f"query {query.id!r} cannot be served: {exc}") from None
        outcome = self.engine.serve_one(job)
        return Ranking(list(outcome.ids), [float(s) for s in outcome.scores])


def load_in_process(
    bundle: Path | None,
    model: Path | None,
    encoder: Path | None,
    top_k: int = DEFAULT_TOP_K,
    num_candidates: int | None = None,
    gate: bool | None = None,
    query_encoder: Path | None = None,
) -> InProcessServed:
    """Build the engine as the service does at start-up (checksums, canaries, quality gate, warm-up), from the
    given paths and otherwise the RANK_* environment; EvaluateError when the artifacts do not load. `gate` False
    turns the zero-shot part of the quality gate off (to measure a model the service would refuse);
    `query_encoder` serves another query encoder than MiniLM (RANK_QUERY_ENCODER_DIR): a distilled student, which
    is served whatever its gate said, since this is how the gate measures it."""
    from service.loading import load_engine
    from service.metrics import Metrics
    from service.settings import Settings

    paths: dict[str, Any] = {
        "bundle_dir": bundle,
        "model_dir": model,
        "encoder_dir": encoder,
        "require_beats_baseline": gate,
        "query_encoder_dir": query_encoder,
    }
    try:
        settings = Settings(**{k: v for k, v in paths.items() if v is not None})
    except ValueError as exc:
        raise EvaluateError(f"the service settings are invalid: {one_line(exc)}") from None
    try:
        engine = load_engine(settings, Metrics(), gate_student=query_encoder is None)
    except Exception as exc:  # noqa: BLE001 - any failure to load is one sentence, never a traceback
        raise EvaluateError(
            f"the served artifacts (model {settings.model_dir}, bundle {settings.bundle_dir}, encoder "
            f"{settings.encoder_dir}) do not load: {one_line(exc)}"
        ) from None
    return InProcessServed(engine, top_k, num_candidates)


class HttpServed:
    """A running service, over HTTP POST /rank (http.client, one request at a time, a 429 retried)."""

    def __init__(
        self, url: str, top_k: int = DEFAULT_TOP_K, num_candidates: int | None = None, timeout: float = 30.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EvaluateError(f"--url must look like http://127.0.0.1:8000, got {url!r}")
        self.url = url.rstrip("/")
        self._host, self._https = parts.hostname, parts.scheme == "https"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.top_k, self.num_candidates = top_k, num_candidates
        self._conn: http.client.HTTPConnection | None = None
        status, ready = self.call("GET", "/health/ready")
        if status != 200:
            raise EvaluateError(f"{self.url} is not ready (GET /health/ready answered {status}: {_detail(ready)})")
        self.model_version = str(ready.get("model_version", "?"))
        self.synthetic_model = bool(ready.get("synthetic", False))
        candidates = num_candidates or "the service's default number of"
        self.description = (
            f"{self.url}: model {self.model_version}, bundle {ready.get('bundle_version', '?')} "
            f"({ready.get('items', '?')} items), top {top_k} of {candidates} candidates"
        )
        self.catalog: set[str] | None = None  # unknown over HTTP: every returned id is checked instead

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self.timeout)
        return self._conn

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) of one request on the kept-alive connection."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if payload is None else {"content-type": "application/json"}
        for attempt in range(2):  # a kept-alive connection the server closed gets one fresh try
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt:
                    raise EvaluateError(f"{self.url} closed the connection: {exc}") from None
            except OSError as exc:
                self.close()
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise EvaluateError(f"cannot reach {self.url}: {reason}") from None
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"detail": raw[:200].decode(errors="replace")}
        return response.status, decoded if isinstance(decoded, dict) else {"detail": decoded}

    def rank(self, query: Query) -> Ranking:
        body: dict[str, Any] = {"query": query.text, "top_k": self.top_k}
        if self.num_candidates is not None:
            body["num_candidates"] = self.num_candidates
        for _ in range(20):
            status, answer = self.call("POST", "/rank", body)
            if status != 429:
                break
            time.sleep(0.05)
        if status != 200:
            raise EvaluateError(f"{self.url}/rank answered {status} for query {query.id!r}: {_detail(answer)}")
        results = answer.get("results", [])
        return Ranking([str(r["id"]) for r in results], [float(r["score"]) for r in results])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def served_rankings(served: Served, queries: list[Query], catalog: set[str] | None = None) -> list[Ranking]:
    """Each query through the served path; an id outside `catalog` means the service serves another catalog."""
    out = []
    for query in progress_bar(queries, "served", unit="query"):
        ranking = served.rank(query)
        if catalog is not None:
            stranger = next((i for i in ranking.ids if i not in catalog), None)
            if stranger is not None:
                raise EvaluateError(
                    f"the served system returned item {stranger!r}, which is not in this dataset's catalog: it "
                    "serves another catalog (evaluate the zero-shot systems only with --systems minilm,bm25,rrf)"
                )
        out.append(ranking)
    return out


def served_analysis(served: Served | None, bundle: Path | None) -> str:
    """The lexical analysis of the bundle the service serves, for the bm25 baseline to match: the in-process
    engine's, else that of the bundle at `bundle` (default RANK_BUNDLE_DIR) if there is one, else none."""
    if isinstance(served, InProcessServed):
        return str(served.engine.bundle.lexical.analyzer.name)
    try:
        if bundle is None:
            from service.settings import load_settings

            bundle = load_settings().bundle_dir
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):  # no bundle there (or settings that do not load): no analysis to match
        return NO_ANALYSIS
    return str(manifest.get("lexical", {}).get("analysis", NO_ANALYSIS))


def _detail(body: dict[str, Any]) -> str:
    detail = body.get("error", body.get("detail", body))
    return one_line(ValueError(json.dumps(detail) if not isinstance(detail, str) else detail))
