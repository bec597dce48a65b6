"""The index bundle: everything the service needs about a catalog, in one directory with a manifest.

    bundle/
      manifest.json    versions, dimensions, item count, index type and parameters, recall, sha256 per file
      items.jsonl      id, title, attributes per row (row i of every matrix is item i)
      text.npy         (N, text_dim) unit-norm MiniLM embeddings of each item's text fields (zeros where it has none)
      image.npy        (N, image_dim) image embeddings (zeros where the item has no image; image_dim is 1, a
                       placeholder, for a catalog without images)
      attrs.npy        (N, attr_dim) encoded attributes
      mask.npy         (N, 3) float32 modality mask, 1 = present, in token order image, text, attributes: what the
                       candidate encoder and the ranker leave out of an item that lacks a modality
      cand_kv.npy      (N, 2, 3, dim) the ranker's query-independent keys/values, made by `model_version`
      retrieval.npy    (N, retrieval_dim) unit retrieval vectors, made by `model_version` (the ranker's
                       `retrieval_score` input is their inner product with the query's)
      index.faiss      the candidate generator: the model's retrieval vector per item, searched with the query tower's

A bundle is loaded only if every checksum matches, and served only with the model whose feature schema and
version it was built for (`check_compatible`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.runtime.exported_model import ModelCard
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams
from index.runtime.files import ArtifactError, read_json, verify_files
from model.schema import MODALITIES, FeatureSchema

BUNDLE_FORMAT = 3  # 2: the index holds the model's retrieval vectors, not title embeddings; 3: mask.npy
MANIFEST_FILE = "manifest.json"
ARRAYS = ("text", "image", "attrs", "mask", "cand_kv", "retrieval")


@dataclass
class Bundle:
    """A loaded, verified bundle. Item metadata is kept as columns for cheap gathers on the request path."""

    path: Path
    manifest: dict[str, Any]
    schema: FeatureSchema
    ids: list[str]
    titles: list[str]
    attributes: list[dict[str, Any]]
    text: np.ndarray
    image: np.ndarray
    attrs: np.ndarray
    mask: np.ndarray
    cand_kv: np.ndarray
    retrieval: np.ndarray
    retriever: FaissIndex
    row_of: dict[str, int]

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @classmethod
    def load(cls, path: Path, *, use_gpu: bool = False) -> Bundle:
        path = Path(path)
        if not (path / MANIFEST_FILE).exists():
            raise ArtifactError(f"no bundle at {path} (missing {MANIFEST_FILE}); run `make index`")
        manifest = read_json(path / MANIFEST_FILE)
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ArtifactError(f"bundle {path}: format {manifest.get('format')!r}, this service reads {BUNDLE_FORMAT}")
        verify_files(path, manifest["files"], f"bundle {path}")
        schema = FeatureSchema.from_dict(manifest["feature_schema"])
        arrays = {name: np.load(path / f"{name}.npy") for name in ARRAYS}
        rows = [json.loads(line) for line in (path / "items.jsonl").read_text(encoding="utf-8").splitlines()]
        n = int(manifest["items"])
        expected = {
            "text": (n, schema.text_dim),
            "image": (n, schema.image_dim),
            "attrs": (n, schema.attr_dim),
            "mask": (n, len(MODALITIES)),
            "cand_kv": (n, 2, 3, int(manifest["model_dim"])),
            "retrieval": (n, int(manifest["index"]["dim"])),
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ArtifactError(f"bundle {path}: {name}.npy has shape {arrays[name].shape}, manifest says {shape}")
        mask = arrays["mask"]
        if not np.isin(mask, (0.0, 1.0)).all() or (mask.sum(axis=1) == 0).any():
            raise ArtifactError(f"bundle {path}: mask.npy must hold 0/1 with at least one modality per item")
        if len(rows) != n:
            raise ArtifactError(f"bundle {path}: items.jsonl has {len(rows)} rows, manifest says {n}")
        params = IndexParams(**{**manifest["index"]["params"], "kind": IndexKind(manifest["index"]["params"]["kind"])})
        retriever = FaissIndex.load(path / "index.faiss", params, use_gpu=use_gpu)
        if retriever.size != n:
            raise ArtifactError(f"bundle {path}: index.faiss holds {retriever.size} vectors, manifest says {n}")
        if retriever.dim != int(manifest["index"]["dim"]):
            raise ArtifactError(
                f"bundle {path}: index.faiss holds {retriever.dim}-d vectors, manifest says {manifest['index']['dim']}"
            )
        ids = [r["id"] for r in rows]
        return cls(
            path=path,
            manifest=manifest,
            schema=schema,
            ids=ids,
            titles=[r["title"] for r in rows],
            attributes=[r["attributes"] for r in rows],
            retriever=retriever,
            row_of={item_id: i for i, item_id in enumerate(ids)},
            **arrays,
        )

    def check_compatible(self, card: ModelCard) -> None:
        """Refuse a model this bundle was not built for, naming the field that differs."""
        differences = card.schema.differences(self.schema)
        if differences:
            raise ArtifactError(
                f"bundle {self.path} and model {card.version} disagree on feature schema: " + "; ".join(differences)
            )
        if self.retriever.dim != card.retrieval_dim:
            raise ArtifactError(
                f"bundle {self.path} indexes {self.retriever.dim}-d vectors, but model {card.version}'s query tower "
                f"gives {card.retrieval_dim}-d ones: rebuild the bundle with `make index`"
            )
        if self.manifest["model_version"] != card.version:
            raise ArtifactError(
                f"bundle {self.path} holds candidate encodings of model {self.manifest['model_version']}, "
                f"but the model is {card.version}: rebuild the bundle with `make index`"
            )
