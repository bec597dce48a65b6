"""Missing modalities are first-class: an item with any non-empty subset of text, image and attributes trains,
exports, indexes and serves, with a mask that leaves what it lacks out of the model (never a zero vector pretending
to be a picture). Unit tests in model space prove that an all-ones mask is exactly the unmasked arithmetic (the
SYNTHETIC model and its table stay as they were) and that a masked token changes nothing; the pipeline tests run
four tiny catalogs made from the synthetic one by dropping modalities."""

from __future__ import annotations

import copy
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from index.data.records import DataError, Item
from index.data.verdict import schema_from_items
from index.offline.featurize import featurize
from index.offline.ingest import IngestConfig, ingest
from index.runtime.bundle import Bundle
from index.runtime.features import text_only_features
from model.fusion import FusionConfig, FusionRanker
from model.retrieval import RetrievalConfig, TwoTowerRetriever
from model.schema import ATTRIBUTES, IMAGE, TEXT
from service.app import create_app
from training.export import load_checkpoint, served_dataset
from training.synthetic import SyntheticConfig, write_dataset
from training.train import FeatureTensors, score_lists

from .conftest import TinyPipeline, build_tiny_pipeline, serving_settings

# -- model space ---------------------------------------------------------------------------------------------------


def _unmasked_score(
    model: FusionRanker,
    query: torch.Tensor,
    cand_kv: torch.Tensor,
    cand_text: torch.Tensor,
    retrieval_score: torch.Tensor,
    evidence: torch.Tensor,
    query_index: torch.Tensor,
) -> torch.Tensor:
    """FusionRanker.score without masks (its arithmetic written out): the reference an all-ones mask must equal."""
    h, dh = model.cfg.heads, model.cfg.dim // model.cfg.heads
    q_tok = model.query_proj(query)
    q_heads = model.query_heads(q_tok)[query_index].unflatten(-1, (h, dh))
    keys = cand_kv[:, 0].unflatten(-1, (h, dh))
    values = cand_kv[:, 1].unflatten(-1, (h, dh))
    logits = torch.einsum("mhd,mthd->mht", q_heads, keys) / math.sqrt(dh)
    attn = torch.softmax(logits, dim=-1)
    fused = model.attn_out(torch.einsum("mht,mthd->mhd", attn, values).flatten(1))
    q_cand = q_tok[query_index]
    per_token = (q_cand.unsqueeze(1) * cand_kv[:, 1]).flatten(1)
    cosine = (F.normalize(query, dim=-1)[query_index] * F.normalize(cand_text, dim=-1)).sum(-1, keepdim=True)
    interactions = [cosine, retrieval_score.unsqueeze(-1), evidence, logits.flatten(1)]
    features = torch.cat([fused, fused * q_cand, per_token, *interactions], dim=-1)
    return model.prior_weight * evidence[:, 0] + model.head(features).squeeze(-1)


@dataclass
class _Inputs:
    query: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    attrs: torch.Tensor
    retrieval: torch.Tensor
    evidence: torch.Tensor
    owner: torch.Tensor


def _ranker_and_inputs(seed: int = 0, m: int = 24) -> tuple[FusionRanker, _Inputs]:
    torch.manual_seed(seed)
    model = FusionRanker(FusionConfig(text_dim=12, image_dim=10, attr_dim=7, dim=16, heads=4, hidden=32))
    torch.nn.init.normal_(model.head[-1].weight)  # as if trained: the residual starts at zero, which hides too much
    inputs = _Inputs(
        query=torch.randn(3, 12),
        text=torch.randn(m, 12),
        image=torch.randn(m, 10),
        attrs=torch.randn(m, 7),
        retrieval=torch.randn(m),
        evidence=torch.rand(m, 2),
        owner=torch.arange(m) % 3,
    )
    return model, inputs


