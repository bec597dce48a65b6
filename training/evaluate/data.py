"""The judged dataset an evaluation reads: the whole catalog, the chosen split's queries and their judgments, with
the verdict training and indexing give every record (index.data.verdict)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from index.data.readers import find_data_file, find_judgments
from index.data.records import DataError, Item, Query
from index.data.verdict import read_catalog

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class EvalData:
    """A dataset read for evaluation: the whole catalog, the chosen queries and every judged grade of theirs."""

    name: str
    path: Path
    synthetic: bool
    items: list[Item]
    queries: list[Query]  # the chosen split's, in file order
    judged: dict[str, dict[str, int]]  # query id -> item id -> grade, for every judged pair of the chosen queries
    split: str
    queries_in_file: int


def is_synthetic(data_dir: Path) -> bool:
    """The embedded SYNTHETIC default (its generator writes dataset.json saying so) or a name that says it."""
    if "synthetic" in data_dir.resolve().name.lower():
        return True
    info = data_dir / "dataset.json"
    if not info.exists():
        return False
    try:
        raw = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and (bool(raw.get("synthetic")) or "synthetic" in str(raw.get("name", "")).lower())


def load_eval_data(data_dir: Path, split: str = "test") -> EvalData:
    """Items, the `split` queries (or every query for "all") and their judgments; DataError says what is wrong."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist (run `make data` for the SYNTHETIC default)")
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if find_data_file(data_dir, "items") is None:
        raise DataError(f"{data_dir} has no items.jsonl or items.parquet")
    queries_file = find_data_file(data_dir, "queries")
    if queries_file is None:
        raise DataError(f"{data_dir} has no queries.jsonl or queries.parquet")
    judgments_file = find_judgments(data_dir)
    if not judgments_file.exists():
        raise DataError(
            f"{data_dir} has no judgments (judgments.jsonl, judgments.parquet or a TREC qrels file): "
            "there is nothing to measure quality against"
        )
    # The verdict training and indexing give (index.data.verdict): skipped items, judgments and unjudged queries are
    # left out here as there, each defect logged once.
    screened = read_catalog(data_dir)
    screened.log(log)
    items, queries, judgments = screened.items, screened.queries, screened.judgments
    if not judgments:
        raise DataError(f"{judgments_file} holds no usable judgments: there is nothing to measure quality against")
    chosen = [q for q in screened.judged_queries if split == "all" or q.split == split]
    if not chosen:
        raise DataError(f"{data_dir}: no queries in split {split!r}")
    wanted = {q.id for q in chosen}
    judged: dict[str, dict[str, int]] = {q.id: {} for q in chosen}
    for j in judgments:
        if j.query_id in wanted:
            judged[j.query_id][j.item_id] = j.grade
    if not any(judged.values()):
        raise DataError(f"{data_dir}: none of the {len(chosen)} queries of split {split!r} has a judgment")
    return EvalData(
        data_dir.resolve().name, data_dir, is_synthetic(data_dir), items, chosen, judged, split, len(queries)
    )
