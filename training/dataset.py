"""Queries, judgments and the per-query candidate lists that training and evaluation work on.

A list holds the candidates the service's retriever would give for the query (top-K by exact search in a
`CandidateSpace`), with their grades: the ranker learns and is evaluated on exactly what it will see when serving.
Lists start in the title-text space (MiniLM query vs title); once the two-tower retriever is trained,
`Dataset.with_candidates` rebuilds them in its learned space.

Any dataset in the user data format (docs/data.md) is read here: JSONL or Parquet files, judgments as JSONL/Parquet or
TREC qrels, items with precomputed vectors or with image paths (encoded with the ONNX CLIP image encoder). The
embedded synthetic generator is one producer of that format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.data.readers import DataError, Item, find_data_file, items_path, iter_records, read_items
from index.offline.featurize import CandidateFeatures, featurize, schema_from_items
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index
from index.runtime.text_encoder import TextEncoder
from model.schema import FeatureSchema
from training.metrics import RELEVANT_GRADE

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IDEAL_DEPTH = 10  # nDCG@10 needs only the ten best judged grades of a query
QRELS_FILES = ("qrels.txt", "judgments.qrels", "qrels")
DEFAULT_IMAGE_ENCODER = Path("artifacts/encoders/clip")  # where `make image-encoder` writes it
# Queries with no `split` field are split by a hash of their id: stable across runs and machines, and a query
# never moves between splits when others are added.
HASH_SPLIT = (("train", 0.6), ("val", 0.8), ("test", 1.0))


@dataclass(frozen=True)
class Query:
    """A query as the user supplied it."""

    id: str
    text: str
    split: str
    constraints: dict[str, Any]


@dataclass
class RankingLists:
    """Q queries with K retrieved candidates each. Rows index the catalog (items, features)."""

    query_ids: list[str]
    query_texts: list[str]
    query_emb: np.ndarray  # (Q, text_dim)
    query_vectors: np.ndarray  # (Q, D) the queries in the space the candidates were retrieved from
    candidates: np.ndarray  # (Q, K) int64 item rows
    grades: np.ndarray  # (Q, K) int64, 0 where unjudged
    compliant: np.ndarray  # (Q, K) bool
    ideal_grades: np.ndarray  # (Q, IDEAL_DEPTH) best judged grades over the whole catalog, descending
    relevant_total: np.ndarray  # (Q,) items with grade >= RELEVANT_GRADE in the whole catalog

    def __len__(self) -> int:
        return len(self.query_ids)

    def candidate_recall(self) -> float:
        """Mean share of each query's relevant items that made its candidate list (queries with none excluded):
        what the candidate generator lets the ranker see at all."""
        has = self.relevant_total > 0
        if not has.any():
            return float("nan")
        found = (self.grades >= RELEVANT_GRADE).sum(axis=1)
        return float((found[has] / self.relevant_total[has]).mean())


Judged = dict[str, dict[int, tuple[int, bool]]]  # query id -> item row -> (grade, compliant)


@dataclass(frozen=True)
class CandidateSpace:
    """Where candidate generation searches: unit item vectors, and the map of a query embedding into their space."""

    name: str
    items: np.ndarray  # (N, D)
    project: Callable[[np.ndarray], np.ndarray]  # (Q, text_dim) MiniLM query embeddings -> (Q, D)


def text_space(features: CandidateFeatures) -> CandidateSpace:
    """The title-only space: MiniLM query against MiniLM title (also the text-cosine baseline's order)."""
    return CandidateSpace("text", features.text, lambda query: query)


@dataclass
class Dataset:
    """A catalog with its features and the train/val/test ranking lists."""

    items: list[Item]
    schema: FeatureSchema
    features: CandidateFeatures
    splits: dict[str, RankingLists]
    name: str
    judged: Judged
    item_vectors: np.ndarray  # (N, D) the items in the space the candidates were retrieved from
    space: str = "text"  # that CandidateSpace's name

    def with_candidates(self, space: CandidateSpace, num_candidates: int) -> Dataset:
        """The same queries and labels with every split's candidate lists retrieved again from `space`."""
        splits = {
            name: build_lists(lists.query_ids, lists.query_texts, lists.query_emb, self.judged, space, num_candidates)
            for name, lists in self.splits.items()
        }
        return dataclasses.replace(self, splits=splits, item_vectors=space.items, space=space.name)


def hash_split(query_id: str) -> str:
    """The split of a query whose data names none: 60/20/20 by a hash of its id."""
    fraction = int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "big") / 2**64
    return next(name for name, upper in HASH_SPLIT if fraction < upper)


