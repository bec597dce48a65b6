"""Write an index bundle from a catalog and an exported model (CLI: `python -m index.offline.build`, `make index`).

Encodes item texts (ONNX MiniLM; how many were cut at the encoder's limit goes into the manifest), encodes
attributes with the model's feature schema, records which modalities each item has (the mask: text, image and
attributes are each optional, but not all three), builds the BM25 index over the items' text fields and the dense
FAISS index over their text embeddings, runs the model's candidate encoder (the ranker's keys/values and each item's
retrieval vector) and builds the learned FAISS index over the retrieval vectors (each FAISS index exact below 50k
items, HNSW above, with its recall@100 against exact search measured on probe queries), and writes the bundle with
checksums. Without a model (no `model_card.json` in --model) the bundle is zero-shot: everything but the model's
part, with a feature schema inferred from the catalog.
"""

from __future__ import annotations

import dataclasses
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

from index.data.records import DataError, Item
from index.data.verdict import read_catalog
from index.offline.featurize import CandidateFeatures, featurize
from index.runtime.bundle import (
    BUNDLE_FORMAT,
    FEATURE_ARRAYS,
    LEARNED_INDEX_FILE,
    LEXICAL_DIR,
    MANIFEST_FILE,
    MODEL_ARRAYS,
    TEXT_INDEX_FILE,
    Bundle,
)
from index.runtime.exported_model import MODEL_CARD_FILE, ExportedModel, ModelCard
from index.runtime.faiss_index import IndexKind, IndexParams, build_index, recall_at_k
from index.runtime.files import ArtifactError, sha256_file, write_json
from index.runtime.lexical import NO_ANALYSIS, Analyzer, LexicalIndex
from index.runtime.text_encoder import TextEncoder
from model.schema import FeatureSchema

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


def write_index(
    out: Path, vectors: np.ndarray, params: IndexParams, name: str = LEARNED_INDEX_FILE, space: str = "learned"
) -> dict[str, Any]:
    """Build and save a FAISS index over unit vectors; returns its manifest section."""
    started = time.perf_counter()
    index = build_index(vectors, params)
    faiss.write_index(index, str(out / name))
    recall = 1.0 if params.kind is IndexKind.EXACT else measure_recall(index, vectors)
    log.info(
        "%s %s index over %d items in %.1fs, recall@%d vs exact %.4f",
        space,
        params.kind.value,
        len(vectors),
        time.perf_counter() - started,
        RECALL_K,
        recall,
    )
    return {
        "params": {**asdict(params), "kind": params.kind.value},
        "metric": "inner_product",
        "space": space,
        "dim": int(vectors.shape[1]),
        f"recall@{RECALL_K}": round(recall, 4),
        "recall_probes": 0 if params.kind is IndexKind.EXACT else RECALL_PROBES,
    }


def write_bundle(
    out: Path,
    items: list[Item],
    features: CandidateFeatures,
    ranker: ExportedModel | None,
    params: IndexParams,
    extra: dict[str, Any] | None = None,
    schema: FeatureSchema | None = None,
    analysis: Analyzer | str | None = None,
) -> Path:
    """Write the bundle files and manifest; `extra` adds manifest sections (e.g. the image encoder that was used).
    Without a ranker the bundle is zero-shot and `schema` (the features' schema) is required. `analysis` is the BM25
    index's (`bundle_analysis`: the ranker's unless given)."""
    analyzer = bundle_analysis(ranker.card if ranker is not None else None, analysis)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"text": features.text, "image": features.image, "attrs": features.attrs, "mask": features.mask}
    sections: dict[str, Any] = {}
    if ranker is not None:
        started = time.perf_counter()
        encoded = ranker.encode_candidates(features.text, features.image, features.attrs, features.mask)
        log.info("candidate encoder over %d items in %.1fs", len(items), time.perf_counter() - started)
        arrays.update(cand_kv=encoded.kv, retrieval=encoded.retrieval)
        sections["index"] = write_index(out, encoded.retrieval, params)
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    with open(out / "items.jsonl", "w", encoding="utf-8") as handle:
        for item in items:
            row: dict[str, Any] = {"id": item.id, "title": item.display_title, "attributes": item.attributes}
            if item.image and Path(item.image).is_file():  # for showing the picture (the workbench), never ranking
                row["image"] = str(Path(item.image).resolve())
            handle.write(json.dumps(row) + "\n")
    sections["text_index"] = write_index(out, features.text, params, TEXT_INDEX_FILE, "text")
    sections["lexical"] = write_lexical(out, items, analyzer)
    extra = {"modalities": features.coverage(), **(extra or {})}  # items with each modality, for the reader
    write_manifest(out, ranker, len(items), sections, extra, schema)
    return out


