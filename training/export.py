"""Export the trained fusion ranker to ONNX, prove it scores like PyTorch, and write the model card.

Three graphs (see `index.runtime.exported_model`): the candidate encoder (ranker keys/values and retrieval vector per
item), run at index time; the query tower and the ranker, run per request. Parity is checked on the validation
queries through the same path the service takes (candidate encoder over the catalog, query tower, exact search,
then the ranker over gathered rows, with the catalog's modality masks), and once more with the same lists as `/rerank`
plain-string documents (image and attributes masked), so that the masking is checked on every catalog; the command
fails when ranker scores or retrieval vectors differ by more than `PARITY_TOLERANCE` or any query's top-10 order
differs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from index.export.torch_to_onnx import torch_to_onnx
from index.runtime.exported_model import (
    CANARY_FILE,
    CANDIDATE_ENCODER_FILE,
    CANDIDATE_ENCODER_INPUTS,
    MODEL_CARD_FILE,
    MODEL_FILES,
    QUERY_TOWER_FILE,
    RANKER_FILE,
    RANKER_INPUTS,
    CandidateEncoding,
    ExportedModel,
    retrieval_scores,
)
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index
from index.runtime.features import CandidateFeatures, text_only_features
from index.runtime.files import read_json, sha256_file, write_json
from index.runtime.hybrid import RRF_K
from index.runtime.lexical import NO_ANALYSIS
from model.fusion import FusionConfig, FusionRanker
from model.retrieval import RetrievalConfig, TwoTowerRetriever
from model.schema import MODALITIES, FeatureSchema
from training.dataset import Dataset, RankingLists, dataset_encoders, load_dataset
from training.metrics import NDCG_CONVENTION
from training.retrieval import learned_space
from training.train import FeatureTensors, TrainConfig, score_lists

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
OPSET = 18


class ParityError(RuntimeError):
    """The exported model does not score like the PyTorch model."""


@dataclass(frozen=True)
class Parity:
    """How closely the ONNX graphs reproduce PyTorch on the validation queries."""

    max_abs_diff: float  # ranker scores
    top10_identical: int
    queries: int
    retrieval_max_abs_diff: float  # query and item vectors of the candidate generator
    candidates_identical: int  # queries whose candidate set is the same through ONNX as through PyTorch
    text_only_max_abs_diff: float  # ranker scores of the same lists as plain-string documents (tokens masked)

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff <= PARITY_TOLERANCE
            and self.retrieval_max_abs_diff <= PARITY_TOLERANCE
            and self.text_only_max_abs_diff <= PARITY_TOLERANCE
            and self.top10_identical == self.queries
        )


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint, loaded: the ranker, the retriever, the schema, and the raw dict (configs, metrics)."""

    ranker: FusionRanker
    retriever: TwoTowerRetriever
    schema: FeatureSchema
    raw: dict[str, Any]

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.raw["train_config"])

    @property
    def analysis(self) -> str:
        """BM25's lexical analysis in training (none in a checkpoint from before it was recorded)."""
        return str(self.raw["candidates"].get("analysis", NO_ANALYSIS))


class _CandidateEncoder(nn.Module):
    def __init__(self, model: FusionRanker, retriever: TwoTowerRetriever) -> None:
        super().__init__()
        self.model = model
        self.retriever = retriever

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, attrs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_candidates(text, image, attrs), self.retriever.encode_items(text, image, attrs, mask)


class _QueryTower(nn.Module):
    def __init__(self, retriever: TwoTowerRetriever) -> None:
        super().__init__()
        self.retriever = retriever

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return self.retriever.encode_queries(query)


class _Scorer(nn.Module):
    def __init__(self, model: FusionRanker) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        query: torch.Tensor,
        cand_kv: torch.Tensor,
        cand_text: torch.Tensor,
        cand_mask: torch.Tensor,
        retrieval_score: torch.Tensor,
        evidence: torch.Tensor,
        query_index: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.score(query, cand_kv, cand_text, cand_mask, retrieval_score, evidence, query_index)


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; run `make train` first")
    raw = torch.load(path, map_location="cpu", weights_only=False)
    if "retriever" not in raw or "candidates" not in raw:
        raise ValueError(f"checkpoint {path} was made by an older version: run `make train`")
    ranker = FusionRanker(FusionConfig(**raw["model_config"]))
    ranker.load_state_dict(raw["model"])
    retriever = TwoTowerRetriever(RetrievalConfig(**raw["retriever_config"]))
    retriever.load_state_dict(raw["retriever"])
    return Checkpoint(ranker.eval(), retriever.eval(), FeatureSchema.from_dict(raw["schema"]), raw)