def read_queries(path: Path) -> list[Query]:
    """Queries from JSONL or Parquet. When no query names a split, queries are split by `hash_split`."""
    queries = []
    named = False
    for number, record in iter_records(path):
        named = named or "split" in record
        qid, text, split = record.get("id"), record.get("text"), record.get("split", "train")
        if not isinstance(qid, str) or not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: fields 'id' and 'text' must be non-empty strings")
        if split not in SPLITS:
            raise DataError(f"{path}:{number}: field 'split' must be one of {SPLITS}, got {split!r}")
        queries.append(Query(qid, text, split, dict(record.get("constraints") or {})))
    if not named:
        queries = [dataclasses.replace(q, split=hash_split(q.id)) for q in queries]
    return queries


def read_judgments(path: Path, query_ids: set[str], item_rows: dict[str, int]) -> Judged:
    """query id -> item row -> (grade, compliant). Unknown ids and grades outside 0..3 are errors."""
    judged: Judged = {}
    for number, record in iter_judgment_records(path):
        qid, iid, grade = record.get("query_id"), record.get("item_id"), record.get("grade")
        if qid not in query_ids:
            raise DataError(f"{path}:{number}: field 'query_id' names unknown query {qid!r}")
        if iid not in item_rows:
            raise DataError(f"{path}:{number}: field 'item_id' names unknown item {iid!r}")
        if not isinstance(grade, int) or not 0 <= grade <= 3:
            raise DataError(f"{path}:{number}: field 'grade' must be an integer 0..3, got {grade!r}")
        compliant = bool(record.get("compliant", grade >= 2))
        judged.setdefault(qid, {})[item_rows[iid]] = (grade, compliant)
    return judged


