"""Queries, judgments and the per-query candidate lists that training and evaluation work on.

A list holds the candidates the service's retriever would give for the query (top-K by MiniLM cosine, exact
search), with their grades: the ranker learns and is evaluated on exactly what it will see when serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.catalog import DataError, Item, iter_jsonl, read_items
from index.featurize import CandidateFeatures, featurize, schema_from_items
from index.retriever import IndexKind, IndexParams, Retriever, build_index
from index.text_encoder import TextEncoder
from model.schema import FeatureSchema

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IDEAL_DEPTH = 10  # nDCG@10 needs only the ten best judged grades of a query


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
    candidates: np.ndarray  # (Q, K) int64 item rows
    grades: np.ndarray  # (Q, K) int64, 0 where unjudged
    compliant: np.ndarray  # (Q, K) bool
    ideal_grades: np.ndarray  # (Q, IDEAL_DEPTH) best judged grades over the whole catalog, descending

    def __len__(self) -> int:
        return len(self.query_ids)


@dataclass
class Dataset:
    """A catalog with its features and the train/val/test ranking lists."""

    items: list[Item]
    schema: FeatureSchema
    features: CandidateFeatures
    splits: dict[str, RankingLists]
    name: str


def read_queries(path: Path) -> list[Query]:
    queries = []
    for number, record in iter_jsonl(path):
        qid, text, split = record.get("id"), record.get("text"), record.get("split", "train")
        if not isinstance(qid, str) or not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: fields 'id' and 'text' must be non-empty strings")
        if split not in SPLITS:
            raise DataError(f"{path}:{number}: field 'split' must be one of {SPLITS}, got {split!r}")
        queries.append(Query(qid, text, split, dict(record.get("constraints") or {})))
    return queries


def read_judgments(
    path: Path, query_ids: set[str], item_rows: dict[str, int]
) -> dict[str, dict[int, tuple[int, bool]]]:
    """query id -> item row -> (grade, compliant). Unknown ids and grades outside 0..3 are errors."""
    judged: dict[str, dict[int, tuple[int, bool]]] = {}
    for number, record in iter_jsonl(path):
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


def build_lists(
    queries: list[Query],
    query_emb: np.ndarray,
    judged: dict[str, dict[int, tuple[int, bool]]],
    retriever: Retriever,
    num_candidates: int,
) -> RankingLists:
    _, rows = retriever.search(query_emb, num_candidates)
    grades = np.zeros(rows.shape, dtype=np.int64)
    compliant = np.zeros(rows.shape, dtype=bool)
    ideal = np.zeros((len(queries), IDEAL_DEPTH), dtype=np.int64)
    for q, query in enumerate(queries):
        labels = judged.get(query.id, {})
        for k, row in enumerate(rows[q]):
            grades[q, k], compliant[q, k] = labels.get(int(row), (0, False))
        best = sorted((g for g, _ in labels.values()), reverse=True)[:IDEAL_DEPTH]
        ideal[q, : len(best)] = best
    return RankingLists(
        query_ids=[q.id for q in queries],
        query_texts=[q.text for q in queries],
        query_emb=query_emb,
        candidates=rows.astype(np.int64),
        grades=grades,
        compliant=compliant,
        ideal_grades=ideal,
    )


def load_dataset(
    data_dir: Path,
    encoder: TextEncoder,
    *,
    num_candidates: int = 100,
    image_dim: int | None = None,
    schema: FeatureSchema | None = None,
) -> Dataset:
    """Read items/queries/judgments from data_dir, encode them and build the per-split candidate lists."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist (run `make data` for the synthetic default)")
    items = read_items(data_dir / "items.jsonl")
    queries = read_queries(data_dir / "queries.jsonl")
    rows = {item.id: i for i, item in enumerate(items)}
    judged = read_judgments(data_dir / "judgments.jsonl", {q.id for q in queries}, rows)
    if schema is None:
        first = next((i.image_embedding for i in items if i.image_embedding is not None), None)
        dim = image_dim or (len(first) if first is not None else 0)
        schema = schema_from_items(items, text_dim=encoder.dim, image_dim=dim, text_encoder=encoder.name)
    log.info("encoding %d item titles and %d queries with %s", len(items), len(queries), encoder.name)
    features = featurize(items, schema, encoder)
    retriever = Retriever(build_index(features.text, IndexParams(IndexKind.EXACT)), IndexParams(IndexKind.EXACT))
    splits = {}
    for split in SPLITS:
        chosen = [q for q in queries if q.split == split]
        if not chosen:
            raise DataError(f"{data_dir / 'queries.jsonl'}: no queries in split {split!r}")
        emb = encoder.encode([q.text for q in chosen])
        splits[split] = build_lists(chosen, emb, judged, retriever, num_candidates)
    name = data_dir.name
    return Dataset(items=items, schema=schema, features=features, splits=splits, name=name)
