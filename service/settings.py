"""Service settings, from `RANK_*` environment variables (or the CLI, which sets the same fields)."""

from __future__ import annotations

import logging
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.auth import ApiKeys

log = logging.getLogger("service")

LogFormat = Literal["text", "json"]

UNSAFE_TOKENS = {"changeme", "change-me-please!", "secret", "password", "admin", "token"}


class Device(StrEnum):
    AUTO = "auto"  # CUDA when onnxruntime-gpu and a GPU are present, else CPU
    CPU = "cpu"
    CUDA = "cuda"  # required: start-up fails without it unless allow_cpu_fallback


class EncoderVariant(StrEnum):
    FP32 = "fp32"
    INT8 = "int8"  # fused + dynamic int8; used only if its recorded cosine to fp32 is >= 0.99


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    """Every knob of the service. Read once at start-up; nothing reads the environment elsewhere."""

    model_config = SettingsConfigDict(env_prefix="RANK_", extra="forbid")

    bundle_dir: Path = Path("artifacts/bundle")
    model_dir: Path = Path("artifacts")
    encoder_dir: Path = Path("artifacts/encoders/minilm")
    model_alias: str = Field("default", description="a name rerank clients may give as `model`, besides the version")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # The gRPC API (service/rpc/rank.proto) on the same host, beside HTTP: the same engine, batchers and caches.
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port beside HTTP (0: no gRPC)")
    device: Device = Device.AUTO
    allow_cpu_fallback: bool = True
    ort_threads: int = Field(1, ge=1, le=64, description="intra-op threads of the ranker's ONNX graphs")
    encoder_threads: int = Field(1, ge=1, le=64, description="intra-op threads of the MiniLM query encoder")
    # Off by default: the idle pair lowers a lone miss's p50 but raises the p99 of mixed traffic by 2-3 ms at every
    # rate, because requests that arrive during its run find both cores taken (BENCHMARKS.md, "MiniLM on the idle
    # cores"). For sparse or /rerank-text-heavy traffic, 2 on a 2-core machine.
    encoder_idle_threads: int = Field(
        1, ge=1, le=64, description="intra-op threads of MiniLM (queries, /rerank texts) when no other stage has work"
    )
    faiss_threads: int = Field(1, ge=1, le=64, description="OpenMP threads for FAISS searches on the worker")
    query_cache_size: int = Field(10_000, ge=0)
    # A repeated query's candidates (FAISS, BM25, their fusion and BM25 scores) do not change while one bundle and
    # model serve, so a hit skips the retrieve, lexical and fuse stages. 12 bytes per candidate: 12 MB at 10,000
    # queries of 100 candidates, 120 MB at the 1,000-candidate maximum.
    candidate_cache_size: int = Field(
        10_000, ge=0, description="unfiltered /rank queries whose candidate lists are remembered (0: off)"
    )
    # A repeated unfiltered /rank request's scores do not change either, so a hit skips the scoring graph too (the
    # last stage a cached query ran). 12 bytes per candidate, as above.
    result_cache_size: int = Field(
        10_000, ge=0, description="unfiltered /rank queries whose candidates' scores are remembered (0: off)"
    )
    # int8 by default: 2.5x faster on a cache miss than fp32; on one model it moves the served nDCG@10 by at most
    # 0.0042 (SYNTHETIC) and 0.0022 (CISI) (BENCHMARKS.md, "The request path on 2026-12-03"). RANK_QUERY_ENCODER=fp32
    # restores the original; train with the same variant (`--query-encoder`).
    query_encoder: EncoderVariant = EncoderVariant.INT8
    # A shallower student of MiniLM distilled on this catalog (`make student`): served only with the model whose
    # held-out served nDCG@10 it was gated on (training/student.py); /rerank documents stay the teacher's.
    query_encoder_dir: Path | None = Field(
        None, description="query encoder directory, e.g. a distilled student (default: encoder_dir's MiniLM)"
    )
    max_query_chars: int = Field(
        8192,
        ge=1,
        description="longest query or /rerank document text; MiniLM reads its first 256 word pieces, BM25 all",
    )
    max_top_k: int = Field(100, ge=1)
    max_candidates: int = Field(1000, ge=1)
    default_candidates: int = Field(100, ge=1)
    max_documents: int = Field(1000, ge=1)
    warmup_queries: int = Field(20, ge=0)
    # A cold query cache makes every popular query miss once: on the load test's mix, 22% of /rank requests ran
    # MiniLM instead of 10%, and the client p99 doubled (BENCHMARKS.md, "make loadtest on a warm query cache").
    warm_queries_file: Path | None = Field(
        None,
        description="query log (one query per line, or JSONL with `text`), most popular first: embedded into the "
        "query cache before the service turns ready and before a reload switches",
    )
    batching: bool = True
    max_batch_candidates: int = Field(4096, ge=1, description="flush a micro-batch at this many candidates")
    max_batch: int | None = Field(None, ge=1, description="deprecated: use max_batch_candidates")
    encode_thread: bool = Field(True, description="encode cache misses on a thread of their own (with batching)")
    max_encode_batch: int = Field(
        32, ge=1, description="most requests whose texts an encode thread embeds at once (int8 queries: 1)"
    )
    max_delay_us: int = Field(0, ge=0, le=100_000, description="or when the oldest request has waited this long")
    # How long a thread may hold the GIL while another waits for it (sys.setswitchinterval). Python's default,
    # 5000 us, lets the event loop parse requests for that long while the ranking or encode thread waits to hand a
    # result back; 500 cut make loadtest's never-seen p99 from 29-32 to 19-28 ms (BENCHMARKS.md, "The GIL's switch
    # interval under the load test").
    switch_interval_us: int = Field(500, ge=50, le=100_000, description="the interpreter's GIL switch interval")
    max_queue: int = Field(512, ge=1, description="requests waiting beyond this get 429")
    max_body_bytes: int = Field(1_000_000, ge=1_000, description="larger request bodies get 413")
    shadow_max_queue: int = Field(
        4, ge=0, description="shadow a request only while fewer requests than this wait for the ranking thread"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token for /admin/*; admin API off when unset")
    # The impression and feedback log (service/events.py): off without a directory; impressions of a sampled share
    # of /rank requests, every /feedback. Written off the response path; a full queue drops (and counts) records.
    log_dir: Path | None = Field(None, description="directory of the impression and feedback log (unset: off)")
    log_sample: float = Field(0.0, ge=0.0, le=1.0, description="share of /rank requests whose impressions are logged")
    log_queue: int = Field(10_000, ge=1, description="records waiting for the log's writer; beyond, dropped")
    # Randomised swaps of two adjacent results for a small share of /rank answers, marked in their impressions: the
    # interventions that let click-trained models estimate position bias (Agarwal et al. 2019). Changes what users see.
    explore: float = Field(0.0, ge=0.0, le=0.2, description="share of /rank answers with two adjacent results swapped")
    log_segment_records: int = Field(10_000, ge=1, description="records per log segment file")
    log_segment_seconds: float = Field(60.0, gt=0.0, description="a log segment is closed at this age")
    # The relevance workbench (service/workbench.py): None serves it only on a loopback host, where nobody else can
    # reach it; elsewhere it is off unless set true (grades are then taken with the admin token only).
    ui: bool | None = Field(None, description="serve the relevance workbench at /ui (default: on 127.0.0.1 only)")
    judgments_file: Path | None = Field(
        None, description="where the workbench appends grades (JSONL; new queries go to queries.jsonl beside it)"
    )
    api_keys: SecretStr | None = Field(
        None, description="comma-separated API keys (`id:key` or `key`) that /rank, /rerank and the rerank APIs want"
    )
    api_keys_file: Path | None = Field(None, description="a file of API keys, one per line, added to RANK_API_KEYS")
    # Per key id, as a token bucket: the average rate and the burst above it (service/auth.py, KeyQuotas).
    key_rate_limit: float | None = Field(
        None, gt=0.0, description="requests/s each API key id may make (unset: no quota; needs RANK_API_KEYS)"
    )
    key_rate_burst: int = Field(20, ge=1, description="requests an API key id may make at once above its rate")
    min_ndcg: float = Field(0.0, ge=0.0, le=1.0, description="quality gate: a model card below this is refused")
    require_beats_baseline: bool = Field(
        True, description="quality gate: refuse a model below the best zero-shot search"
    )
    drain_seconds: float = Field(1.0, ge=0.0, description="on SIGTERM, answer 503 this long before closing")
    shutdown_grace_seconds: float = Field(10.0, gt=0.0, description="then wait this long for in-flight requests")
    log_level: str = "info"
    log_format: LogFormat = Field("text", description="text lines, or json: one JSON object per event (logs.py)")
    access_log: bool | None = Field(None, description="one line per request; unset: on with json logs, off with text")
    ray_targets_dir: Path | None = Field(
        None, description="on Ray Serve: each replica writes its metrics address here as a Prometheus file_sd target"
    )

    @model_validator(mode="after")
    def _renamed(self) -> Settings:
        """`max_batch` (RANK_MAX_BATCH, --max-batch) still works, with a warning: it was renamed because it counts
        candidates, where Triton's `max_batch_size` counts requests."""
        if self.max_batch is not None:
            explicit = "max_batch_candidates" in self.model_fields_set
            message = (
                "RANK_MAX_BATCH (--max-batch, max_batch) is deprecated: use RANK_MAX_BATCH_CANDIDATES"
                " (--max-batch-candidates); it counts candidates, not requests"
                + ("; both are set, so the old one is ignored" if explicit else "")
            )
            # The warning is for code that builds Settings (stacklevel 4: past pydantic's two __init__ frames, at the
            # caller); the log line is for operators, who never see a DeprecationWarning.
            warnings.warn(message, DeprecationWarning, stacklevel=4)
            log.warning(message)
            if not explicit:
                self.max_batch_candidates = self.max_batch
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        token = self.admin_token.get_secret_value() if self.admin_token else None
        if token is not None and (len(token) < 16 or token.lower() in UNSAFE_TOKENS):
            raise ValueError("admin_token must be at least 16 characters and not a well-known default")
        keys = self.parsed_api_keys()  # a short key or a repeated id stops the start, with the entry named
        if self.key_rate_limit is not None and keys is None:
            raise ValueError("key_rate_limit is a quota per API key, but no API key is set: set RANK_API_KEYS too")
        if self.default_candidates > self.max_candidates:
            raise ValueError(
                f"default_candidates ({self.default_candidates}) exceeds max_candidates ({self.max_candidates})"
            )
        return self

    @property
    def ui_on(self) -> bool:
        """Whether the workbench is served: as set, else only on a loopback host."""
        return self.ui if self.ui is not None else self.host in LOOPBACK_HOSTS

    def parsed_api_keys(self) -> ApiKeys | None:
        """The data plane's keys (service/auth.py), or None: no key is asked for."""
        listed = self.api_keys.get_secret_value() if self.api_keys else None
        return ApiKeys.parse(listed, self.api_keys_file)


class SettingsError(ValueError):
    """A bad setting, in one sentence that names it (its RANK_* variable too)."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the RANK_* variables, with `overrides` over them; a bad value raises SettingsError, never
    pydantic's multi-line report, so that every command can print it as one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(map(str, first["loc"]))
        where = f"setting {name} (RANK_{name.upper()})" if name else "settings"
        raise SettingsError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