def served_dataset(checkpoint: Checkpoint, data_dir: Path | None = None, encoder_dir: Path | None = None) -> Dataset:
    """The checkpoint's dataset with the candidate lists the model serves: its sources (its retriever's space among
    them), its prior and its BM25 analysis."""
    cfg = checkpoint.train_config
    items, queries = dataset_encoders(encoder_dir or cfg.encoder_dir, cfg.query_encoder)
    dataset = load_dataset(
        data_dir or cfg.data_dir,
        items,
        query_encoder=queries,
        num_candidates=cfg.num_candidates,
        schema=checkpoint.schema,
        holdout=cfg.holdout,
        analysis=checkpoint.analysis,
        feedback=cfg.feedback_options(),
    )
    served = dataclasses.replace(
        dataset.candidates,
        space=learned_space(checkpoint.retriever, dataset.features, torch.device("cpu")),
        sources=tuple(checkpoint.raw["candidates"]["sources"]),
        prior=str(checkpoint.raw["candidates"]["prior"]),
    )
    return dataset.with_candidates(served, cfg.num_candidates)


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names: list[str],
    dynamic: dict,
    path: Path,
    metadata: dict[str, str],
    outputs: tuple[str, ...] = ("out",),
) -> None:
    torch_to_onnx(
        module, args, path, input_names=names, output_names=list(outputs), dynamic_shapes=dynamic, opset_version=OPSET
    )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: FusionRanker, retriever: TwoTowerRetriever, out_dir: Path, metadata: dict[str, str]) -> None:
    cfg = model.cfg
    m, b = 7, 2
    candidates = torch.export.Dim("candidates", min=1)
    queries = torch.export.Dim("queries", min=1)
    text, image, attrs = torch.randn(m, cfg.text_dim), torch.randn(m, cfg.image_dim), torch.randn(m, cfg.attr_dim)
    # Example masks with a token missing here and there (values do not shape the graph; parity checks the masking).
    mask = torch.ones(m, len(MODALITIES))
    mask[1, 0] = mask[2, 2] = mask[4, 0] = mask[4, 2] = 0.0
    _export(
        _QueryTower(retriever).eval(),
        (torch.randn(b, cfg.text_dim),),
        ["query"],
        {"query": {0: queries}},
        out_dir / QUERY_TOWER_FILE,
        metadata,
    )
    _export(
        _CandidateEncoder(model, retriever).eval(),
        (text, image, attrs, mask),
        list(CANDIDATE_ENCODER_INPUTS),
        {name: {0: candidates} for name in CANDIDATE_ENCODER_INPUTS},
        out_dir / CANDIDATE_ENCODER_FILE,
        metadata,
        outputs=("cand_kv", "retrieval"),
    )
    with torch.inference_mode():
        cand_kv = model.encode_candidates(text, image, attrs)  # (m, 2, 3, d)
    query_index = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    _export(
        _Scorer(model).eval(),
        (torch.randn(b, cfg.text_dim), cand_kv, text, mask, torch.randn(m), torch.rand(m, 2), query_index),
        list(RANKER_INPUTS),
        {
            "query": {0: queries},
            "cand_kv": {0: candidates},
            "cand_text": {0: candidates},
            "cand_mask": {0: candidates},
            "retrieval_score": {0: candidates},
            "evidence": {0: candidates},
            "query_index": {0: candidates},
        },
        out_dir / RANKER_FILE,
        metadata,
    )


def onnx_scores(
    ranker: ExportedModel, encoded: CandidateEncoding, features: CandidateFeatures, lists: RankingLists
) -> np.ndarray:
    """(Q, K) scores through ONNX Runtime alone, one query per call as the service scores a request: the catalog as
    the candidate encoder gave it, the query tower, then the ranker over the gathered rows and their masks."""
    out = np.zeros(lists.candidates.shape, dtype=np.float32)
    for q, rows in enumerate(lists.candidates):
        query = lists.query_emb[q : q + 1]
        index = np.zeros(len(rows), dtype=np.int64)
        similarity = retrieval_scores(ranker.project_queries(query), encoded.retrieval[rows], index)
        kv, text, mask = encoded.kv[rows], features.text[rows], features.mask[rows]
        out[q] = ranker.score(query, kv, text, mask, similarity, lists.evidence[q], index)
    return out


