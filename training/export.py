"""Export the trained fusion ranker to ONNX, prove it scores like PyTorch, and write the model card.

Two graphs (see `index.ranker_runtime`): the candidate encoder, run at index time, and the ranker, run per request.
Parity is checked on the validation lists through the same path the service takes (encoder graph over the
catalog, then the ranker graph over gathered rows); the command fails when the scores differ by more than
`PARITY_TOLERANCE` or any query's top-10 order differs.
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

from index.featurize import CandidateFeatures
from index.files import read_json, sha256_file, write_json
from index.onnx_export import torch_to_onnx
from index.ranker_runtime import CANARY_FILE, CANDIDATE_ENCODER_FILE, MODEL_CARD_FILE, RANKER_FILE, OnnxRanker
from index.text_encoder import TextEncoder
from model.fusion import FusionConfig, FusionRanker
from model.schema import FeatureSchema
from training.dataset import RankingLists, load_dataset
from training.metrics import NDCG_CONVENTION
from training.train import FeatureTensors, TrainConfig, score_lists

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
OPSET = 18


class ParityError(RuntimeError):
    """The exported model does not score like the PyTorch model."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top10_identical: int
    queries: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE and self.top10_identical == self.queries


class _CandidateEncoder(nn.Module):
    def __init__(self, model: FusionRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor, image: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        return self.model.encode_candidates(text, image, attrs)


class _Scorer(nn.Module):
    def __init__(self, model: FusionRanker) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, query: torch.Tensor, cand_kv: torch.Tensor, cand_text: torch.Tensor, query_index: torch.Tensor
    ) -> torch.Tensor:
        return self.model.score(query, cand_kv, cand_text, query_index)


def load_checkpoint(path: Path) -> tuple[FusionRanker, FeatureSchema, dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; run `make train` first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = FusionRanker(FusionConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), FeatureSchema.from_dict(checkpoint["schema"]), checkpoint


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names: list[str],
    dynamic: dict,
    path: Path,
    metadata: dict[str, str],
) -> None:
    torch_to_onnx(
        module, args, path, input_names=names, output_names=["out"], dynamic_shapes=dynamic, opset_version=OPSET
    )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: FusionRanker, out_dir: Path, metadata: dict[str, str]) -> None:
    cfg = model.cfg
    m, b = 7, 2
    candidates = torch.export.Dim("candidates", min=1)
    queries = torch.export.Dim("queries", min=1)
    text, image, attrs = torch.randn(m, cfg.text_dim), torch.randn(m, cfg.image_dim), torch.randn(m, cfg.attr_dim)
    _export(
        _CandidateEncoder(model).eval(),
        (text, image, attrs),
        ["text", "image", "attrs"],
        {"text": {0: candidates}, "image": {0: candidates}, "attrs": {0: candidates}},
        out_dir / CANDIDATE_ENCODER_FILE,
        metadata,
    )
    with torch.inference_mode():
        cand_kv = model.encode_candidates(text, image, attrs)
    query_index = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    _export(
        _Scorer(model).eval(),
        (torch.randn(b, cfg.text_dim), cand_kv, text, query_index),
        ["query", "cand_kv", "cand_text", "query_index"],
        {
            "query": {0: queries},
            "cand_kv": {0: candidates},
            "cand_text": {0: candidates},
            "query_index": {0: candidates},
        },
        out_dir / RANKER_FILE,
        metadata,
    )


def onnx_scores(ranker: OnnxRanker, cand_kv: np.ndarray, text: np.ndarray, lists: RankingLists) -> np.ndarray:
    """(Q, K) scores through ONNX Runtime, one query per call as the service scores a request."""
    out = np.zeros(lists.candidates.shape, dtype=np.float32)
    for q, rows in enumerate(lists.candidates):
        index = np.zeros(len(rows), dtype=np.int64)
        out[q] = ranker.score(lists.query_emb[q : q + 1], cand_kv[rows], text[rows], index)
    return out


