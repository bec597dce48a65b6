"""The bundle format: contents, and refusal of damaged or mismatched artifacts with the reason."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.data.records import Item
from index.offline.bundle_writer import bundle_analysis, write_bundle
from index.offline.featurize import features_from_arrays
from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel, ModelCard
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index, set_search_threads
from index.runtime.files import ArtifactError, sha256_file
from index.runtime.lexical import Analyzer, LexicalIndex
from model.schema import FeatureSchema

from .conftest import TinyPipeline


def test_manifest_describes_the_bundle(tiny: TinyPipeline, tmp_path: Path) -> None:
    bundle = Bundle.load(tiny.bundle)
    m = bundle.manifest
    assert m["items"] == bundle.size == 400
    assert m["index"]["params"]["kind"] == "exact" and m["index"]["recall@100"] == 1.0
    assert m["text_encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    files = {"text.npy", "image.npy", "attrs.npy", "mask.npy", "cand_kv.npy", "retrieval.npy"}
    lexical = {f"lexical/{name}" for name in LexicalIndex.build(["a"]).save(tmp_path)}  # what bm25s writes
    assert set(m["files"]) == files | {"items.jsonl", "index.faiss", "text.faiss"} | lexical
    assert m["lexical"]["library"] == "bm25s" and m["text_index"]["space"] == "text"
    assert m["text"] == {"encoded": 400, "truncated": 0, "max_tokens": 256}
    assert bundle.cand_kv.shape == (400, 2, 3, 32)
    # the SYNTHETIC catalog has every modality for every item
    assert bundle.mask.shape == (400, 3) and bundle.mask.dtype == np.float32 and (bundle.mask == 1).all()
    assert m["modalities"] == {"image": 400, "text": 400, "attributes": 400}
    card = ModelCard.load(tiny.model)
    assert m["index"]["space"] == "learned" and m["index"]["dim"] == card.retrieval_dim == bundle.retriever.dim == 32
    np.testing.assert_allclose(np.linalg.norm(bundle.text, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(bundle.retrieval, axis=1), 1.0, atol=1e-4)
    bundle.check_compatible(card)


def test_index_searches_the_retrieval_vectors(tiny: TinyPipeline) -> None:
    bundle = Bundle.load(tiny.bundle)
    scores, rows = bundle.retriever.search(bundle.retrieval[:3], 5)
    assert rows[:, 0].tolist() == [0, 1, 2]  # each item is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)


@pytest.mark.parametrize("old", [1, 2, 3])  # 3: the last format without text.faiss and lexical/
def test_bundle_of_an_older_format_is_refused(tiny_copy: TinyPipeline, old: int) -> None:
    path = tiny_copy.bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format"] = old
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"format {old}, this service reads 4"):
        Bundle.load(tiny_copy.bundle)


def test_a_mask_without_any_modality_for_an_item_is_refused(tiny_copy: TinyPipeline) -> None:
    """A candidate with every token masked has no attention to give; a bundle holding one is damaged."""
    mask = np.load(tiny_copy.bundle / "mask.npy")
    mask[7] = 0.0
    np.save(tiny_copy.bundle / "mask.npy", mask)
    path = tiny_copy.bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["mask.npy"] = sha256_file(tiny_copy.bundle / "mask.npy")  # checksums agree
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="at least one modality per item"):
        Bundle.load(tiny_copy.bundle)


def test_checksum_mismatch_is_refused(tiny_copy: TinyPipeline) -> None:
    path = tiny_copy.bundle / "cand_kv.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch for .*cand_kv.npy"):
        Bundle.load(tiny_copy.bundle)


def test_missing_faiss_file_is_refused(tiny_copy: TinyPipeline) -> None:
    (tiny_copy.bundle / "index.faiss").unlink()
    with pytest.raises(ArtifactError, match="index.faiss is missing"):
        Bundle.load(tiny_copy.bundle)


def test_schema_disagreement_names_the_field(tiny_copy: TinyPipeline) -> None:
    card_path = tiny_copy.model / "model_card.json"
    card = json.loads(card_path.read_text())
    card["feature_schema"]["image_dim"] = 768
    card_path.write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="image_dim: 768 != 512"):
        Bundle.load(tiny_copy.bundle).check_compatible(ModelCard.load(tiny_copy.model))


def test_bundle_of_another_model_is_refused(tiny_copy: TinyPipeline) -> None:
    card_path = tiny_copy.model / "model_card.json"
    card = json.loads(card_path.read_text())
    card["version"] = "000000000000"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="rebuild the bundle"):
        Bundle.load(tiny_copy.bundle).check_compatible(ModelCard.load(tiny_copy.model))


def test_truncated_onnx_is_refused(tiny_copy: TinyPipeline) -> None:
    path = tiny_copy.model / "ranker.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="checksum mismatch for .*ranker.onnx"):
        ExportedModel(tiny_copy.model)


def test_a_changed_bm25_file_is_refused(tiny_copy: TinyPipeline) -> None:
    path = tiny_copy.bundle / "lexical" / "vocab.index.json"
    path.write_text(path.read_text() + " ")  # still valid JSON; only the checksum can tell
    with pytest.raises(ArtifactError, match="checksum mismatch for .*vocab.index.json"):
        Bundle.load(tiny_copy.bundle)


def test_the_faiss_thread_cap_holds_on_the_thread_that_searches() -> None:
    """OpenMP keeps omp_set_num_threads per calling thread: a cap set where the service loads would not hold on the
    ranking thread, whose searches would then run one OpenMP thread per core."""
    params = IndexParams(IndexKind.EXACT)
    index = FaissIndex(build_index(np.eye(8, dtype=np.float32), params), params)
    cap = (os.cpu_count() or 1) + 1  # never what a thread that was not capped gets
    seen: list[int] = []

    def search() -> None:
        index.search(np.eye(8, dtype=np.float32)[:2], 3)
        seen.append(faiss.omp_get_max_threads())

    set_search_threads(cap)
    try:
        worker = threading.Thread(target=search)
        worker.start()
        worker.join()
    finally:
        set_search_threads(1)
    assert seen == [cap]


def _zero_shot_bundle(out: Path, analysis: str | None) -> Path:
    """A four-item zero-shot bundle from given vectors: the bundle format without an encoder or a model."""
    texts = ["The library of the university", "Libraries and catalogues", "Gin and tonic", "Public libraries"]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(texts), 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [Item(id=f"i{i}", title=t, text_embedding=v.tolist()) for i, (t, v) in enumerate(zip(texts, vectors))]
    schema = FeatureSchema(text_dim=4, image_dim=1, categorical=())
    features = features_from_arrays(items, schema, vectors, np.zeros((len(items), 1), np.float32))
    write_bundle(out, items, features, None, IndexParams(IndexKind.EXACT), schema=schema, analysis=analysis)
    return out


def _card(analysis: str) -> ModelCard:
    schema = FeatureSchema(text_dim=4, image_dim=1, categorical=())
    return ModelCard("m1", schema, 8, 8, {}, ("dense", "bm25"), "rrf", {}, analysis=analysis)


def test_the_manifest_records_the_lexical_analysis(tmp_path: Path) -> None:
    plain = Bundle.load(_zero_shot_bundle(tmp_path / "plain", None))
    assert plain.manifest["lexical"]["analysis"] == "none" and plain.lexical.analyzer == Analyzer("none")
    assert plain.manifest["lexical"]["tokenizer"] == "lowercase runs of letters and digits"
    assert "analysis" not in json.loads((plain.path / "lexical" / "stats.json").read_text())
    stemmed = Bundle.load(_zero_shot_bundle(tmp_path / "english", "english"))
    assert stemmed.manifest["lexical"]["analysis"] == "english" and stemmed.lexical.analyzer == Analyzer("english")
    assert "Snowball english" in stemmed.manifest["lexical"]["tokenizer"]
    assert set(stemmed.lexical.search("library", 10)[1].tolist()) == {0, 1, 3}
    assert plain.version != stemmed.version  # another index, other files


def test_a_bundle_from_before_analyses_loads_as_none(tmp_path: Path) -> None:
    path = _zero_shot_bundle(tmp_path / "bundle", None)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["lexical"]["analysis"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle.load(path).lexical.analyzer == Analyzer("none")


def test_a_manifest_that_disagrees_with_the_bm25_index_is_refused(tmp_path: Path) -> None:
    path = _zero_shot_bundle(tmp_path / "bundle", "english")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["lexical"]["analysis"] = "none"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest lexical.analysis is 'none', .* built with 'english'"):
        Bundle.load(path)


def test_a_model_trained_with_another_analysis_is_refused(tmp_path: Path) -> None:
    bundle = Bundle.load(_zero_shot_bundle(tmp_path / "bundle", "english"))
    bundle.check_analysis(_card("english"))
    with pytest.raises(ArtifactError, match="disagree on lexical analysis: .* 'english', .* trained with 'none'"):
        bundle.check_analysis(_card("none"))


def test_a_model_card_from_before_analyses_says_none(tmp_path: Path) -> None:
    card = {
        "version": "m1",
        "feature_schema": FeatureSchema(text_dim=4, image_dim=1, categorical=()).to_dict(),
        "model_config": {"dim": 8},
        "retriever_config": {"dim": 8},
        "files": {},
        "candidates": {"sources": ["dense", "bm25"], "prior": "rrf"},
    }
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    assert ModelCard.load(tmp_path).analysis == "none"
    card["candidates"]["analysis"] = "english"
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    assert ModelCard.load(tmp_path).analysis == "english"


def test_a_bundle_takes_the_models_analysis_and_refuses_another() -> None:
    assert bundle_analysis(None, None) == Analyzer("none")  # zero-shot: none unless named
    assert bundle_analysis(None, "english") == Analyzer("english")
    assert bundle_analysis(_card("english"), None) == Analyzer("english")
    assert bundle_analysis(_card("english"), "english") == Analyzer("english")
    with pytest.raises(ValueError, match="--analysis none is not model m1's lexical analysis english"):
        bundle_analysis(_card("english"), "none")
    with pytest.raises(ValueError, match="unknown lexical analysis"):
        bundle_analysis(None, "klingon")
