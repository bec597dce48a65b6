"""Write an index bundle from a catalog and an exported model (CLI: `python -m index.offline.build`, `make index`).

Encodes item texts (ONNX MiniLM), encodes attributes with the model's feature schema, records which modalities each
item has (the mask: text, image and attributes are each optional, but not all three), runs the model's candidate
encoder (the ranker's keys/values and each item's retrieval vector), builds the FAISS index over the retrieval
vectors (exact below 50k items, HNSW above, with its recall@100 against exact search measured on probe queries), and
writes the bundle with checksums.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.data.readers import items_path, read_items
from index.data.records import DataError, Item
from index.offline.featurize import CandidateFeatures, featurize
from index.runtime.bundle import ARRAYS, BUNDLE_FORMAT, MANIFEST_FILE, Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.faiss_index import IndexKind, IndexParams, build_index, recall_at_k
from index.runtime.files import ArtifactError, sha256_file, write_json
from index.runtime.text_encoder import TextEncoder

log = logging.getLogger(__name__)

RECALL_K = 100
RECALL_PROBES = 500


def measure_recall(index: faiss.Index, vectors: np.ndarray, k: int = RECALL_K, probes: int = RECALL_PROBES) -> float:
    """recall@k of `index` against exact search, for probe queries made by perturbing random item vectors."""
    rng = np.random.default_rng(0)
    picked = vectors[rng.choice(len(vectors), size=min(probes, len(vectors)), replace=False)]
    queries = picked + rng.normal(0, 0.05, picked.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    k = min(k, len(vectors))
    return recall_at_k(index.search(queries, k)[1], exact.search(queries, k)[1])


def write_index(out: Path, vectors: np.ndarray, params: IndexParams) -> dict[str, Any]:
    """Build and save the FAISS index over the retrieval vectors; returns its manifest section."""
    started = time.perf_counter()
    index = build_index(vectors, params)
    faiss.write_index(index, str(out / "index.faiss"))
    recall = 1.0 if params.kind is IndexKind.EXACT else measure_recall(index, vectors)
    log.info(
        "%s index over %d items in %.1fs, recall@%d vs exact %.4f",
        params.kind.value,
        len(vectors),
        time.perf_counter() - started,
        RECALL_K,
        recall,
    )
    return {
        "params": {**asdict(params), "kind": params.kind.value},
        "metric": "inner_product",
        "space": "learned",
        "dim": int(vectors.shape[1]),
        f"recall@{RECALL_K}": round(recall, 4),
        "recall_probes": 0 if params.kind is IndexKind.EXACT else RECALL_PROBES,
    }


def write_bundle(
    out: Path,
    items: list[Item],
    features: CandidateFeatures,
    ranker: ExportedModel,
    params: IndexParams,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle files and manifest; `extra` adds manifest sections (e.g. the image encoder that was used)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    encoded = ranker.encode_candidates(features.text, features.image, features.attrs, features.mask)
    log.info("candidate encoder over %d items in %.1fs", len(items), time.perf_counter() - started)
    arrays = {
        "text": features.text,
        "image": features.image,
        "attrs": features.attrs,
        "mask": features.mask,
        "cand_kv": encoded.kv,
        "retrieval": encoded.retrieval,
    }
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    with open(out / "items.jsonl", "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps({"id": item.id, "title": item.display_title, "attributes": item.attributes}) + "\n")
    extra = {"modalities": features.coverage(), **(extra or {})}  # items with each modality, for the reader
    write_manifest(out, ranker, len(items), write_index(out, encoded.retrieval, params), extra)
    return out


def write_manifest(
    out: Path, ranker: ExportedModel, items: int, index_info: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Checksum every bundle file and write manifest.json; the bundle version is a digest of the checksums."""
    names = [*(f"{name}.npy" for name in ARRAYS), "items.jsonl", "index.faiss"]
    files = {name: sha256_file(out / name) for name in names}
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": hashlib.sha256("".join(files[n] for n in names).encode()).hexdigest()[:12],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "items": items,
        "model_version": ranker.version,
        "model_dim": ranker.card.dim,
        "feature_schema": ranker.card.schema.to_dict(),
        "text_encoder": ranker.card.schema.text_encoder,
        "index": index_info,
        "files": files,
    }
    for key, value in (extra or {}).items():
        manifest.setdefault(key, value)  # never overrides what the loader checks
    write_json(out / MANIFEST_FILE, manifest)


def reproject_bundle(source: Path, model_dir: Path, out: Path) -> Bundle:
    """New model, same catalog: recompute only what the model makes (the ranker's candidate keys/values and the
    index over its retrieval vectors) from an existing bundle's features.

    Titles and images are not re-encoded; the new bundle is written beside the target and moved into place, so
    `out` may be `source`."""
    ranker = ExportedModel(model_dir)
    old = Bundle.load(source)
    differences = ranker.card.schema.differences(old.schema)
    if differences:
        raise ArtifactError(
            f"model {ranker.version} has another feature schema than bundle {source} "
            f"({'; '.join(differences)}): rebuild with `make index`"
        )
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    made_by_model = ("cand_kv.npy", "retrieval.npy", "index.faiss", MANIFEST_FILE)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*made_by_model))
    encoded = ranker.encode_candidates(old.text, old.image, old.attrs, old.mask)
    np.save(staging / "cand_kv.npy", encoded.kv)
    np.save(staging / "retrieval.npy", encoded.retrieval)
    params = old.retriever.params
    kept = {k: v for k, v in old.manifest.items() if k not in ("format", "version", "created", "files", "index")}
    write_manifest(staging, ranker, old.size, write_index(staging, encoded.retrieval, params), kept)
    if out.exists():
        retired = out.with_name(f".{out.name}.retired")
        shutil.rmtree(retired, ignore_errors=True)
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired)
    else:
        staging.rename(out)
    bundle = Bundle.load(out)
    bundle.check_compatible(ranker.card)
    return bundle


def build_bundle(data: Path, model_dir: Path, encoder_dir: Path, out: Path, kind: str = "auto") -> Bundle:
    """Featurize the catalog at data/items.jsonl and write a verified bundle to out."""
    ranker = ExportedModel(model_dir)
    encoder = TextEncoder(encoder_dir)
    if encoder.name != ranker.card.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the model's {ranker.card.schema.text_encoder}")
    items = read_items(items_path(data))
    needs_images = [item.id for item in items if item.image_embedding is None and item.image]
    if needs_images:
        raise DataError(
            f"{len(needs_images)} items (e.g. {needs_images[0]!r}) have an image path but no image_embedding: "
            "build with `make ingest`, which encodes images"
        )
    started = time.perf_counter()
    features = featurize(items, ranker.card.schema, encoder)
    log.info(
        "featurized %d items in %.1fs; items with each modality: %s",
        len(items),
        time.perf_counter() - started,
        features.coverage(),
    )
    params = IndexParams.for_size(len(items)) if kind == "auto" else IndexParams(IndexKind(kind))
    write_bundle(out, items, features, ranker, params)
    bundle = Bundle.load(out)
    bundle.check_compatible(ranker.card)
    return bundle