def test_an_all_ones_mask_is_exactly_the_unmasked_ranker_forward_and_backward() -> None:
    """Bit for bit, scores and gradients (in training mode, with dropout): a catalog with every modality for every
    item trains the same model as before masks existed."""
    model, x = _ranker_and_inputs()
    reference = copy.deepcopy(model)
    ones = torch.ones(len(x.text), 3)
    model.train(), reference.train()

    torch.manual_seed(11)  # the same dropout draws for both: masking draws no random numbers
    masked = model.score(
        x.query, model.encode_candidates(x.text, x.image, x.attrs), x.text, ones, x.retrieval, x.evidence, x.owner
    )
    torch.manual_seed(11)
    kv = reference.encode_candidates(x.text, x.image, x.attrs)
    plain = _unmasked_score(reference, x.query, kv, x.text, x.retrieval, x.evidence, x.owner)
    assert torch.equal(masked, plain)
    masked.square().sum().backward()
    plain.square().sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert a.grad is not None and b.grad is not None and torch.equal(a.grad, b.grad), name


def test_a_masked_token_is_left_out_of_the_softmax_and_of_every_feature() -> None:
    """Whatever a masked token's keys, values (or, for text, the candidate text) are, the score is the same: it has
    no attention weight and its per-token features are zero."""
    model, x = _ranker_and_inputs(seed=1)
    model.eval()
    kv = model.encode_candidates(x.text, x.image, x.attrs)
    generator = torch.Generator().manual_seed(5)
    for missing in ([IMAGE], [TEXT], [ATTRIBUTES], [IMAGE, ATTRIBUTES], [IMAGE, TEXT]):
        mask = torch.ones(len(x.text), 3)
        mask[::2, missing] = 0.0  # every other candidate lacks them
        with torch.inference_mode():
            before = model.score(x.query, kv, x.text, mask, x.retrieval, x.evidence, x.owner)
            scrambled = kv.clone()
            scrambled[::2, :, missing] = torch.randn(scrambled[::2, :, missing].shape, generator=generator) * 10
            text = x.text.clone()
            if TEXT in missing:
                text[::2] = torch.randn(text[::2].shape, generator=generator)
            after = model.score(x.query, scrambled, text, mask, x.retrieval, x.evidence, x.owner)
        assert torch.allclose(before, after, atol=1e-6), missing
        assert torch.isfinite(before).all()


def test_masking_a_token_is_removing_it_from_the_attention() -> None:
    """The attention over the present tokens of a masked candidate is the softmax over those tokens alone."""
    model, x = _ranker_and_inputs(seed=2, m=4)
    model.eval()
    mask = torch.tensor([[0.0, 1.0, 1.0]] * 4)
    with torch.inference_mode():
        kv = model.encode_candidates(x.text, x.image, x.attrs)
        h, dh = model.cfg.heads, model.cfg.dim // model.cfg.heads
        q_heads = model.query_heads(model.query_proj(x.query))[x.owner].unflatten(-1, (h, dh))
        logits = torch.einsum("mhd,mthd->mht", q_heads, kv[:, 0].unflatten(-1, (h, dh))) / math.sqrt(dh)
        masked = torch.softmax(logits.masked_fill(mask.unsqueeze(1) <= 0, float("-inf")), dim=-1)
        removed = torch.softmax(logits[..., 1:], dim=-1)
    assert torch.equal(masked[..., 0], torch.zeros_like(masked[..., 0]))
    assert torch.allclose(masked[..., 1:], removed, atol=1e-7)


def test_the_item_tower_reads_only_the_modalities_an_item_has() -> None:
    torch.manual_seed(3)
    tower = TwoTowerRetriever(RetrievalConfig(text_dim=12, image_dim=10, attr_dim=7, dim=8, hidden=16)).eval()
    text, image, attrs = torch.randn(6, 12), torch.randn(6, 10), torch.randn(6, 7)
    with torch.inference_mode():
        plain = F.normalize(tower.item_tower(torch.cat([text, image, attrs], dim=-1)), dim=-1)  # before masks
        assert torch.equal(tower.encode_items(text, image, attrs, torch.ones(6, 3)), plain)
        mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]] + [[1.0] * 3] * 2)

        def scrambled(values: torch.Tensor, modality: int) -> torch.Tensor:
            """Other values wherever the modality is masked."""
            return torch.where(mask[:, modality, None] > 0, values, torch.randn_like(values) * 5)

        before = tower.encode_items(text, image, attrs, mask)
        after = tower.encode_items(scrambled(text, TEXT), scrambled(image, IMAGE), scrambled(attrs, ATTRIBUTES), mask)
        assert torch.allclose(before, after, atol=1e-6)


