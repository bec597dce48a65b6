"""The exported fusion ranker run by ONNX Runtime: its two graphs and its model card.

- `candidate_encoder.onnx`: (text, image, attrs) -> cand_kv, run once per item when a bundle is built;
- `ranker.onnx`: (query, cand_kv, cand_text, query_index) -> scores, run per request (or per micro-batch).

Loading checks every file against the checksums in `model_card.json` and refuses a mismatch with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.files import read_json, sha256_file
from index.runtime import make_session
from model.schema import FeatureSchema

CANDIDATE_ENCODER_FILE = "candidate_encoder.onnx"
RANKER_FILE = "ranker.onnx"
MODEL_CARD_FILE = "model_card.json"
CANARY_FILE = "canaries.npz"
CANARY_TOLERANCE = 1e-4


class ArtifactError(ValueError):
    """An artifact that is missing, corrupt or does not match its partner; the message says which and why."""


@dataclass(frozen=True)
class ModelCard:
    """What `model_card.json` says about an exported ranker."""

    version: str
    schema: FeatureSchema
    dim: int
    files: dict[str, str]
    raw: dict[str, Any]

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
                files=dict(data["files"]),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"model card {path} is malformed: missing or bad field {exc}") from None


def verify_files(directory: Path, expected: dict[str, str], what: str) -> None:
    """Raise ArtifactError unless every file exists and has the recorded sha256."""
    for name, digest in expected.items():
        path = directory / name
        if not path.exists():
            raise ArtifactError(f"{what}: file {path} is missing")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{what}: checksum mismatch for {path} (file changed or corrupt)")


class OnnxRanker:
    """The fusion ranker's two ONNX graphs, with the card they were exported with."""

    def __init__(self, model_dir: Path, *, providers: list[str] | None = None, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.card = ModelCard.load(model_dir)
        verify_files(model_dir, self.card.files, "model")
        self.session = make_session(model_dir / RANKER_FILE, providers=providers, threads=threads)
        self.encoder_session = make_session(model_dir / CANDIDATE_ENCODER_FILE, providers=providers, threads=threads)
        self.providers = list(self.session.get_providers())

    @property
    def version(self) -> str:
        return self.card.version

    def encode_candidates(
        self, text: np.ndarray, image: np.ndarray, attrs: np.ndarray, batch: int = 4096
    ) -> np.ndarray:
        """cand_kv (N, 2, 3, dim) for raw item features."""
        parts = [
            self.encoder_session.run(
                None, {"text": text[s : s + batch], "image": image[s : s + batch], "attrs": attrs[s : s + batch]}
            )[0]
            for s in range(0, len(text), batch)
        ]
        return np.concatenate(parts).astype(np.float32)

    def check_canaries(self) -> float:
        """Score the stored canary inputs and compare with the PyTorch scores recorded at export.

        Returns the max abs difference; raises ArtifactError above CANARY_TOLERANCE."""
        path = self.model_dir / CANARY_FILE
        if not path.exists():
            raise ArtifactError(f"model: {path} is missing; re-run `make export`")
        with np.load(path) as canary:
            kv = self.encode_candidates(canary["text"], canary["image"], canary["attrs"])
            scores = self.score(canary["query"], kv, canary["text"], canary["query_index"])
            diff = float(np.abs(scores - canary["expected"]).max())
        if not diff <= CANARY_TOLERANCE:
            raise ArtifactError(
                f"model: canary scores differ from the exported model's by {diff:.2e} (tolerance {CANARY_TOLERANCE:g})"
            )
        return diff

    def score(
        self, query: np.ndarray, cand_kv: np.ndarray, cand_text: np.ndarray, query_index: np.ndarray
    ) -> np.ndarray:
        """Scores (M,) for M candidates of B queries; query_index[m] in [0, B) says whose candidate m is."""
        feeds = {"query": query, "cand_kv": cand_kv, "cand_text": cand_text, "query_index": query_index}
        return self.session.run(None, feeds)[0]