def top10_identical(a: np.ndarray, b: np.ndarray) -> int:
    return sum(
        np.array_equal(np.argsort(-x, kind="stable")[:10], np.argsort(-y, kind="stable")[:10]) for x, y in zip(a, b)
    )


def save_canaries(
    path: Path, features: CandidateFeatures, lists: RankingLists, reference: np.ndarray, queries: int = 16, k: int = 20
) -> None:
    """Store a few validation queries with their candidates' raw features and PyTorch scores, so that loading or
    reloading the model can prove its ONNX files still score like the model that was evaluated."""
    cand = lists.candidates[:queries, :k]  # (C, k)
    rows = cand.reshape(-1)
    np.savez(
        path,
        query=lists.query_emb[:queries],
        text=features.text[rows],
        image=features.image[rows],
        attrs=features.attrs[rows],
        query_index=np.repeat(np.arange(len(cand)), k).astype(np.int64),
        expected=reference[:queries, :k].reshape(-1),
    )


def weights_version(model: FusionRanker) -> str:
    """A version from the weights alone: re-exporting the same checkpoint keeps the version, so bundles whose
    candidate projections came from these weights stay valid."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def run_export(out_dir: Path) -> int:
    model, schema, checkpoint = load_checkpoint(out_dir / "checkpoint.pt")
    train_cfg = TrainConfig.from_dict(checkpoint["train_config"])
    metadata = {
        "feature_schema": json.dumps(schema.to_dict()),
        "model_config": json.dumps(checkpoint["model_config"]),
        "train_config": json.dumps(checkpoint["train_config"]),
    }
    export_onnx(model, out_dir, metadata)
    files = {name: sha256_file(out_dir / name) for name in (CANDIDATE_ENCODER_FILE, RANKER_FILE)}
    version = weights_version(model)
    metrics = read_json(out_dir / "metrics.json")
    card: dict[str, Any] = {
        "name": "fusion-ranker",
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": {"name": metrics["dataset"], "synthetic": metrics["synthetic"]},
        "feature_schema": schema.to_dict(),
        "model_config": checkpoint["model_config"],
        "training": {**checkpoint["train_config"], **metrics["training"]},
        "metrics": {"convention": NDCG_CONVENTION, "test": metrics["test"]},
        "files": files,
        "onnx": {
            "opset": OPSET,
            "ranker_inputs": ["query", "cand_kv", "cand_text", "query_index"],
            "candidate_encoder_inputs": ["text", "image", "attrs"],
        },
    }
    write_json(out_dir / MODEL_CARD_FILE, card)

    dataset = load_dataset(
        train_cfg.data_dir, TextEncoder(train_cfg.encoder_dir), num_candidates=train_cfg.num_candidates, schema=schema
    )
    val = dataset.splits["val"]
    reference = score_lists(model, FeatureTensors(dataset.features, torch.device("cpu")), val)
    save_canaries(out_dir / CANARY_FILE, dataset.features, val, reference)
    card["files"][CANARY_FILE] = sha256_file(out_dir / CANARY_FILE)
    write_json(out_dir / MODEL_CARD_FILE, card)
    ranker = OnnxRanker(out_dir)
    f = dataset.features
    exported = onnx_scores(ranker, ranker.encode_candidates(f.text, f.image, f.attrs), f.text, val)
    parity = Parity(float(np.abs(reference - exported).max()), top10_identical(reference, exported), len(val))
    card["parity"] = {**dataclasses.asdict(parity), "split": "val", "tolerance": PARITY_TOLERANCE}
    write_json(out_dir / MODEL_CARD_FILE, card)
    print(
        f"ONNX parity on {parity.queries} validation queries: max |PyTorch - ONNX Runtime| = "
        f"{parity.max_abs_diff:.2e}, identical top-10 on {parity.top10_identical}/{parity.queries}"
    )
    if not parity.ok:
        raise ParityError(
            f"exported model does not match PyTorch (tolerance {PARITY_TOLERANCE:g}); see {out_dir / MODEL_CARD_FILE}"
        )
    log.info("exported model %s to %s", version, out_dir)
    return 0