class _StubEncoder:
    """A TextEncoder stand-in for featurisation tests: fixed-width unit vectors, deterministic per text."""

    name = "stub"
    dim = 384
    variant = "fp32"
    info: dict[str, object] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _items() -> list[Item]:
    vector = [0.1] * 8
    return [
        Item(id="all", title="pink gin", image_embedding=vector, attributes={"glass": "coupe"}),
        Item(id="no-image", title="a mojito", attributes={"glass": "highball"}),
        Item(id="no-text", title="", image_embedding=vector, attributes={"glass": "coupe"}),
        Item(id="no-attrs", title="negroni", text="bitter and red", image_embedding=vector),
        Item(id="unknown-attrs", title="spritz", attributes={"sku": "x-1"}),  # nothing the schema reads
        Item(id="image-only", title="", image_embedding=vector),
    ]


def test_featurize_masks_what_an_item_lacks_with_zero_rows() -> None:
    items = _items()
    schema = schema_from_items(items[:4], text_dim=384, image_dim=8, text_encoder="stub")
    features = featurize(items, schema, _StubEncoder())  # type: ignore[arg-type]
    expected = {  # image, text, attributes
        "all": [1, 1, 1],
        "no-image": [0, 1, 1],
        "no-text": [1, 0, 1],
        "no-attrs": [1, 1, 0],
        "unknown-attrs": [0, 1, 0],
        "image-only": [1, 0, 0],
    }
    assert features.mask.dtype == np.float32
    assert {item.id: row.tolist() for item, row in zip(items, features.mask, strict=True)} == expected
    assert not features.image[1].any() and not features.text[2].any() and not features.text[5].any()
    assert features.coverage() == {"image": 4, "text": 4, "attributes": 3}


def test_an_item_with_nothing_to_rank_on_is_an_error_naming_it() -> None:
    items = _items()
    schema = schema_from_items(items[:4], text_dim=384, image_dim=8, text_encoder="stub")
    with pytest.raises(DataError, match="item 'bare'.*no text, no image and no attribute"):
        featurize([*items, Item(id="bare", title="", attributes={"sku": "y"})], schema, _StubEncoder())  # type: ignore[arg-type]
    with pytest.raises(DataError, match="item 'unencoded': image 'a.jpg' is not encoded"):
        featurize([Item(id="unencoded", title="x", image="a.jpg")], schema, _StubEncoder())  # type: ignore[arg-type]


def test_a_plain_string_document_is_text_with_image_and_attributes_masked() -> None:
    schema = schema_from_items(_items()[:4], text_dim=384, image_dim=8, text_encoder="stub")
    docs = text_only_features(_StubEncoder().encode(["a", "b"]), schema)
    assert docs.mask.tolist() == [[0.0, 1.0, 0.0]] * 2 and not docs.image.any()


def test_a_schema_without_attribute_fields_keeps_a_placeholder_column() -> None:
    ids = [Item(id=str(i), title="x", attributes={"sku": f"s{i}"}) for i in range(70)]  # id-like: not a field
    schema = schema_from_items(ids, 384, 1, "stub")
    assert not schema.fields and schema.attr_dim == 1 and schema.image_dim == 1
    encoded = schema.encode_attributes([{"sku": "s1"}, {}])
    assert encoded.shape == (2, 1) and not encoded.any() and not schema.attributes_present(encoded).any()


# -- the pipeline, on catalogs that lack modalities ----------------------------------------------------------------

Record = dict[str, Any]


def _no_images(record: Record, rng: np.random.Generator) -> Record:
    return {k: v for k, v in record.items() if k != "image_embedding"}


def _no_attributes(record: Record, rng: np.random.Generator) -> Record:
    return {**record, "attributes": {}}


def _images_only(record: Record, rng: np.random.Generator) -> Record:
    return {**record, "title": "", "attributes": {}}


def _mixed(record: Record, rng: np.random.Generator) -> Record:
    """Each modality dropped for about a third of the items, never all three for one item."""
    keep = rng.random(3) >= 0.35
    if not keep.any():
        keep[TEXT] = True
    out = {**record, "attributes": record["attributes"] if keep[ATTRIBUTES] else {}}
    if not keep[TEXT]:
        out["title"] = ""
    if not keep[IMAGE]:
        del out["image_embedding"]
    return out


