"""Service settings, from `RANK_*` environment variables (or the CLI, which sets the same fields)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Device(StrEnum):
    AUTO = "auto"  # CUDA when onnxruntime-gpu and a GPU are present, else CPU
    CPU = "cpu"
    CUDA = "cuda"  # required: start-up fails without it unless allow_cpu_fallback


class Settings(BaseSettings):
    """Every knob of the service. Read once at start-up; nothing reads the environment elsewhere."""

    model_config = SettingsConfigDict(env_prefix="RANK_", extra="forbid")

    bundle_dir: Path = Path("artifacts/bundle")
    model_dir: Path = Path("artifacts")
    encoder_dir: Path = Path("artifacts/encoders/minilm")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: Device = Device.AUTO
    allow_cpu_fallback: bool = True
    ort_threads: int = Field(1, ge=1, le=64)
    query_cache_size: int = Field(10_000, ge=0)
    max_query_chars: int = Field(2048, ge=1)
    max_top_k: int = Field(100, ge=1)
    max_candidates: int = Field(1000, ge=1)
    default_candidates: int = Field(100, ge=1)
    max_documents: int = Field(1000, ge=1)
    warmup_queries: int = Field(20, ge=0)
    batching: bool = True
    max_batch: int = Field(4096, ge=1, description="flush a micro-batch at this many candidates")
    max_delay_us: int = Field(100, ge=0, le=100_000, description="or when the oldest request has waited this long")
    max_queue: int = Field(512, ge=1, description="requests waiting beyond this get 429")
    log_level: str = "info"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_candidates > self.max_candidates:
            raise ValueError(
                f"default_candidates ({self.default_candidates}) exceeds max_candidates ({self.max_candidates})"
            )
        return self
