"""The exported model run by ONNX Runtime: its three graphs and its model card.

- `candidate_encoder.onnx`: (text, image, attrs, mask) -> (cand_kv, retrieval), run once per item when a bundle is
  built: the ranker's keys/values and the item's vector in the candidate generator's space; `mask` (N, 3) float32
  says which modalities (image, text, attributes) the item has, and a missing one adds nothing to its vector;
- `query_tower.onnx`: (query) -> the query's vector in that space, run per request before the FAISS search;
- `ranker.onnx`: (query, cand_kv, cand_text, cand_mask, retrieval_score, evidence, query_index) -> scores, run per
  request (or per micro-batch); `cand_mask` (M, 3) leaves each candidate's missing modalities out of the attention,
  `retrieval_score` is the inner product of the query's and the candidate's retrieval vectors, and `evidence` (M, 2)
  the zero-shot prior the score is a residual over and the BM25 score (`index.runtime.hybrid.ranker_evidence`).

The model card also says how candidates are generated for this model (`sources`, fused by RRF), which zero-shot
prior it was trained on (`prior`) and how BM25 analysed text (`analysis`, `index.runtime.lexical.Analyzer`): each
was chosen on the validation queries at training time, or given.

Loading checks every file against the checksums in `model_card.json`, and each graph's inputs against what this
code feeds it, and refuses a mismatch with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.runtime.files import ArtifactError, read_json, verify_files
from index.runtime.lexical import NO_ANALYSIS
from index.runtime.ort_session import make_session
from model.schema import FeatureSchema

CANDIDATE_ENCODER_FILE = "candidate_encoder.onnx"
QUERY_TOWER_FILE = "query_tower.onnx"
RANKER_FILE = "ranker.onnx"
MODEL_FILES = (CANDIDATE_ENCODER_FILE, QUERY_TOWER_FILE, RANKER_FILE)
CANDIDATE_ENCODER_INPUTS = ("text", "image", "attrs", "mask")
RANKER_INPUTS = ("query", "cand_kv", "cand_text", "cand_mask", "retrieval_score", "evidence", "query_index")
MODEL_CARD_FILE = "model_card.json"
CANARY_FILE = "canaries.npz"
CANARY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ModelCard:
    """What `model_card.json` says about an exported ranker."""

    version: str
    schema: FeatureSchema
    dim: int  # the ranker's token width (cand_kv's last axis)
    retrieval_dim: int  # the candidate generator's vector width (the FAISS index's)
    files: dict[str, str]
    sources: tuple[str, ...]  # the candidate generator's sources, fused by RRF (index.runtime.hybrid.SOURCES)
    prior: str  # the zero-shot prior the ranker's score is a residual over (index.runtime.hybrid.PRIORS)
    raw: dict[str, Any]
    query_encoder: str = "fp32"  # the MiniLM variant its training embedded queries with (fp32 before it was recorded)
    analysis: str = NO_ANALYSIS  # BM25's lexical analysis in its training (none before it was recorded)

    @classmethod
    def load(cls, model_dir: Path) -> ModelCard:
        path = model_dir / MODEL_CARD_FILE
        if not path.exists():
            raise ArtifactError(f"no model card at {path}; run `make export`")
        data = read_json(path)
        try:
            return cls(
                version=str(data["version"]),
                schema=FeatureSchema.from_dict(data["feature_schema"]),
                dim=int(data["model_config"]["dim"]),
                retrieval_dim=int(data["retriever_config"]["dim"]),
                files=dict(data["files"]),
                sources=tuple(data["candidates"]["sources"]),
                prior=str(data["candidates"]["prior"]),
                query_encoder=str(data.get("training", {}).get("query_encoder", "fp32")),
                analysis=str(data["candidates"].get("analysis", NO_ANALYSIS)),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"model card {path} is malformed: missing or bad field {exc}") from None


def retrieval_scores(query_vectors: np.ndarray, cand_retrieval: np.ndarray, query_index: np.ndarray) -> np.ndarray:
    """The ranker's `retrieval_score` input, (M,): each candidate's inner product with its query's retrieval vector
    (query_vectors (B, D), cand_retrieval (M, D), query_index (M,) in [0, B))."""
    return np.einsum("md,md->m", cand_retrieval, query_vectors[query_index]).astype(np.float32)


@dataclass(frozen=True)
class CandidateEncoding:
    """What the candidate encoder gives for N items."""

    kv: np.ndarray  # (N, 2, 3, dim) the ranker's keys and values
    retrieval: np.ndarray  # (N, retrieval_dim) unit vectors for the candidate generator


class ExportedModel:
    """The exported model's three ONNX graphs (candidate encoder, query tower, ranker), with their model card."""

    def __init__(self, model_dir: Path, *, providers: list[str] | None = None, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.card = ModelCard.load(model_dir)
        verify_files(model_dir, self.card.files, "model")
        self.session = make_session(model_dir / RANKER_FILE, providers=providers, threads=threads)
        self.encoder_session = make_session(model_dir / CANDIDATE_ENCODER_FILE, providers=providers, threads=threads)
        self.query_session = make_session(model_dir / QUERY_TOWER_FILE, providers=providers, threads=threads)
        self.providers = list(self.session.get_providers())
        for name, session, expected in (
            (RANKER_FILE, self.session, RANKER_INPUTS),
            (CANDIDATE_ENCODER_FILE, self.encoder_session, CANDIDATE_ENCODER_INPUTS),
        ):
            found = tuple(i.name for i in session.get_inputs())
            if found != expected:
                raise ArtifactError(
                    f"model: {name} takes inputs {found}, this code feeds {expected}: re-export with `make export`"
                )

    @property
    def version(self) -> str:
        return self.card.version

    def encode_candidates(
        self, text: np.ndarray, image: np.ndarray, attrs: np.ndarray, mask: np.ndarray, batch: int = 4096
    ) -> CandidateEncoding:
        """Ranker keys/values and retrieval vectors for raw item features and their (N, 3) modality mask."""
        arrays = dict(zip(CANDIDATE_ENCODER_INPUTS, (text, image, attrs, mask), strict=True))
        parts = [
            self.encoder_session.run(None, {name: a[s : s + batch] for name, a in arrays.items()})
            for s in range(0, len(text), batch)
        ]
        return CandidateEncoding(
            kv=np.concatenate([p[0] for p in parts]).astype(np.float32),
            retrieval=np.concatenate([p[1] for p in parts]).astype(np.float32),
        )

    def project_queries(self, query: np.ndarray) -> np.ndarray:
        """(B, text_dim) MiniLM query embeddings -> (B, retrieval_dim) vectors to search the index with."""
        return self.query_session.run(None, {"query": query})[0]

    def check_canaries(self) -> float:
        """Run the stored canary inputs through all three graphs and compare with the PyTorch outputs recorded at
        export (ranker scores, query and item retrieval vectors).

        Returns the max abs difference; raises ArtifactError above CANARY_TOLERANCE."""
        path = self.model_dir / CANARY_FILE
        if not path.exists():
            raise ArtifactError(f"model: {path} is missing; re-run `make export`")
        with np.load(path) as canary:
            if "mask" not in canary or "evidence" not in canary:
                raise ArtifactError(f"model: {path} was made by an older export; re-run `make export`")
            mask = canary["mask"]
            encoded = self.encode_candidates(canary["text"], canary["image"], canary["attrs"], mask)
            query_vectors = self.project_queries(canary["query"])
            owner = canary["query_index"]
            similarity = retrieval_scores(query_vectors, encoded.retrieval, owner)
            scores = self.score(
                canary["query"], encoded.kv, canary["text"], mask, similarity, canary["evidence"], owner
            )
            diffs = {
                "ranker scores": np.abs(scores - canary["expected"]).max(),
                "query vectors": np.abs(query_vectors - canary["expected_query_vectors"]).max(),
                "item vectors": np.abs(encoded.retrieval - canary["expected_item_vectors"]).max(),
            }
        worst = max(diffs, key=lambda name: diffs[name])
        diff = float(diffs[worst])
        if not diff <= CANARY_TOLERANCE:
            raise ArtifactError(
                f"model: canary {worst} differ from the exported model's by {diff:.2e} (tolerance {CANARY_TOLERANCE:g})"
            )
        return diff

    def score(
        self,
        query: np.ndarray,
        cand_kv: np.ndarray,
        cand_text: np.ndarray,
        cand_mask: np.ndarray,
        retrieval_score: np.ndarray,
        evidence: np.ndarray,
        query_index: np.ndarray,
    ) -> np.ndarray:
        """Scores (M,) for M candidates of B queries; query_index[m] in [0, B) says whose candidate m is,
        cand_mask (M, 3) which of its modalities (image, text, attributes) it has, evidence (M, 2) its prior and
        lexical score."""
        inputs = (
            query,
            cand_kv,
            cand_text,
            cand_mask,
            retrieval_score.astype(np.float32, copy=False),
            evidence.astype(np.float32, copy=False),
            query_index,
        )
        return self.session.run(None, dict(zip(RANKER_INPUTS, inputs, strict=True)))[0]