VARIANTS: dict[str, Callable[[Record, np.random.Generator], Record]] = {
    "no_images": _no_images,
    "no_attributes": _no_attributes,
    "images_only": _images_only,
    "mixed": _mixed,
}


def _expected_mask(record: Record) -> list[float]:
    # every synthetic item lists a price, so a non-empty attribute map always holds a field the schema reads
    has = ("image_embedding" in record, bool(record["title"].strip()), bool(record["attributes"]))
    return [float(h) for h in has]


@dataclass(frozen=True)
class Variant:
    name: str
    pipeline: TinyPipeline
    records: list[Record]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> Variant:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    data = root / "data"
    write_dataset(data, SyntheticConfig(seed=5, items=300, queries=80))
    rng = np.random.default_rng(17)
    lines = (data / "items.jsonl").read_text().splitlines()
    records = [VARIANTS[name](json.loads(line), rng) for line in lines]
    (data / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pipeline = build_tiny_pipeline(data, root, encoder_dir, epochs=4, patience=4, retrieval_epochs=4)
    return Variant(name, pipeline, records)


@pytest.fixture(scope="module")
def client(variant: Variant) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(variant.pipeline))) as c:
        yield c


def test_the_bundle_holds_each_items_mask(variant: Variant) -> None:
    bundle = Bundle.load(variant.pipeline.bundle)
    expected = np.array([_expected_mask(r) for r in variant.records], dtype=np.float32)
    np.testing.assert_array_equal(bundle.mask, expected)
    assert not bundle.image[expected[:, IMAGE] == 0].any() and not bundle.text[expected[:, TEXT] == 0].any()
    if variant.name == "no_images":
        assert bundle.schema.image_dim == 1  # a placeholder column: no catalog item has an image
    if variant.name in ("no_attributes", "images_only"):
        assert bundle.schema.attr_dim == 1 and not bundle.schema.fields
    card = json.loads((variant.pipeline.model / "model_card.json").read_text())
    assert card["parity"]["top10_identical"] == card["parity"]["queries"]
    assert card["dataset"]["modalities"] == dict(
        zip(("image", "text", "attributes"), expected.sum(0).astype(int).tolist())
    )


def test_ingest_writes_the_bundle_make_index_builds(variant: Variant, tmp_path: Path) -> None:
    p = variant.pipeline
    report = ingest(
        IngestConfig(
            data=p.data, model_dir=p.model, text_encoder_dir=p.encoder, image_encoder_dir=None, out=tmp_path / "b"
        )
    )
    assert report.items_indexed == len(variant.records) and report.images_encoded == 0
    built, ingested = (json.loads((b / "manifest.json").read_text()) for b in (p.bundle, tmp_path / "b"))
    assert ingested["files"] == built["files"]


def test_rank_and_rerank_serve(variant: Variant, client: TestClient) -> None:
    ranked = client.post("/rank", json={"query": "a pink gin cocktail in a coupe", "top_k": 5})
    assert ranked.status_code == 200, ranked.text
    results = ranked.json()["results"]
    assert len(results) == 5 and all(math.isfinite(r["score"]) for r in results)
    documents = ["a pink gin cocktail with mint", {"id": results[0]["id"]}, {"text": "a blue drink"}]
    reranked = client.post("/rerank", json={"query": "pink gin", "documents": documents, "return_documents": True})
    assert reranked.status_code == 200, reranked.text
    body = reranked.json()["results"]
    assert sorted(r["index"] for r in body) == [0, 1, 2] and all(0 < r["relevance_score"] < 1 for r in body)


def test_served_ranking_equals_offline_evaluation(variant: Variant, client: TestClient) -> None:
    """The service gathers the same masks the model was evaluated with."""
    checkpoint = load_checkpoint(variant.pipeline.model / "checkpoint.pt")
    dataset = served_dataset(checkpoint)
    test = dataset.splits["test"]
    offline = score_lists(checkpoint.ranker, FeatureTensors.of(dataset, torch.device("cpu")), test)
    k = variant.pipeline.config.num_candidates
    for q in range(3):
        expected = [dataset.items[i].id for i in test.candidates[q][np.argsort(-offline[q], kind="stable")]]
        served = client.post("/rank", json={"query": test.query_texts[q], "top_k": k, "num_candidates": k}).json()
        assert [x["id"] for x in served["results"]] == expected