def bundle_analysis(card: ModelCard | None, requested: Analyzer | str | None) -> Analyzer:
    """The BM25 analysis a bundle is built with: the model's, whose ranker learned from BM25 evidence made that way
    (a card from before analyses were recorded says `none`); for a zero-shot bundle `none` unless one is named. A
    named analysis that is not the model's is an error naming both."""
    chosen = Analyzer.of(requested) if requested is not None else None
    if card is None:
        return chosen or Analyzer(NO_ANALYSIS)
    if chosen is not None and chosen.name != card.analysis:
        raise ValueError(
            f"--analysis {chosen.name} is not model {card.version}'s lexical analysis {card.analysis}: its ranker "
            "was trained on BM25 made that way (leave --analysis out, or train with it)"
        )
    return Analyzer(card.analysis)


def write_lexical(out: Path, items: list[Item], analysis: Analyzer | str = NO_ANALYSIS) -> dict[str, Any]:
    """Build and save the BM25 index over the items' text fields; returns its manifest section."""
    started = time.perf_counter()
    lexical = LexicalIndex.build([item.full_text for item in items], analysis=analysis)
    shutil.rmtree(out / LEXICAL_DIR, ignore_errors=True)
    files = lexical.save(out / LEXICAL_DIR)
    log.info("BM25 index over %d items in %.1fs", len(items), time.perf_counter() - started)
    return {
        "library": "bm25s",
        **dataclasses.asdict(lexical.params),
        "fields": ["title", "text"],
        "analysis": lexical.analyzer.name,
        "tokenizer": lexical.analyzer.describe(),
        "files": [f"{LEXICAL_DIR}/{name}" for name in files],
    }


def write_manifest(
    out: Path,
    ranker: ExportedModel | None,
    items: int,
    sections: dict[str, Any],
    extra: dict[str, Any] | None = None,
    schema: FeatureSchema | None = None,
) -> None:
    """Checksum every bundle file and write manifest.json; the bundle version is a digest of the checksums.
    `sections` holds the indexes' manifest sections (text_index, lexical and, with a model, index)."""
    model_files = [*(f"{name}.npy" for name in MODEL_ARRAYS), LEARNED_INDEX_FILE] if ranker else []
    names = [
        *(f"{name}.npy" for name in FEATURE_ARRAYS),
        "items.jsonl",
        TEXT_INDEX_FILE,
        *sections["lexical"]["files"],
        *model_files,
    ]
    files = {name: sha256_file(out / name) for name in names}
    schema = ranker.card.schema if ranker is not None else schema
    if schema is None:
        raise ValueError("a zero-shot bundle needs the feature schema")
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": hashlib.sha256("".join(files[n] for n in names).encode()).hexdigest()[:12],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "items": items,
        "model_version": ranker.version if ranker is not None else None,
        "model_dim": ranker.card.dim if ranker is not None else None,
        "feature_schema": schema.to_dict(),
        "text_encoder": schema.text_encoder,
        **sections,
        "files": files,
    }
    for key, value in (extra or {}).items():
        manifest.setdefault(key, value)  # never overrides what the loader checks
    write_json(out / MANIFEST_FILE, manifest)