def top10_identical(reference: np.ndarray, exported: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> int:
    """Lists (rows) whose top 10 by the exported scores is the reference's top 10, where items whose reference
    scores lie within `tolerance` of each other count as tied: two candidates the reference scores 3e-6 apart may
    trade places through float rounding, which is no disagreement of the two models (one SYNTHETIC export did that
    once in 200 lists). Position by position, the reference score of the exported ranking's item must equal the
    reference's own top score at that position, within the tolerance."""
    same = 0
    for ref, exp in zip(reference, exported):
        ours = np.argsort(-ref, kind="stable")[:10]
        theirs = np.argsort(-exp, kind="stable")[:10]
        same += bool(np.allclose(ref[theirs], ref[ours], rtol=0.0, atol=tolerance))
    return same


@torch.inference_mode()
def save_canaries(
    path: Path,
    checkpoint: Checkpoint,
    features: CandidateFeatures,
    lists: RankingLists,
    reference: np.ndarray,
    queries: int = 16,
    k: int = 20,
) -> None:
    """Store a few validation queries with their candidates' raw features, PyTorch scores and retrieval vectors,
    so that loading or reloading the model can prove its ONNX files still behave like the model that was evaluated
    (`ExportedModel.check_canaries` runs them through all three graphs)."""
    cand = lists.candidates[:queries, :k]  # (C, k)
    rows = cand.reshape(-1)
    retriever = checkpoint.retriever
    query = lists.query_emb[:queries]
    items = {"text": features.text[rows], "image": features.image[rows], "attrs": features.attrs[rows]}
    items["mask"] = features.mask[rows]
    np.savez(
        path,
        query=query,
        **items,
        query_index=np.repeat(np.arange(len(cand)), k).astype(np.int64),
        evidence=lists.evidence[:queries, :k].reshape(-1, 2),
        expected=reference[:queries, :k].reshape(-1),
        expected_query_vectors=retriever.encode_queries(torch.from_numpy(query)).numpy(),
        expected_item_vectors=retriever.encode_items(*(torch.from_numpy(a) for a in items.values())).numpy(),
    )


def weights_version(*models: nn.Module) -> str:
    """A version from the weights alone: re-exporting the same checkpoint keeps the version, so bundles whose
    candidate projections and index came from these weights stay valid."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@torch.inference_mode()
def retrieval_parity(
    checkpoint: Checkpoint,
    ranker: ExportedModel,
    encoded: CandidateEncoding,
    features: CandidateFeatures,
    lists: RankingLists,
) -> tuple[float, int]:
    """(max abs difference of query and item vectors, queries whose top-K candidate set is identical) between the
    PyTorch towers and the ONNX graphs, on the catalog and the given queries."""
    tensors = [torch.from_numpy(a) for a in (features.text, features.image, features.attrs, features.mask)]
    torch_items = checkpoint.retriever.encode_items(*tensors).numpy()
    torch_queries = checkpoint.retriever.encode_queries(torch.from_numpy(lists.query_emb)).numpy()
    onnx_queries = ranker.project_queries(lists.query_emb)
    diff = max(float(np.abs(torch_items - encoded.retrieval).max()), float(np.abs(torch_queries - onnx_queries).max()))
    exact = IndexParams(IndexKind.EXACT)
    search = FaissIndex(build_index(encoded.retrieval, exact), exact)
    _, via_onnx = search.search(onnx_queries, lists.candidates.shape[1])
    identical = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(via_onnx, lists.candidates))
    return diff, identical


@torch.inference_mode()
def text_only_parity(
    checkpoint: Checkpoint, ranker: ExportedModel, features: CandidateFeatures, lists: RankingLists
) -> float:
    """Max abs difference of ranker scores between PyTorch and ONNX Runtime for the same lists given as `/rerank`
    plain-string documents (`text_only_features`: image and attributes masked), so that the masked path is checked
    even on a catalog where every item has every modality."""
    blind = text_only_features(features.text, checkpoint.schema)
    space = learned_space(checkpoint.retriever, blind, torch.device("cpu"))
    reference = score_lists(checkpoint.ranker, FeatureTensors(blind, torch.device("cpu")), lists.rescored(space))
    encoded = ranker.encode_candidates(blind.text, blind.image, blind.attrs, blind.mask)
    exported = onnx_scores(ranker, encoded, blind, lists)
    return float(np.abs(reference - exported).max())


def run_export(out_dir: Path) -> int:
    checkpoint = load_checkpoint(out_dir / "checkpoint.pt")
    model, schema, raw = checkpoint.ranker, checkpoint.schema, checkpoint.raw
    metadata = {
        "feature_schema": json.dumps(schema.to_dict()),
        "model_config": json.dumps(raw["model_config"]),
        "retriever_config": json.dumps(raw["retriever_config"]),
        "train_config": json.dumps(raw["train_config"]),
    }
    export_onnx(model, checkpoint.retriever, out_dir, metadata)
    files = {name: sha256_file(out_dir / name) for name in MODEL_FILES}
    version = weights_version(model, checkpoint.retriever)
    metrics = read_json(out_dir / "metrics.json")
    card: dict[str, Any] = {
        "name": "fusion-ranker",
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": {
            "name": metrics["dataset"],
            "synthetic": metrics["synthetic"],
            "catalog": metrics.get("catalog", {}),
            "trained_on": metrics.get("trained_on", "judgments"),
            "feedback": metrics.get("feedback"),
        },
        "feature_schema": schema.to_dict(),
        "model_config": raw["model_config"],
        "retriever_config": raw["retriever_config"],
        "candidates": {**raw["candidates"], "fusion": "rrf", "rrf_k": RRF_K},
        "training": {**raw["train_config"], **metrics["training"]},
        "metrics": {"convention": NDCG_CONVENTION, "test": metrics["test"], "candidates": metrics["candidates"]},
        "files": files,
        "onnx": {
            "opset": OPSET,
            "ranker_inputs": list(RANKER_INPUTS),
            "candidate_encoder_inputs": list(CANDIDATE_ENCODER_INPUTS),
            "candidate_encoder_outputs": ["cand_kv", "retrieval"],
            "query_tower_inputs": ["query"],
        },
    }
    write_json(out_dir / MODEL_CARD_FILE, card)

    dataset = served_dataset(checkpoint)
    card["dataset"]["modalities"] = dataset.features.coverage()  # items with each modality, of len(dataset.items)
    val = dataset.splits["val"]
    reference = score_lists(model, FeatureTensors.of(dataset, torch.device("cpu")), val)
    save_canaries(out_dir / CANARY_FILE, checkpoint, dataset.features, val, reference)
    card["files"][CANARY_FILE] = sha256_file(out_dir / CANARY_FILE)
    write_json(out_dir / MODEL_CARD_FILE, card)
    ranker = ExportedModel(out_dir)
    f = dataset.features
    encoded = ranker.encode_candidates(f.text, f.image, f.attrs, f.mask)
    exported = onnx_scores(ranker, encoded, f, val)
    retrieval_diff, candidates_identical = retrieval_parity(checkpoint, ranker, encoded, f, val)
    parity = Parity(
        max_abs_diff=float(np.abs(reference - exported).max()),
        top10_identical=top10_identical(reference, exported),
        queries=len(val),
        retrieval_max_abs_diff=retrieval_diff,
        candidates_identical=candidates_identical,
        text_only_max_abs_diff=text_only_parity(checkpoint, ranker, f, val),
    )
    card["parity"] = {**dataclasses.asdict(parity), "split": "val", "tolerance": PARITY_TOLERANCE}
    write_json(out_dir / MODEL_CARD_FILE, card)
    print(
        f"ONNX parity on {parity.queries} validation queries: max |PyTorch - ONNX Runtime| = "
        f"{parity.max_abs_diff:.2e}, identical top-10 on {parity.top10_identical}/{parity.queries}; "
        f"retrieval vectors max diff {parity.retrieval_max_abs_diff:.2e}, "
        f"identical candidate sets on {parity.candidates_identical}/{parity.queries}; "
        f"as plain-string documents (image, attributes masked) max diff {parity.text_only_max_abs_diff:.2e}"
    )
    if not parity.ok:
        raise ParityError(
            f"exported model does not match PyTorch (tolerance {PARITY_TOLERANCE:g}); see {out_dir / MODEL_CARD_FILE}"
        )
    log.info("exported model %s to %s", version, out_dir)
    return 0
