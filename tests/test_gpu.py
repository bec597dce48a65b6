"""CUDA paths: chosen by themselves where a GPU is present (these tests skip without one), and a GPU that was
required but is missing is a start-up error rather than a silent CPU fallback (this runs everywhere)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel, ModelCard
from index.runtime.faiss_gpu import gpu_available
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index
from index.runtime.files import ArtifactError
from index.runtime.ort_session import CUDA
from index.runtime.scoring_graph import ScoringGraph
from service.loading import load_engine
from service.metrics import Metrics

from .conftest import TinyPipeline, serving_settings

needs_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
needs_ort_cuda = pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="onnxruntime-gpu not installed")
needs_faiss_gpu = pytest.mark.skipif(not gpu_available(), reason="no FAISS GPU build, no GPU, or no working GPU search")


def test_required_gpu_that_is_missing_fails_start_up(tiny: TinyPipeline) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("a CUDA provider is present here")
    with pytest.raises(ArtifactError, match="device=cuda was asked for"):
        load_engine(serving_settings(tiny, device="cuda", allow_cpu_fallback=False), Metrics())


def test_cpu_fallback_when_allowed(tiny: TinyPipeline) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("a CUDA provider is present here: nothing to fall back from")
    engine = load_engine(serving_settings(tiny, device="cuda", allow_cpu_fallback=True), Metrics())
    assert engine.model.providers[0] == "CPUExecutionProvider"


@pytest.mark.gpu
@needs_ort_cuda
def test_device_cuda_serves_on_the_cuda_provider_when_present(tiny: TinyPipeline) -> None:
    # Fallback allowed, so only this assertion tells a silent CPU fallback on a CUDA machine from the real thing.
    engine = load_engine(serving_settings(tiny, device="cuda", allow_cpu_fallback=True), Metrics())
    assert engine.model.providers[0] == CUDA, engine.model.providers


@pytest.mark.gpu
@needs_torch_cuda
def test_training_picks_cuda_with_bf16_by_itself(tiny: TinyPipeline) -> None:
    from index.runtime.text_encoder import TextEncoder
    from training.dataset import load_dataset
    from training.retrieval import train_retriever
    from training.train import train

    dataset = load_dataset(tiny.data, TextEncoder(tiny.encoder), num_candidates=tiny.config.num_candidates)
    cfg = dataclasses.replace(tiny.config, epochs=2, retrieval_epochs=2)
    assert next(train_retriever(cfg, dataset).model.parameters()).device.type == "cuda"
    assert train(cfg, dataset).device.startswith("cuda")


@pytest.mark.gpu
@needs_ort_cuda
def test_ranker_runs_on_the_cuda_provider_and_matches_cpu(tiny: TinyPipeline) -> None:
    gpu, cpu = ExportedModel(tiny.model), ExportedModel(tiny.model, providers=["CPUExecutionProvider"])
    assert gpu.providers[0] == CUDA
    # TF32 off: with it, scores moved by 2e-4 on an H200, past the export's parity tolerance.
    assert gpu.session.get_provider_options()[CUDA]["use_tf32"] == "0"
    assert gpu.check_canaries() <= 1e-4 and cpu.check_canaries() <= 1e-4


@pytest.mark.gpu
@needs_ort_cuda
def test_the_scoring_graph_keeps_the_bundle_on_the_gpu_and_scores_as_on_the_cpu(tiny: TinyPipeline) -> None:
    """The bundle's tables are bound on the device once; a run sends row ids and BM25 and scores as the CPU does."""
    bundle = Bundle.load(tiny.bundle)
    gpu = ScoringGraph(bundle, ExportedModel(tiny.model))
    cpu = ScoringGraph(bundle, ExportedModel(tiny.model, providers=["CPUExecutionProvider"]))
    assert gpu.device == "cuda" and cpu.device == "cpu"
    prior = ModelCard.load(tiny.model).prior
    assert gpu.verify(bundle, prior) <= 1e-5
    rng = np.random.default_rng(0)
    query = rng.standard_normal((4, bundle.schema.text_dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    vectors = cpu.model.project_queries(query)  # type: ignore[union-attr]
    rows = rng.integers(0, bundle.size, (4, 40))
    valid, bm25 = np.ones((4, 40), bool), rng.random((4, 40)).astype(np.float32)
    on_gpu, on_cpu = (graph.run(prior, query, vectors, rows, valid, bm25) for graph in (gpu, cpu))
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-5)


@pytest.mark.gpu
@needs_faiss_gpu
def test_exact_search_on_gpu_matches_cpu() -> None:
    vectors = np.random.default_rng(0).normal(size=(5000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = IndexParams(IndexKind.EXACT)
    gpu, cpu = (
        FaissIndex(build_index(vectors, params), params, use_gpu=True),
        FaissIndex(build_index(vectors, params), params),
    )
    assert gpu.device == "cuda"
    assert np.array_equal(gpu.search(vectors[:10], 50)[1], cpu.search(vectors[:10], 50)[1])
