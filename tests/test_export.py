"""ONNX export: parity with PyTorch (ranker and candidate generator), the model card's contents, dynamic axes, and
the failing paths."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from index.runtime.exported_model import RANKER_INPUTS, ExportedModel
from index.runtime.files import ArtifactError, sha256_file
from index.runtime.hybrid import PRIORS
from training import export as export_module
from training.export import ParityError, run_export, top10_identical
from training.zero_shot import SOURCE_OPTIONS, ZERO_SHOT_SYSTEMS

from .conftest import TinyPipeline


def test_model_card_holds_schema_settings_metrics_parity_and_checksums(tiny: TinyPipeline) -> None:
    card = json.loads((tiny.model / "model_card.json").read_text())
    systems = ("fusion", "text_cosine", "lambdamart", "two_tower", "prior", *ZERO_SHOT_SYSTEMS)
    for system in systems:
        assert set(card["metrics"]["test"][system]) >= {"ndcg@10", "ndcg@10_e2e", "compliance@1", "mrr"}
    assert card["parity"]["max_abs_diff"] <= 1e-4 and card["parity"]["retrieval_max_abs_diff"] <= 1e-4
    assert card["parity"]["text_only_max_abs_diff"] <= 1e-4  # the masked path (plain-string documents)
    assert card["onnx"]["ranker_inputs"] == list(RANKER_INPUTS) and "cand_mask" in RANKER_INPUTS
    assert card["onnx"]["candidate_encoder_inputs"] == ["text", "image", "attrs", "mask"]
    assert card["dataset"]["modalities"] == {"image": 400, "text": 400, "attributes": 400}
    assert card["parity"]["top10_identical"] == card["parity"]["queries"] > 0
    assert set(card["files"]) == {"candidate_encoder.onnx", "query_tower.onnx", "ranker.onnx", "canaries.npz"}
    assert card["retriever_config"]["dim"] == 32
    options = {"+".join(sources) for sources in SOURCE_OPTIONS}
    candidates = card["metrics"]["candidates"]
    assert set(candidates["test_recall"]) == set(candidates["selection_recall"]) == options
    assert "+".join(card["candidates"]["sources"]) in options and card["candidates"]["prior"] in PRIORS
    assert card["feature_schema"]["text_dim"] == 384 and card["feature_schema"]["image_dim"] == 512
    assert card["training"]["loss"] == "hybrid"
    assert card["dataset"]["synthetic"] is True
    for name, digest in card["files"].items():
        assert sha256_file(tiny.model / name) == digest


def test_onnx_metadata_carries_the_resolved_config(tiny: TinyPipeline) -> None:
    props = {p.key: p.value for p in onnx.load(str(tiny.model / "ranker.onnx")).metadata_props}
    assert json.loads(props["train_config"])["loss"] == "hybrid"
    assert "categorical" in json.loads(props["feature_schema"])


def test_dynamic_axes_and_batching_across_queries(tiny: TinyPipeline) -> None:
    ranker = ExportedModel(tiny.model)
    rng = np.random.default_rng(0)
    schema = ranker.card.schema
    n = 300
    mask = rng.integers(0, 2, size=(n, 3)).astype(np.float32)
    mask[:, 1] = 1.0  # every candidate keeps its text token; the others come and go
    encoded = ranker.encode_candidates(
        rng.normal(size=(n, schema.text_dim)).astype(np.float32),
        rng.normal(size=(n, schema.image_dim)).astype(np.float32),
        schema.encode_attributes([{}] * n),
        mask,
    )
    kv = encoded.kv
    assert encoded.retrieval.shape == (n, 32)
    text = rng.normal(size=(n, schema.text_dim)).astype(np.float32)
    queries = rng.normal(size=(3, schema.text_dim)).astype(np.float32)
    assert ranker.project_queries(queries).shape == (3, 32)
    similarity = rng.normal(size=n).astype(np.float32)
    evidence = rng.random(size=(n, 2)).astype(np.float32)
    owner = np.repeat(np.arange(3), 100)
    together = ranker.score(queries, kv, text, mask, similarity, evidence, owner)
    alone = np.concatenate(
        [
            ranker.score(
                queries[q : q + 1],
                kv[owner == q],
                text[owner == q],
                mask[owner == q],
                similarity[owner == q],
                evidence[owner == q],
                owner[:100] * 0,
            )
            for q in range(3)
        ]
    )
    np.testing.assert_allclose(together, alone, atol=1e-5)
    one = ranker.score(queries[:1], kv[:1], text[:1], mask[:1], similarity[:1], evidence[:1], np.zeros(1, np.int64))
    assert one.shape == (1,) and np.isfinite(together).all()


def test_onnx_ranker_ignores_what_the_mask_hides(tiny: TinyPipeline) -> None:
    """Through ONNX Runtime, a masked token's keys and values change nothing: the exported graph masks as torch does."""
    ranker = ExportedModel(tiny.model)
    rng = np.random.default_rng(1)
    n, dim = 20, ranker.card.dim
    kv = rng.normal(size=(n, 2, 3, dim)).astype(np.float32)
    text = rng.normal(size=(n, ranker.card.schema.text_dim)).astype(np.float32)
    mask = np.tile(np.array([0, 1, 0], np.float32), (n, 1))  # a plain-string document: text only
    query = rng.normal(size=(1, ranker.card.schema.text_dim)).astype(np.float32)
    similarity, owner = rng.normal(size=n).astype(np.float32), np.zeros(n, np.int64)
    evidence = rng.random(size=(n, 2)).astype(np.float32)
    before = ranker.score(query, kv, text, mask, similarity, evidence, owner)
    kv[:, :, [0, 2]] = rng.normal(size=(n, 2, 2, dim)) * 10
    np.testing.assert_allclose(ranker.score(query, kv, text, mask, similarity, evidence, owner), before, atol=1e-6)


