"""Build an index bundle from a catalog and an exported ranker: `python -m index.build` (or `make index`).

Encodes item titles (ONNX MiniLM), encodes attributes with the model's feature schema, precomputes the ranker's
candidate-side keys/values, builds the FAISS index (exact below 50k items, HNSW above, with its recall@100 against
exact search measured on held-out probe queries), and writes the bundle with checksums.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from index.bundle import BUNDLE_FORMAT, MANIFEST_FILE, Bundle
from index.catalog import DataError, Item, read_items
from index.featurize import CandidateFeatures, featurize
from index.files import sha256_file, write_json
from index.ranker_runtime import ArtifactError, OnnxRanker
from index.retriever import IndexKind, IndexParams, build_index, recall_at_k
from index.text_encoder import TextEncoder

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


def write_bundle(
    out: Path, items: list[Item], features: CandidateFeatures, ranker: OnnxRanker, params: IndexParams
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cand_kv = ranker.encode_candidates(features.text, features.image, features.attrs)
    log.info("candidate projections for %d items in %.1fs", len(items), time.perf_counter() - started)
    arrays = {"text": features.text, "image": features.image, "attrs": features.attrs, "cand_kv": cand_kv}
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    with open(out / "items.jsonl", "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps({"id": item.id, "title": item.title, "attributes": item.attributes}) + "\n")

    started = time.perf_counter()
    index = build_index(features.text, params)
    faiss.write_index(index, str(out / "index.faiss"))
    recall = 1.0 if params.kind is IndexKind.EXACT else measure_recall(index, features.text)
    log.info(
        "%s index over %d items in %.1fs, recall@%d vs exact %.4f",
        params.kind.value,
        len(items),
        time.perf_counter() - started,
        RECALL_K,
        recall,
    )

    names = [*(f"{name}.npy" for name in arrays), "items.jsonl", "index.faiss"]
    files = {name: sha256_file(out / name) for name in names}
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": hashlib.sha256("".join(files[n] for n in names).encode()).hexdigest()[:12],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "items": len(items),
        "model_version": ranker.version,
        "model_dim": ranker.card.dim,
        "feature_schema": ranker.card.schema.to_dict(),
        "text_encoder": ranker.card.schema.text_encoder,
        "index": {
            "params": {**asdict(params), "kind": params.kind.value},
            "metric": "inner_product",
            f"recall@{RECALL_K}": round(recall, 4),
            "recall_probes": 0 if params.kind is IndexKind.EXACT else RECALL_PROBES,
        },
        "files": files,
    }
    write_json(out / MANIFEST_FILE, manifest)
    return out


def build_bundle(data: Path, model_dir: Path, encoder_dir: Path, out: Path, kind: str = "auto") -> Bundle:
    """Featurize the catalog at data/items.jsonl and write a verified bundle to out."""
    ranker = OnnxRanker(model_dir)
    encoder = TextEncoder(encoder_dir)
    if encoder.name != ranker.card.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the model's {ranker.card.schema.text_encoder}")
    items = read_items(data / "items.jsonl" if data.is_dir() else data)
    started = time.perf_counter()
    features = featurize(items, ranker.card.schema, encoder)
    log.info("featurized %d items in %.1fs", len(items), time.perf_counter() - started)
    params = IndexParams.for_size(len(items)) if kind == "auto" else IndexParams(IndexKind(kind))
    write_bundle(out, items, features, ranker, params)
    bundle = Bundle.load(out)
    bundle.check_compatible(ranker.card)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m index.build", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="catalog dir or items.jsonl")
    parser.add_argument("--model", type=Path, default=Path("artifacts"), help="directory with the exported ranker")
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/bundle"))
    parser.add_argument("--index", choices=["auto", *(k.value for k in IndexKind)], default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        bundle = build_bundle(args.data, args.model, args.encoder, args.out, args.index)
    except (DataError, ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "bundle %s: %d items at %s (model %s)",
        bundle.version,
        bundle.size,
        bundle.path,
        bundle.manifest["model_version"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
