"""The dataset validator: every problem reported with file, line and field; clean data reports nothing; items are
counted per modality, and a modality some items lack is one warning per file."""

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
    assert "integer 0..3, got 7" in _find(problems, "judgments.jsonl", 3, "grade").message
    assert "true or false" in _find(problems, "judgments.jsonl", 4, "compliant").message
    assert "again (first on line 1)" in _find(problems, "judgments.jsonl", 5, None).message
    # a judgment of an unknown item is not an error: training skips it, and the validator says so, counted
    unknown = _find(problems, "judgments.jsonl", 2, None)
    assert unknown.severity is Severity.WARNING and unknown.message == (
        "1 of 4 judgments name an item that is not in the catalog (judgments.jsonl:2 (q1 -> zzz)): skipped"
    )
    assert len(problems) == 12, [str(p) for p in problems]
    assert [p for p in problems if p.severity is not Severity.ERROR] == [unknown]


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
    assert "(qrels.txt:2 (q1 -> nobody)): skipped" in _find(problems, "qrels.txt", 2, None).message
    assert "integer 0..3, got 7" in _find(problems, "qrels.txt", 3, "grade").message
    assert "expected 4 columns" in _find(problems, "qrels.txt", 4, None).message


def test_the_synthetic_generator_writes_valid_user_data(tmp_path: Path) -> None:
    write_dataset(tmp_path, SyntheticConfig(seed=1, items=60, queries=20))
    report = validate(tmp_path)
    assert report.problems == [] and report.counts["items"] == 60 and report.counts["queries"] == 20
    assert report.counts["items_with_text"] == report.counts["items_with_image"] == 60


def test_cli_lists_problems_and_exits_non_zero(bad_dataset: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "index.data.validate", str(bad_dataset)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{bad_dataset / 'judgments.jsonl'}:3: error: grade: must be an integer 0..3, got 7" in lines
    # the modality counts are of what training will use: only item 'a' is well-formed
    assert lines[-1] == (
        f"{bad_dataset}: 11 errors, 1 warning; "
        "read 4 items (1 with text, 1 with an image, 1 with attributes), 1 queries, 4 judgments"
    )


def _counts(counts: dict[str, int]) -> tuple[int, int, int, int]:
    """(items, with text, with an image, with attributes)."""
    return counts["items"], counts["items_with_text"], counts["items_with_image"], counts["items_with_attributes"]


@pytest.mark.parametrize(
    ("item", "counts"),
    [
        ({"id": "a", "title": "text only", "text": "with an abstract"}, (1, 1, 0, 0)),
        ({"id": "a", "image_embedding": [0.0] * 512}, (1, 0, 1, 0)),
        ({"id": "a", "image": "a.jpg"}, (1, 0, 1, 0)),
        ({"id": "a", "attributes": {"glass": "coupe"}}, (1, 0, 0, 1)),
    ],
)
def test_an_item_needs_only_one_modality(tmp_path: Path, item: dict, counts: tuple[int, ...]) -> None:
    picture(0).save(tmp_path / "a.jpg")
    _jsonl(tmp_path / "items.jsonl", [item])
    report = validate(tmp_path)
    assert report.problems == [] and _counts(report.counts) == counts


def test_items_with_nothing_are_skipped_and_a_catalog_with_nothing_is_refused(tmp_path: Path) -> None:
    _jsonl(tmp_path / "items.jsonl", [{"id": "a", "title": "gin"}, {"id": "b", "title": ""}, {"id": "c"}])
    report = validate(tmp_path)
    assert report.errors == [] and len(report.warnings) == 1
    skipped = _find(report.problems, "items.jsonl", 2, None)
    assert skipped.message == (
        "2 of 3 items have nothing the model can use (no text, no image, no value of an attribute it reads: none) "
        "(items.jsonl:2 (b), items.jsonl:3 (c)): skipped: no candidate source can find them and the ranker has "
        "nothing to attend to"
    )
    assert report.counts["items_skipped"] == 2 and report.counts["items_kept"] == 1
    _jsonl(tmp_path / "items.jsonl", [{"id": "a"}, {"id": "b", "attributes": {}}])
    report = validate(tmp_path)
    catalog = _find(report.problems, "items.jsonl", None, None)
    assert catalog.severity is Severity.ERROR and catalog.message == (
        "no item has anything the model can use (text, an image, or a value of an attribute it reads: none); "
        "add a 'title' or 'text' to the items"
    )
    assert len(report.errors) == 1 and report.warnings == []


def test_a_modality_some_items_lack_is_one_warning_per_file(tmp_path: Path) -> None:
    """A big catalog missing pictures here and there gets one line per modality, not one per item."""
    items = [
        {
            "id": f"i{k}",
            **({"title": f"drink {k}"} if k % 10 else {}),  # every tenth item has no text
            **({"image_embedding": [0.0] * 512} if k >= 1500 else {}),  # the first 1,500 have no image
            "attributes": {"glass": "coupe"},  # all have attributes
        }
        for k in range(2000)
    ]
    _jsonl(tmp_path / "items.jsonl", items)
    report = validate(tmp_path)
    assert report.errors == [] and len(report.warnings) == 2
    text, image = report.warnings
    assert (text.line, text.field) == (1, None) and text.message == (
        "200 of 2000 items have no text the model can use (a 'title', a 'text' or a 'text_embedding'), the first of "
        "them here: they are ranked on what they have"
    )
    assert image.line == 1 and image.message.startswith("1500 of 2000 items have no image the model can use (an")
    assert _counts(report.counts) == (2000, 1800, 500, 2000)
    # a modality that no item has (a catalog without pictures) is no warning
    _jsonl(tmp_path / "items.jsonl", [{k: v for k, v in item.items() if k != "image_embedding"} for item in items])
    assert [w.message.split(" (")[0] for w in validate(tmp_path).warnings] == [
        "200 of 2000 items have no text the model can use"
    ]


def test_an_image_manifest_counts_as_images_only(tmp_path: Path) -> None:
    for k in range(3):
        picture(k).save(tmp_path / f"p{k}.jpg")
    (tmp_path / "manifest.csv").write_text("id,file\n" + "".join(f"p{k},p{k}.jpg\n" for k in range(3)))
    report = validate(tmp_path)
    assert report.problems == [] and _counts(report.counts) == (3, 0, 3, 0)
    assert report.summary() == "read 3 items (0 with text, 3 with an image, 0 with attributes)"