def test_export_fails_when_onnx_disagrees(tiny_copy: TinyPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module.onnx_scores
    monkeypatch.setattr(export_module, "onnx_scores", lambda *a: real(*a) + 1e-3)
    with pytest.raises(ParityError, match="does not match PyTorch"):
        run_export(tiny_copy.model)


def test_export_fails_when_the_candidate_generator_disagrees(
    tiny_copy: TinyPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "retrieval_parity", lambda *a: (1e-2, 0))
    with pytest.raises(ParityError, match="does not match PyTorch"):
        run_export(tiny_copy.model)


def test_canaries_catch_a_query_tower_that_changed(tiny_copy: TinyPipeline) -> None:
    path = tiny_copy.model / "canaries.npz"
    with np.load(path) as canary:
        arrays = dict(canary)
    arrays["expected_query_vectors"] = arrays["expected_query_vectors"] + 1e-2
    np.savez(path, **arrays)
    card_path = tiny_copy.model / "model_card.json"
    card = json.loads(card_path.read_text())
    card["files"]["canaries.npz"] = sha256_file(path)  # checksums agree; only the behaviour differs
    card_path.write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="canary query vectors differ"):
        ExportedModel(tiny_copy.model).check_canaries()


def test_top10_parity_allows_swaps_of_items_tied_within_the_tolerance() -> None:
    reference = np.array([[5.0, 4.0, 3.000001, 3.0, 1.0] + [0.0] * 10])
    swapped_tie = reference.copy()
    swapped_tie[0, 2], swapped_tie[0, 3] = 3.0, 3.000002  # float noise reorders two near-equal candidates
    swapped_real = reference.copy()
    swapped_real[0, 0], swapped_real[0, 1] = 4.0, 5.0  # a real disagreement
    assert top10_identical(reference, reference) == 1
    assert top10_identical(reference, swapped_tie) == 1
    assert top10_identical(reference, swapped_real) == 0
