"""`JudgmentLog`: grades given in the relevance workbench, written in the project's data format (docs/data.md), so
that `make train DATA=<its folder>` reads them: a line `{"query_id", "item_id", "grade"}` in the judgments file the
settings name, and for a query not yet in the folder's `queries.jsonl`, a line `{"id", "text"}` there first.

A new grade is one appended line, written with one `write` and fsynced before it is answered, so a crash leaves
whole lines; a changed grade rewrites the judgments file beside itself and renames it over the old one, so the file
is the old one or the new one, never a mix. One lock orders the writers of one process; nothing else writes these
files while the service runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

GRADES = range(4)  # 0 (not relevant) to 3 (perfect), as the data format's grades


@dataclass(frozen=True)
class JudgedCounts:
    """What the judgments file holds now."""

    queries: int
    judgments: int


class JudgmentLog:
    """The judgments file and the queries file beside it, read at start and kept in step with every grade."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.queries_path = path.with_name("queries.jsonl")
        self._lock = threading.Lock()
        self._query_ids = {row["text"]: row["id"] for row in _rows(self.queries_path) if "id" in row and "text" in row}
        self._grades: dict[tuple[str, str], int] = {
            (row["query_id"], row["item_id"]): row["grade"]
            for row in _rows(path)
            if {"query_id", "item_id", "grade"} <= row.keys()
        }

    def counts(self) -> JudgedCounts:
        with self._lock:
            return JudgedCounts(len({query for query, _ in self._grades}), len(self._grades))

    def grade(self, query: str, item_id: str, grade: int) -> JudgedCounts:
        """Record `grade` for (`query`, `item_id`): a new line, or the file rewritten when the pair had another."""
        if grade not in GRADES:
            raise ValueError(f"grade: {grade} is not a grade; grades are 0 to 3")
        with self._lock:
            query_id = self._query_ids.get(query)
            if query_id is None:
                query_id = "ui-" + hashlib.sha256(query.encode()).hexdigest()[:12]
                _append(self.queries_path, {"id": query_id, "text": query})
                self._query_ids[query] = query_id
            key = (query_id, item_id)
            before = self._grades.get(key)
            self._grades[key] = grade
            if before is None:
                _append(self.path, {"query_id": query_id, "item_id": item_id, "grade": grade})
            elif before != grade:
                self._rewrite()
            return JudgedCounts(len({q for q, _ in self._grades}), len(self._grades))

    def _rewrite(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        lines = "".join(
            json.dumps({"query_id": q, "item_id": i, "grade": g}) + "\n" for (q, i), g in self._grades.items()
        )
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


def _append(path: Path, row: dict[str, object]) -> None:
    """One whole line, in one write, on disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (json.dumps(row) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _rows(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (none when it is absent; a line that is not one is left alone)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
