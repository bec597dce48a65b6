"""Loading an engine: execution-provider choice, the quality gate, and `load_engine`, which loads, checks and warms
the artifacts (at start-up and for every hot swap) or says in one sentence what is wrong with them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import onnxruntime as ort

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel, ModelCard
from index.runtime.faiss_index import gpu_available, set_search_threads
from index.runtime.files import ArtifactError
from index.runtime.ort_session import CPU, CUDA
from index.runtime.text_encoder import TextEncoder
from service.engine import RankingEngine
from service.metrics import Metrics
from service.settings import Device, Settings

log = logging.getLogger("service")


def resolve_providers(settings: Settings) -> list[str]:
    """Execution providers for the requested device; a CUDA request that cannot be met fails unless fallback is on."""
    if settings.device is Device.CPU:
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if settings.device is Device.CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError("device=cuda was asked for, but onnxruntime has no CUDA provider (install the gpu extra)")
    return [CPU]


def check_quality_gate(card: ModelCard, min_ndcg: float, require_beats_baseline: bool) -> None:
    """Refuse a model whose recorded test metrics fall below the gate or below the text-cosine baseline."""
    test = card.raw.get("metrics", {}).get("test", {})
    fusion = test.get("fusion", {}).get("ndcg@10")
    if fusion is None:
        raise ArtifactError(f"model {card.version}: the model card records no test nDCG@10 for the quality gate")
    if fusion < min_ndcg:
        raise ArtifactError(f"model {card.version}: test nDCG@10 {fusion} is below the gate min_ndcg={min_ndcg}")
    baseline = test.get("text_cosine", {}).get("ndcg@10")
    if require_beats_baseline and baseline is not None and fusion < baseline:
        raise ArtifactError(f"model {card.version}: test nDCG@10 {fusion} is below the text-cosine baseline {baseline}")


def load_engine(
    settings: Settings, metrics: Metrics, *, model_dir: Path | None = None, bundle_dir: Path | None = None
) -> RankingEngine:
    """Load bundle, model and encoder; verify checksums, canary parity, the quality gate and that they belong
    together; then warm the request path. Raises ArtifactError (or another ValueError) saying what is wrong."""
    started = time.perf_counter()
    providers = resolve_providers(settings)
    model = ExportedModel(model_dir or settings.model_dir, providers=providers, threads=settings.ort_threads)
    if settings.device is Device.CUDA and model.providers[0] != CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError(f"device=cuda was asked for, but the ranker runs on {model.providers[0]}")
    canary_diff = model.check_canaries()
    check_quality_gate(model.card, settings.min_ndcg, settings.require_beats_baseline)
    set_search_threads(settings.faiss_threads)
    use_gpu = settings.device is not Device.CPU and gpu_available()
    bundle = Bundle.load(bundle_dir or settings.bundle_dir, use_gpu=use_gpu)
    encoder = TextEncoder(
        settings.encoder_dir,
        cache_size=settings.query_cache_size,
        providers=providers,
        variant=settings.query_encoder.value,
    )
    if encoder.name != model.card.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the model's {model.card.schema.text_encoder}")
    engine = RankingEngine(bundle, model, encoder, settings, metrics)
    engine.warm(settings.warmup_queries)
    log.info(
        "loaded in %.1fs: model %s (canary diff %.1e), bundle %s (%d items, %s index on %s), ranker on %s",
        time.perf_counter() - started,
        model.version,
        canary_diff,
        bundle.version,
        bundle.size,
        bundle.manifest["index"]["params"]["kind"],
        bundle.retriever.device,
        model.providers[0],
    )
    return engine
