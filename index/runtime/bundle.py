"""The index bundle: everything the service needs about a catalog, in one directory with a manifest.

    bundle/
      manifest.json    versions, dimensions, item count, index type and parameters, recall, sha256 per file
      items.jsonl      id, title, attributes per row (row i of every matrix is item i), and the image file's path
                       where the item had one (shown by the workbench, never read for ranking)
      text.npy         (N, text_dim) unit-norm MiniLM embeddings of each item's text fields (zeros where it has none)
      image.npy        (N, image_dim) image embeddings (zeros where the item has no image; image_dim is 1, a
                       placeholder, for a catalog without images)
      attrs.npy        (N, attr_dim) encoded attributes
      mask.npy         (N, 3) float32 modality mask, 1 = present, in token order image, text, attributes: what the
                       candidate encoder and the ranker leave out of an item that lacks a modality
      text.faiss       dense search: the text embeddings, searched with the query's MiniLM embedding
      lexical/         BM25 over each item's title and text (index.runtime.lexical), its analysis (`none` or a
                       stemming language) in its stats.json and in the manifest's `lexical.analysis`
      cand_kv.npy      (N, 2, 3, dim) the ranker's query-independent keys/values, made by `model_version`
      retrieval.npy    (N, retrieval_dim) unit retrieval vectors, made by `model_version` (the ranker's
                       `retrieval_score` input is their inner product with the query's)
      index.faiss      the learned candidate source: the model's retrieval vector per item, searched with the query
                       tower's

A zero-shot bundle (built without a trained model, `model_version` null) has no cand_kv.npy, retrieval.npy or
index.faiss: it is served by dense and BM25 search alone. A bundle is loaded only if every checksum matches, and
served only with the model whose feature schema and version it was built for (`check_compatible`), or, when
zero-shot, with no model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.runtime.exported_model import ModelCard
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams
from index.runtime.files import ArtifactError, read_json, verify_files
from index.runtime.lexical import NO_ANALYSIS, LexicalIndex
from model.schema import MODALITIES, FeatureSchema

# 2: the index holds the model's retrieval vectors, not title embeddings; 3: mask.npy; 4: text.faiss and lexical/,
# and bundles without a model
BUNDLE_FORMAT = 4
MANIFEST_FILE = "manifest.json"
FEATURE_ARRAYS = ("text", "image", "attrs", "mask")  # every bundle
MODEL_ARRAYS = ("cand_kv", "retrieval")  # made by the model; absent from a zero-shot bundle
ARRAYS = FEATURE_ARRAYS + MODEL_ARRAYS
TEXT_INDEX_FILE = "text.faiss"
LEARNED_INDEX_FILE = "index.faiss"
LEXICAL_DIR = "lexical"


@dataclass
class Bundle:
    """A loaded, verified bundle. Item metadata is kept as columns for cheap gathers on the request path."""

    path: Path
    manifest: dict[str, Any]
    schema: FeatureSchema
    ids: list[str]
    titles: list[str]
    attributes: list[dict[str, Any]]
    images: list[str | None]  # each item's image file, where the catalog gave one
    text: np.ndarray
    image: np.ndarray
    attrs: np.ndarray
    mask: np.ndarray
    dense: FaissIndex  # over `text`
    lexical: LexicalIndex
    cand_kv: np.ndarray | None  # None in a zero-shot bundle, like the two below
    retrieval: np.ndarray | None
    retriever: FaissIndex | None  # the learned source
    row_of: dict[str, int]

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def model_version(self) -> str | None:
        """The model whose encodings the bundle holds; None for a zero-shot bundle."""
        value = self.manifest.get("model_version")
        return None if value is None else str(value)

    def zero_shot(self) -> Bundle:
        """This catalog as a zero-shot bundle: the same items, text, BM25 and dense index, without the model's
        encodings (shared, not copied), so that it is served by dense and BM25 search and the RRF prior alone."""
        if self.model_version is None:
            return self
        manifest = {**self.manifest, "model_version": None}
        return dataclasses.replace(self, manifest=manifest, cand_kv=None, retrieval=None, retriever=None)

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
        zero_shot = manifest.get("model_version") is None
        names = FEATURE_ARRAYS if zero_shot else ARRAYS
        arrays = {name: np.load(path / f"{name}.npy") for name in names}
        rows = [json.loads(line) for line in (path / "items.jsonl").read_text(encoding="utf-8").splitlines()]
        n = int(manifest["items"])
        expected: dict[str, tuple[int, ...]] = {
            "text": (n, schema.text_dim),
            "image": (n, schema.image_dim),
            "attrs": (n, schema.attr_dim),
            "mask": (n, len(MODALITIES)),
        }
        if not zero_shot:
            expected["cand_kv"] = (n, 2, 3, int(manifest["model_dim"]))
            expected["retrieval"] = (n, int(manifest["index"]["dim"]))
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ArtifactError(f"bundle {path}: {name}.npy has shape {arrays[name].shape}, manifest says {shape}")
        mask = arrays["mask"]
        if not np.isin(mask, (0.0, 1.0)).all() or (mask.sum(axis=1) == 0).any():
            raise ArtifactError(f"bundle {path}: mask.npy must hold 0/1 with at least one modality per item")
        if len(rows) != n:
            raise ArtifactError(f"bundle {path}: items.jsonl has {len(rows)} rows, manifest says {n}")
        dense = _load_index(path, TEXT_INDEX_FILE, manifest["text_index"], n, use_gpu)
        retriever = None if zero_shot else _load_index(path, LEARNED_INDEX_FILE, manifest["index"], n, use_gpu)
        lexical = LexicalIndex.load(path / LEXICAL_DIR)
        if lexical.size != n:
            raise ArtifactError(f"bundle {path}: the BM25 index holds {lexical.size} items, manifest says {n}")
        recorded = manifest["lexical"].get("analysis", NO_ANALYSIS)  # bundles from before analyses: none
        if recorded != lexical.analyzer.name:
            raise ArtifactError(
                f"bundle {path}: manifest lexical.analysis is {recorded!r}, but the BM25 index was built with "
                f"{lexical.analyzer.name!r} (lexical/stats.json)"
            )
        ids = [r["id"] for r in rows]
        return cls(
            path=path,
            manifest=manifest,
            schema=schema,
            ids=ids,
            titles=[r["title"] for r in rows],
            attributes=[r["attributes"] for r in rows],
            images=[r.get("image") for r in rows],
            dense=dense,
            lexical=lexical,
            retriever=retriever,
            row_of={item_id: i for i, item_id in enumerate(ids)},
            text=arrays["text"],
            image=arrays["image"],
            attrs=arrays["attrs"],
            mask=arrays["mask"],
            cand_kv=arrays.get("cand_kv"),
            retrieval=arrays.get("retrieval"),
        )

    def check_compatible(self, card: ModelCard | None) -> None:
        """Refuse a model this bundle was not built for (or no model, when the bundle holds a model's encodings),
        naming the field that differs."""
        if card is None:
            if self.model_version is not None:
                raise ArtifactError(
                    f"bundle {self.path} was built for model {self.model_version}, which is not there: export it, "
                    "or build a zero-shot bundle with `make index` and no model"
                )
            return
        if self.retriever is None:
            raise ArtifactError(
                f"bundle {self.path} is zero-shot (built without a model); model {card.version} needs a bundle "
                "built for it: run `make index`"
            )
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
        self.check_analysis(card)
        if self.model_version != card.version:
            raise ArtifactError(
                f"bundle {self.path} holds candidate encodings of model {self.manifest['model_version']}, "
                f"but the model is {card.version}: rebuild the bundle with `make index`"
            )

    def check_analysis(self, card: ModelCard) -> None:
        """Refuse a model whose ranker learned from BM25 analysed otherwise than this bundle's index: its lexical
        evidence, and the BM25 candidates, would not be what it was trained on."""
        if self.lexical.analyzer.name != card.analysis:
            raise ArtifactError(
                f"bundle {self.path} and model {card.version} disagree on lexical analysis: the bundle's BM25 index "
                f"uses {self.lexical.analyzer.name!r}, the model was trained with {card.analysis!r}: rebuild the "
                "bundle with `make index`"
            )


def _load_index(path: Path, name: str, info: dict[str, Any], n: int, use_gpu: bool) -> FaissIndex:
    """A FAISS index of the bundle, checked against its manifest section (size and dimension)."""
    params = IndexParams(**{**info["params"], "kind": IndexKind(info["params"]["kind"])})
    index = FaissIndex.load(path / name, params, use_gpu=use_gpu)
    if index.size != n:
        raise ArtifactError(f"bundle {path}: {name} holds {index.size} vectors, manifest says {n}")
    if index.dim != int(info["dim"]):
        raise ArtifactError(f"bundle {path}: {name} holds {index.dim}-d vectors, manifest says {info['dim']}")
    return index
