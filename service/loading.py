"""Loading an engine: execution-provider choice, the quality gate, and `load_engine`, which loads, checks and warms
the artifacts (at start-up and for every hot swap) or says in one sentence what is wrong with them."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import onnxruntime as ort

from index.runtime.bundle import Bundle
from index.runtime.exported_model import MODEL_CARD_FILE, ExportedModel, ModelCard
from index.runtime.faiss_gpu import gpu_available
from index.runtime.faiss_index import set_search_threads
from index.runtime.files import ArtifactError
from index.runtime.ort_session import CPU, CUDA
from index.runtime.text_encoder import TextEncoder
from service.engine import RankingEngine
from service.metrics import Metrics
from service.settings import Device, Settings

log = logging.getLogger("service")

WARM_PROGRESS_EVERY = 1000  # query-log lines between progress lines while the query cache warms


def resolve_providers(settings: Settings) -> list[str]:
    """Execution providers for the requested device; a CUDA request that cannot be met fails unless fallback is on."""
    if settings.device is Device.CPU:
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if settings.device is Device.CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError("device=cuda was asked for, but onnxruntime has no CUDA provider (install the gpu extra)")
    return [CPU]


ZERO_SHOT_BASELINES = ("zero_shot_minilm", "zero_shot_bm25", "zero_shot_rrf")  # training.zero_shot's systems


def check_quality_gate(card: ModelCard, min_ndcg: float, require_beats_baseline: bool) -> None:
    """Refuse a model whose recorded test metrics fall below the gate, or, end to end over the whole catalog
    (nDCG@10 against every judged item, so what candidate generation missed counts), below the best zero-shot
    search on the same held-out queries: MiniLM cosine, BM25 or their RRF. Serving zero-shot needs no model."""
    test = card.raw.get("metrics", {}).get("test", {})
    fusion = test.get("fusion", {})
    if fusion.get("ndcg@10") is None or fusion.get("ndcg@10_e2e") is None:
        raise ArtifactError(f"model {card.version}: the model card records no test nDCG@10 for the quality gate")
    if fusion["ndcg@10"] < min_ndcg:
        raise ArtifactError(
            f"model {card.version}: test nDCG@10 {fusion['ndcg@10']} is below the gate min_ndcg={min_ndcg}"
        )
    if not require_beats_baseline:
        return
    baselines = {name: test[name]["ndcg@10_e2e"] for name in ZERO_SHOT_BASELINES if name in test}
    if not baselines:
        raise ArtifactError(
            f"model {card.version}: the model card records no zero-shot baselines to gate on (made by an older "
            "training): run `make train export`"
        )
    best = max(baselines, key=lambda name: baselines[name])
    if fusion["ndcg@10_e2e"] < baselines[best]:
        raise ArtifactError(
            f"model {card.version}: end-to-end test nDCG@10 {fusion['ndcg@10_e2e']} is below zero-shot {best} "
            f"{baselines[best]} on the same queries; serve zero-shot instead (`make index MODEL=none` and "
            "`make serve MODEL=none`), or set RANK_REQUIRE_BEATS_BASELINE=false"
        )


def read_query_log(path: Path) -> list[str]:
    """The queries of a query log: one per line, or a JSON object with a `text` per line (JSONL such as
    data/synthetic/queries.jsonl). Blank lines and objects without a string `text` are left out; OSError or
    UnicodeDecodeError when the file cannot be read as text."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError):
                text = None
            if isinstance(text, str):
                texts.append(text)
            continue
        texts.append(line)
    return texts


def warm_query_cache(engine: RankingEngine, path: Path) -> None:
    """Embed a query log's queries into the engine's query cache (RANK_WARM_QUERIES_FILE). A log that cannot be
    read is a warning, never a reason not to start: the cache then fills from traffic, as it would without one."""
    started = time.perf_counter()
    try:
        texts = read_query_log(path)
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("the query cache starts cold: cannot read RANK_WARM_QUERIES_FILE %s (%s)", path, exc)
        return
    limit = engine.settings.query_cache_size
    log.info("warming the query cache with up to %d of the %d queries of %s", limit, len(texts), path)
    embedded = invalid = 0
    for start in range(0, len(texts), WARM_PROGRESS_EVERY):
        if embedded >= limit:
            break
        added, bad = engine.prefill(texts[start : start + WARM_PROGRESS_EVERY], limit - embedded)
        embedded, invalid = embedded + added, invalid + bad
        if len(texts) > WARM_PROGRESS_EVERY:
            log.info(
                "query cache: %d queries embedded (%d of %d lines read)",
                embedded,
                min(start + WARM_PROGRESS_EVERY, len(texts)),
                len(texts),
            )
    log.info(
        "query cache warm: %d queries embedded in %.1fs; %d lines were not a valid query",
        embedded,
        time.perf_counter() - started,
        invalid,
    )