def reproject_bundle(source: Path, model_dir: Path, out: Path) -> Bundle:
    """New model, same catalog: recompute only what the model makes (the ranker's candidate keys/values and the
    learned index over its retrieval vectors) from an existing bundle's features (a zero-shot bundle's too).

    Texts and images are not re-encoded, the dense and BM25 indexes are kept (so the model must analyse text for
    BM25 as the bundle's index does: the bundle keeps no item text to rebuild it from); the new bundle is written
    beside the target and moved into place, so `out` may be `source`."""
    ranker = ExportedModel(model_dir)
    old = Bundle.load(source)
    differences = ranker.card.schema.differences(old.schema)
    if differences:
        raise ArtifactError(
            f"model {ranker.version} has another feature schema than bundle {source} "
            f"({'; '.join(differences)}): rebuild with `make index`"
        )
    old.check_analysis(ranker.card)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    made_by_model = (*(f"{name}.npy" for name in MODEL_ARRAYS), LEARNED_INDEX_FILE, MANIFEST_FILE)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*made_by_model))
    encoded = ranker.encode_candidates(old.text, old.image, old.attrs, old.mask)
    np.save(staging / "cand_kv.npy", encoded.kv)
    np.save(staging / "retrieval.npy", encoded.retrieval)
    params = old.dense.params
    sections = {
        "index": write_index(staging, encoded.retrieval, params),
        "text_index": old.manifest["text_index"],
        "lexical": old.manifest["lexical"],
    }
    derived = ("format", "version", "created", "files", "model_version", "model_dim", *sections)
    kept = {k: v for k, v in old.manifest.items() if k not in derived}
    write_manifest(staging, ranker, old.size, sections, kept)
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


def build_bundle(
    data: Path, model_dir: Path, encoder_dir: Path, out: Path, kind: str = "auto", analysis: str | None = None
) -> Bundle:
    """Featurize the catalog at data/items.jsonl and write a verified bundle to out; zero-shot when model_dir holds
    no exported model. Items the catalog's verdict skips (`index.data.verdict`, with the model's feature schema or,
    zero-shot, one learnt from the catalog) are left out, each defect logged as one warning. `analysis`: BM25's
    (`bundle_analysis`)."""
    ranker = ExportedModel(model_dir) if (model_dir / MODEL_CARD_FILE).exists() else None
    analyzer = bundle_analysis(ranker.card if ranker is not None else None, analysis)  # before the long work
    encoder = TextEncoder(encoder_dir)
    if ranker is not None and encoder.name != ranker.card.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the model's {ranker.card.schema.text_encoder}")
    schema = ranker.card.schema if ranker is not None else None
    screened = read_catalog(data, schema=schema, text_measure=encoder, judged=False)
    screened.log(log)
    items = screened.items
    needs_images = [item.id for item in items if item.image_embedding is None and item.image]
    if needs_images:
        raise DataError(
            f"{len(needs_images)} items (e.g. {needs_images[0]!r}) have an image path but no image_embedding: "
            "build with `make ingest`, which encodes images"
        )
    if ranker is None:
        log.warning(
            "no exported model in %s: building a ZERO-SHOT bundle (MiniLM dense + BM25 search, no trained ranker)",
            model_dir,
        )
        first = next((i.image_embedding for i in items if i.image_embedding is not None), None)
        schema = dataclasses.replace(
            screened.schema,
            text_dim=encoder.dim,
            image_dim=len(first) if first is not None else 1,
            text_encoder=encoder.name,
        )
    else:
        schema = ranker.card.schema
    started = time.perf_counter()
    features = featurize(items, schema, encoder)
    text_info = screened.text
    log.info(
        "featurized %d items in %.1fs; items with each modality: %s; %d of %d texts cut at %d word pieces",
        len(items),
        time.perf_counter() - started,
        features.coverage(),
        text_info["truncated"],
        text_info["encoded"],
        text_info["max_tokens"],
    )
    params = IndexParams.for_size(len(items)) if kind == "auto" else IndexParams(IndexKind(kind))
    catalog = {"items_read": screened.items_read, "skipped": screened.counts["items_skipped"]}
    extra = {"text": text_info, "catalog": catalog}
    write_bundle(out, items, features, ranker, params, extra, schema, analyzer)
    bundle = Bundle.load(out)
    bundle.check_compatible(ranker.card if ranker is not None else None)
    return bundle
