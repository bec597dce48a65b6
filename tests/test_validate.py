"""The dataset validator: every problem reported with file, line and field; clean data reports nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.data.validate import Problem, Severity, validate
from training.synthetic import SyntheticConfig, write_dataset

from .clip_fixtures import ROOT, picture


def _jsonl(path: Path, lines: list[object]) -> None:
    """Records as JSON lines; bytes are written as they are (to plant undecodable lines)."""
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            handle.write(b"\n")


def _find(problems: list[Problem], file: str, line: int | None, field: str | None) -> Problem:
    matches = [p for p in problems if p.file.name == file and p.line == line and p.field == field]
    assert matches, f"no problem reported at {file}:{line} {field}; got {[str(p) for p in problems]}"
    return matches[0]


@pytest.fixture
def bad_dataset(tmp_path: Path) -> Path:
    picture(0).save(tmp_path / "a.jpg")
    _jsonl(
        tmp_path / "items.jsonl",
        [
            {"id": "a", "title": "pink gin fizz", "image": "a.jpg", "attributes": {"colour": "pink", "abv": 12.5}},
            {"id": "b", "title": "mojito", "image_embedding": [0.1] * 511},
            {"id": "a", "title": "again", "image": "a.jpg"},
            "caf\xe9 au lait".encode("latin-1"),
            {"id": "c", "title": "no picture", "image": "missing.jpg", "attributes": {"glass": {"kind": "coupe"}}},
            {"id": "d", "text": "uses the text field", "image_embedding": [0.0] * 512, "text_embedding": [1.0] * 3},
        ],
    )
    _jsonl(tmp_path / "queries.jsonl", [{"id": "q1", "text": "pink drink"}, {"id": "q2", "text": "", "split": "dev"}])
    _jsonl(
        tmp_path / "judgments.jsonl",
        [
            {"query_id": "q1", "item_id": "a", "grade": 3, "compliant": True},
            {"query_id": "q1", "item_id": "zzz", "grade": 1},
            {"query_id": "q1", "item_id": "b", "grade": 7},
            {"query_id": "q9", "item_id": "b", "grade": 2, "compliant": "yes"},
            {"query_id": "q1", "item_id": "a", "grade": 2},
        ],
    )
    return tmp_path


def test_every_planted_problem_is_reported_where_it_is(bad_dataset: Path) -> None:
    problems = validate(bad_dataset).problems
    assert "511 values, expected 512" in _find(problems, "items.jsonl", 2, "image_embedding").message
    assert "duplicates id 'a' (first on line 1)" in _find(problems, "items.jsonl", 3, "id").message
    assert "not valid UTF-8 (byte 0xe9" in _find(problems, "items.jsonl", 4, None).message
    assert "file not found" in _find(problems, "items.jsonl", 5, "image").message
    assert "flat map" in _find(problems, "items.jsonl", 5, "attributes.glass").message
    assert "3 values, expected 384" in _find(problems, "items.jsonl", 6, "text_embedding").message
    assert "non-empty string" in _find(problems, "queries.jsonl", 2, "text").message
    assert "must be one of train, val, test" in _find(problems, "queries.jsonl", 2, "split").message
    assert "unknown item 'zzz'" in _find(problems, "judgments.jsonl", 2, "item_id").message
    assert "integer 0..3, got 7" in _find(problems, "judgments.jsonl", 3, "grade").message
    assert "unknown query 'q9'" in _find(problems, "judgments.jsonl", 4, "query_id").message
    assert "true or false" in _find(problems, "judgments.jsonl", 4, "compliant").message
    assert "again (first on line 1)" in _find(problems, "judgments.jsonl", 5, None).message
    assert len(problems) == 13, [str(p) for p in problems]
    assert all(p.severity is Severity.ERROR for p in problems)


def test_qrels_and_parquet_are_checked_too(bad_dataset: Path) -> None:
    (bad_dataset / "judgments.jsonl").unlink()
    (bad_dataset / "qrels.txt").write_text("q1 0 a 3\nq1 0 nobody 1\nq1 0 a 7\nq1 0 a\n")
    items = [json.loads(line) for line in (bad_dataset / "items.jsonl").read_bytes().splitlines()[:3]]
    (bad_dataset / "items.jsonl").unlink()
    pq.write_table(
        pa.Table.from_pylist([{"id": i["id"], "title": i["title"], "image": "a.jpg"} for i in items]),
        bad_dataset / "items.parquet",
    )
    problems = validate(bad_dataset).problems
    assert "duplicates id 'a' (first on line 1)" in _find(problems, "items.parquet", 3, "id").message
    assert "unknown item 'nobody'" in _find(problems, "qrels.txt", 2, "item_id").message
    assert "integer 0..3, got 7" in _find(problems, "qrels.txt", 3, "grade").message
    assert "expected 4 columns" in _find(problems, "qrels.txt", 4, None).message


def test_the_synthetic_generator_writes_valid_user_data(tmp_path: Path) -> None:
    write_dataset(tmp_path, SyntheticConfig(seed=1, items=60, queries=20))
    report = validate(tmp_path)
    assert report.problems == [] and report.counts["items"] == 60 and report.counts["queries"] == 20


def test_cli_lists_problems_and_exits_non_zero(bad_dataset: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "index.data.validate", str(bad_dataset)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{bad_dataset / 'judgments.jsonl'}:3: error: grade: must be an integer 0..3, got 7" in lines
    assert lines[-1].endswith("13 errors, 0 warnings (4 items, 2 queries, 4 judgments read)")