def iter_qrels(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """TREC qrels lines (`query_id iteration item_id grade`) as judgment records; compliant is left to the grade."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
                raise DataError(f"{path}:{number}: expected 'query_id iteration item_id grade' with an integer grade")
            yield number, {"query_id": parts[0], "item_id": parts[2], "grade": int(parts[3])}


def iter_judgment_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    is_qrels = path.name in QRELS_FILES or path.suffix == ".qrels"
    return iter_qrels(path) if is_qrels else iter_records(path)


def find_judgments(data_dir: Path) -> Path:
    """judgments.jsonl / judgments.parquet, else a TREC qrels file; the JSONL name when there is none."""
    found = find_data_file(data_dir, "judgments")
    if found is None:
        found = next((data_dir / n for n in QRELS_FILES if (data_dir / n).exists()), None)
    return found or data_dir / "judgments.jsonl"


def encode_item_images(items: list[Item], image_encoder_dir: Path | None) -> list[Item]:
    """Fill image_embedding for items that give an image path instead, with the ONNX CLIP image encoder.

    Image paths are relative to the items file's directory (the caller resolves them). An image that cannot be
    decoded is an error here: training data should pass `make validate` and `make ingest` first, which report them.
    """
    needing = [i for i, item in enumerate(items) if item.image_embedding is None and item.image]
    if not needing:
        return items
    from index.offline.image_encoder import ImageEncoder
    from index.offline.images import ImageError, load_image

    directory = image_encoder_dir or DEFAULT_IMAGE_ENCODER
    if not (directory / "encoder.json").exists():
        raise DataError(
            f"{len(needing)} items have image paths but no image_embedding, and there is no image encoder at "
            f"{directory}: run `make image-encoder CLIP=/path/to/local/clip`"
        )
    encoder = ImageEncoder(directory)
    out = list(items)
    batch = 64
    for start in range(0, len(needing), batch):
        rows = needing[start : start + batch]
        try:
            images = [load_image(Path(str(items[r].image))) for r in rows]
        except ImageError as exc:
            raise DataError(f"cannot use an item image: {exc}") from None
        for r, vector in zip(rows, encoder.encode(images)):
            out[r] = dataclasses.replace(items[r], image_embedding=vector.tolist())
    log.info("encoded %d item images with %s", len(needing), encoder.name)
    return out


def build_lists(
    query_ids: list[str],
    query_texts: list[str],
    query_emb: np.ndarray,
    judged: Judged,
    space: CandidateSpace,
    num_candidates: int,
) -> RankingLists:
    """Retrieve each query's top `num_candidates` from `space` by exact search and label them."""
    query_vectors = space.project(query_emb)
    index = build_index(space.items, IndexParams(IndexKind.EXACT))
    _, rows = FaissIndex(index, IndexParams(IndexKind.EXACT)).search(query_vectors, num_candidates)
    grades = np.zeros(rows.shape, dtype=np.int64)
    compliant = np.zeros(rows.shape, dtype=bool)
    ideal = np.zeros((len(query_ids), IDEAL_DEPTH), dtype=np.int64)
    relevant_total = np.zeros(len(query_ids), dtype=np.int64)
    for q, query_id in enumerate(query_ids):
        labels = judged.get(query_id, {})
        for k, row in enumerate(rows[q]):
            grades[q, k], compliant[q, k] = labels.get(int(row), (0, False))
        best = sorted((g for g, _ in labels.values()), reverse=True)[:IDEAL_DEPTH]
        ideal[q, : len(best)] = best
        relevant_total[q] = sum(g >= RELEVANT_GRADE for g, _ in labels.values())
    return RankingLists(
        query_ids=query_ids,
        query_texts=query_texts,
        query_emb=query_emb,
        query_vectors=query_vectors,
        candidates=rows.astype(np.int64),
        grades=grades,
        compliant=compliant,
        ideal_grades=ideal,
        relevant_total=relevant_total,
    )


def require_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist (run `make data` for the synthetic default)")


def load_dataset(
    data_dir: Path,
    encoder: TextEncoder,
    *,
    num_candidates: int = 100,
    image_dim: int | None = None,
    schema: FeatureSchema | None = None,
    image_encoder_dir: Path | None = None,
) -> Dataset:
    """Read items/queries/judgments from data_dir, encode them and build the per-split candidate lists.

    Items that give an image path instead of an image_embedding are encoded with the ONNX image encoder at
    image_encoder_dir (default: artifacts/encoders/clip).
    """
    require_data_dir(data_dir)
    source = items_path(data_dir)
    items = [
        dataclasses.replace(item, image=str(source.parent / item.image)) if item.image else item
        for item in read_items(source)
    ]
    items = encode_item_images(items, image_encoder_dir)
    queries = read_queries(find_data_file(data_dir, "queries") or data_dir / "queries.jsonl")
    rows = {item.id: i for i, item in enumerate(items)}
    judged = read_judgments(find_judgments(data_dir), {q.id for q in queries}, rows)
    if schema is None:
        first = next((i.image_embedding for i in items if i.image_embedding is not None), None)
        dim = image_dim or (len(first) if first is not None else 0)
        schema = schema_from_items(items, text_dim=encoder.dim, image_dim=dim, text_encoder=encoder.name)
    log.info("encoding %d item titles and %d queries with %s", len(items), len(queries), encoder.name)
    features = featurize(items, schema, encoder)
    space = text_space(features)
    splits = {}
    for split in SPLITS:
        chosen = [q for q in queries if q.split == split]
        if not chosen:
            raise DataError(f"{data_dir}: no queries in split {split!r}")
        ids, texts = [q.id for q in chosen], [q.text for q in chosen]
        splits[split] = build_lists(ids, texts, encoder.encode(texts), judged, space, num_candidates)
    return Dataset(
        items=items,
        schema=schema,
        features=features,
        splits=splits,
        name=data_dir.name,
        judged=judged,
        item_vectors=space.items,
    )