def check_student(encoder: TextEncoder, directory: Path, model_version: str) -> None:
    """Refuse a distilled student query encoder (training/student.py) that did not pass its quality gate, or passed
    it with another model than the one served: its embeddings are the teacher's only approximately, and only the
    gate says what that costs this model's rankings."""
    student = encoder.info.get("student")
    if student is None:
        return  # MiniLM itself
    gate = student.get("gate") or {}
    again = "serve MiniLM (unset RANK_QUERY_ENCODER_DIR) or distil one for this model with `make student`"
    if not gate.get("passed"):
        raise ArtifactError(
            f"query encoder {directory} is a distilled student that did not pass its quality gate "
            f"(held-out nDCG@10 {gate.get('student_ndcg')} against MiniLM's {gate.get('teacher_ndcg')}); {again}"
        )
    if gate.get("model_version") != model_version:
        raise ArtifactError(
            f"query encoder {directory} is a distilled student gated with model {gate.get('model_version')}, "
            f"but model {model_version} is served; {again}"
        )


def load_engine(
    settings: Settings,
    metrics: Metrics,
    *,
    model_dir: Path | None = None,
    bundle_dir: Path | None = None,
    gate_student: bool = True,
) -> RankingEngine:
    """Load bundle, model and encoder; verify checksums, canary parity, the scoring graph against the ranker
    graph, the quality gate and that they belong together; then warm the request path. Raises ArtifactError (or
    another ValueError) saying what is wrong.

    A model directory without a model card means zero-shot serving, which only a zero-shot bundle allows.
    `gate_student` False serves a distilled student query encoder whatever its gate said (the gate's own measure).
    """
    started = time.perf_counter()
    providers = resolve_providers(settings)
    directory = model_dir or settings.model_dir
    model, canary_diff = None, 0.0
    if (directory / MODEL_CARD_FILE).exists():
        model = ExportedModel(directory, providers=providers, threads=settings.ort_threads)
        if settings.device is Device.CUDA and model.providers[0] != CUDA and not settings.allow_cpu_fallback:
            raise ArtifactError(f"device=cuda was asked for, but the ranker runs on {model.providers[0]}")
        canary_diff = model.check_canaries()
        check_quality_gate(model.card, settings.min_ndcg, settings.require_beats_baseline)
    set_search_threads(settings.faiss_threads)
    use_gpu = settings.device is not Device.CPU and gpu_available()
    bundle = Bundle.load(bundle_dir or settings.bundle_dir, use_gpu=use_gpu)
    idle_threads = min(settings.encoder_idle_threads, os.cpu_count() or 1)
    query_dir = settings.query_encoder_dir or settings.encoder_dir
    encoder = TextEncoder(
        query_dir,
        cache_size=settings.query_cache_size,
        providers=providers,
        variant=settings.query_encoder.value,
        threads=settings.encoder_threads,
        idle_threads=idle_threads,
    )
    if encoder.name != bundle.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the bundle's {bundle.schema.text_encoder}")
    if gate_student:
        check_student(encoder, query_dir, model.version if model is not None else "zero-shot")
    if model is not None and model.card.query_encoder != encoder.variant:
        # Served either way (the embeddings agree to a cosine of 0.99), but not as it was trained and evaluated.
        trained_on = model.card.query_encoder
        log.warning(
            "model %s was trained on %s query embeddings and is served with %s ones; set RANK_QUERY_ENCODER=%s to "
            "serve it as its model card's figures were measured",
            model.version,
            trained_on,
            encoder.variant,
            trained_on,
        )
    # /rerank text documents are embedded as the catalog's texts are: fp32, batched (RankingEngine.document_encoder).
    documents = None
    if encoder.variant != "fp32" or query_dir != settings.encoder_dir:
        documents = TextEncoder(
            settings.encoder_dir, providers=providers, threads=settings.encoder_threads, idle_threads=idle_threads
        )
    engine = RankingEngine(bundle, model, encoder, settings, metrics, document_encoder=documents)
    graph_diff = engine.scoring_graph.verify(bundle, engine.prior)
    engine.warm(settings.warmup_queries)
    if settings.warm_queries_file is not None:
        warm_query_cache(engine, settings.warm_queries_file)
    log.info(
        "loaded in %.1fs: model %s (canary diff %.1e, scoring graph diff %.1e), bundle %s (%d items, %s index on "
        "%s), candidates %s, prior %s, ranker on %s, queries encoded by %s %s",
        time.perf_counter() - started,
        engine.model_version,
        canary_diff,
        graph_diff,
        bundle.version,
        bundle.size,
        bundle.dense.params.kind.value,
        bundle.dense.device,
        "+".join(engine.sources),
        engine.prior,
        engine.provider,
        "a distilled student" if "student" in encoder.info else "MiniLM",
        encoder.variant,
    )
    return engine
