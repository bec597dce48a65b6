"""Check a dataset in the user data format (docs/data.md) and report every problem with file, line and field.

Run as `python -m index.data.validate DIR` (or `make validate DATA=DIR`). DIR holds `items` (.jsonl or .parquet) or an
image `manifest.csv`, and optionally `queries`, `judgments` (.jsonl or .parquet) or TREC qrels (`qrels.txt`,
`judgments.qrels`). Unlike the readers, which stop at the first problem, the validator reads everything and lists
every problem it finds; it exits 1 when there is an error, 0 when there are only warnings or nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from index.cli_logging import configure_cli_logging
from index.data.readers import DataError, find_data_file, iter_parquet

log = logging.getLogger(__name__)

TEXT_DIM = 384  # all-MiniLM-L6-v2
IMAGE_DIM = 512  # CLIP ViT-B/32's projection
GRADES = range(0, 4)
SPLITS = ("train", "val", "test")
QRELS_FILES = ("qrels.txt", "judgments.qrels", "qrels")
ITEM_FIELDS = {"id", "title", "text", "image", "attributes", "image_embedding", "text_embedding"}
QUERY_FIELDS = {"id", "text", "constraints", "split"}
JUDGMENT_FIELDS = {"query_id", "item_id", "grade", "compliant"}


class Severity(StrEnum):
    ERROR = "error"  # the data cannot be used as it is
    WARNING = "warning"  # usable, but probably not what was meant


@dataclass(frozen=True)
class Problem:
    """One problem: where (file, line or row from 1, field) and what."""

    file: Path
    line: int | None
    field: str | None
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        what = f"{self.field}: {self.message}" if self.field else self.message
        return f"{where}: {self.severity.value}: {what}"


@dataclass
class Report:
    """Every problem found, and what was read."""

    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


class _Checker:
    """Collects problems for one file."""

    def __init__(self, report: Report, path: Path) -> None:
        self.report, self.path = report, path

    def error(self, line: int | None, field_name: str | None, message: str) -> None:
        self.report.problems.append(Problem(self.path, line, field_name, message))

    def warn(self, line: int | None, field_name: str | None, message: str) -> None:
        self.report.problems.append(Problem(self.path, line, field_name, message, Severity.WARNING))


def _records(path: Path, check: _Checker) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each record of a JSONL or Parquet file; undecodable lines are reported and skipped."""
    if path.suffix == ".parquet":
        try:
            yield from iter_parquet(path)
        except DataError as exc:
            check.error(None, None, str(exc).removeprefix(f"{path}: "))
        return
    for number, line in _text_lines(path, check):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            check.error(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            check.error(number, None, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield number, record


def _text_lines(path: Path, check: _Checker) -> Iterator[tuple[int, str]]:
    """(line number, text) of each UTF-8 line; a line that is not UTF-8 is reported with its byte and skipped."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                check.error(number, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_flat_map(check: _Checker, line: int, name: str, value: Any) -> None:
    if not isinstance(value, dict):
        check.error(line, name, f"must be an object of names to strings or numbers, got {type(value).__name__}")
        return
    for key, entry in value.items():
        if entry is None or isinstance(entry, (str, bool)):
            continue
        if _is_number(entry):
            if not math.isfinite(entry):
                check.error(line, f"{name}.{key}", f"must be a finite number, got {entry!r}")
        else:
            check.error(line, f"{name}.{key}", f"must be a string or a number (a flat map), got {type(entry).__name__}")


def _check_vector(check: _Checker, line: int, name: str, value: Any, dim: int) -> None:
    if not isinstance(value, list):
        check.error(line, name, f"must be a list of {dim} numbers, got {type(value).__name__}")
    elif len(value) != dim:
        check.error(line, name, f"has {len(value)} values, expected {dim}")
    elif not all(_is_number(v) and math.isfinite(v) for v in value):
        bad = next(i for i, v in enumerate(value) if not (_is_number(v) and math.isfinite(v)))
        check.error(line, name, f"value {bad} is {value[bad]!r}, not a finite number")


def _check_items(
    path: Path, report: Report, text_dim: int, image_dim: int, check_images: bool
) -> dict[str, int] | None:
    """Item id -> line, or None when the file could not be read at all."""
    check = _Checker(report, path)
    ids: dict[str, int] = {}
    kinds: dict[str, dict[str, int]] = {}  # attribute -> type name -> first line
    for number, record in _records(path, check):
        item_id = record.get("id")
        if not isinstance(item_id, str) or not item_id:
            check.error(number, "id", f"must be a non-empty string, got {item_id!r}")
        elif item_id in ids:
            check.error(number, "id", f"duplicates id {item_id!r} (first on line {ids[item_id]})")
        else:
            ids[item_id] = number
        title_field = "title" if "title" in record else "text"
        title = record.get(title_field)
        if not isinstance(title, str):
            check.error(number, "title", f"must be a string (field 'title' or 'text'), got {title!r}")
        elif not title.strip():
            check.warn(number, title_field, "is empty: the item can only be found through its image")
        if "attributes" in record:
            _check_flat_map(check, number, "attributes", record["attributes"])
            if isinstance(record["attributes"], dict):
                for key, entry in record["attributes"].items():
                    kind = "number" if _is_number(entry) else "string" if isinstance(entry, (str, bool)) else None
                    if kind is not None:
                        kinds.setdefault(key, {}).setdefault(kind, number)
        if "text_embedding" in record:
            _check_vector(check, number, "text_embedding", record["text_embedding"], text_dim)
        if "image_embedding" in record:
            _check_vector(check, number, "image_embedding", record["image_embedding"], image_dim)
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            check.error(number, "image", f"must be a file path (string), got {type(image).__name__}")
        elif (
            isinstance(image, str)
            and check_images
            and "image_embedding" not in record
            and not (path.parent / image).is_file()
        ):
            check.error(number, "image", f"file not found: {path.parent / image}")
        if image is None and "image_embedding" not in record:
            check.error(number, "image", "every item needs an 'image' path or an 'image_embedding'")
        for unknown in sorted(set(record) - ITEM_FIELDS):
            check.warn(number, unknown, "unknown field, ignored")
    for key, seen in sorted(kinds.items()):
        if len(seen) > 1:
            check.warn(
                seen["string"],
                f"attributes.{key}",
                f"is a string here but a number on line {seen['number']}: one type per attribute, please",
            )
    report.counts["items"] = len(ids)
    if not ids and not report.errors:
        check.error(None, None, "no items")
    return ids


def _check_manifest(path: Path, report: Report, check_images: bool) -> dict[str, int]:
    """An image manifest (id, file[, md5]) read as items."""
    check = _Checker(report, path)
    ids: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "file"} - set(reader.fieldnames or [])
            if missing:
                check.error(1, None, f"missing column(s) {', '.join(sorted(missing))}")
                return ids
            for number, row in enumerate(reader, start=2):
                item_id, file = (row.get("id") or "").strip(), (row.get("file") or "").strip()
                if not item_id:
                    check.error(number, "id", "must be non-empty")
                elif item_id in ids:
                    check.error(number, "id", f"duplicates id {item_id!r} (first on line {ids[item_id]})")
                else:
                    ids[item_id] = number
                if not file:
                    check.error(number, "file", "must be non-empty")
                elif check_images and not (path.parent / file).is_file():
                    check.error(number, "file", f"file not found: {path.parent / file}")
    except UnicodeDecodeError as exc:
        check.error(None, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    report.counts["items"] = len(ids)
    return ids


def _check_queries(path: Path, report: Report) -> dict[str, int]:
    check = _Checker(report, path)
    ids: dict[str, int] = {}
    for number, record in _records(path, check):
        qid, text = record.get("id"), record.get("text")
        if not isinstance(qid, str) or not qid:
            check.error(number, "id", f"must be a non-empty string, got {qid!r}")
        elif qid in ids:
            check.error(number, "id", f"duplicates id {qid!r} (first on line {ids[qid]})")
        else:
            ids[qid] = number
        if not isinstance(text, str) or not text.strip():
            check.error(number, "text", f"must be a non-empty string, got {text!r}")
        if "split" in record and record["split"] not in SPLITS:
            check.error(number, "split", f"must be one of {', '.join(SPLITS)}, got {record['split']!r}")
        if "constraints" in record:
            _check_flat_map(check, number, "constraints", record["constraints"])
        for unknown in sorted(set(record) - QUERY_FIELDS):
            check.warn(number, unknown, "unknown field, ignored")
    report.counts["queries"] = len(ids)
    return ids


def _check_judgment(
    check: _Checker,
    number: int,
    record: dict[str, Any],
    queries: dict[str, int] | None,
    items: dict[str, int] | None,
    seen: dict[tuple[str, str], int],
) -> None:
    qid, iid, grade = record.get("query_id"), record.get("item_id"), record.get("grade")
    if not isinstance(qid, str) or not qid:
        check.error(number, "query_id", f"must be a non-empty string, got {qid!r}")
    elif queries is not None and qid not in queries:
        check.error(number, "query_id", f"unknown query {qid!r}")
    if not isinstance(iid, str) or not iid:
        check.error(number, "item_id", f"must be a non-empty string, got {iid!r}")
    elif items is not None and iid not in items:
        check.error(number, "item_id", f"unknown item {iid!r}")
    if not isinstance(grade, int) or isinstance(grade, bool) or grade not in GRADES:
        check.error(number, "grade", f"must be an integer 0..3, got {grade!r}")
    if "compliant" in record and not isinstance(record["compliant"], bool):
        check.error(number, "compliant", f"must be true or false, got {record['compliant']!r}")
    if isinstance(qid, str) and isinstance(iid, str):
        if (qid, iid) in seen:
            check.error(number, None, f"judges ({qid!r}, {iid!r}) again (first on line {seen[(qid, iid)]})")
        else:
            seen[(qid, iid)] = number


def _check_judgments(path: Path, report: Report, queries: dict[str, int] | None, items: dict[str, int] | None) -> None:
    check = _Checker(report, path)
    seen: dict[tuple[str, str], int] = {}
    for number, record in _records(path, check):
        _check_judgment(check, number, record, queries, items, seen)
        for unknown in sorted(set(record) - JUDGMENT_FIELDS):
            check.warn(number, unknown, "unknown field, ignored")
    report.counts["judgments"] = len(seen)


def _check_qrels(path: Path, report: Report, queries: dict[str, int] | None, items: dict[str, int] | None) -> None:
    """TREC qrels: `query_id iteration item_id grade` per line, whitespace-separated."""
    check = _Checker(report, path)
    seen: dict[tuple[str, str], int] = {}
    for number, line in _text_lines(path, check):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            check.error(number, None, f"expected 4 columns (query_id iteration item_id grade), got {len(parts)}")
            continue
        grade: Any = int(parts[3]) if parts[3].lstrip("-").isdigit() else parts[3]
        record = {"query_id": parts[0], "item_id": parts[2], "grade": grade}
        _check_judgment(check, number, record, queries, items, seen)
    report.counts["judgments"] = len(seen)


def find_qrels(directory: Path) -> Path | None:
    return next((directory / n for n in QRELS_FILES if (directory / n).exists()), None)


def validate(data: Path, *, text_dim: int = TEXT_DIM, image_dim: int = IMAGE_DIM, check_images: bool = True) -> Report:
    """Check every file of the dataset at `data` (a directory); returns all problems found."""
    data = Path(data)
    report = Report()
    if not data.is_dir():
        report.problems.append(Problem(data, None, None, "not a dataset directory"))
        return report
    items_file = find_data_file(data, "items")
    items: dict[str, int] | None = None
    if items_file is not None:
        items = _check_items(items_file, report, text_dim, image_dim, check_images)
    elif (data / "manifest.csv").exists():
        items = _check_manifest(data / "manifest.csv", report, check_images)
    else:
        report.problems.append(Problem(data, None, None, "no items.jsonl, items.parquet or manifest.csv"))
    queries_file = find_data_file(data, "queries")
    queries = _check_queries(queries_file, report) if queries_file is not None else None
    judgments_file = find_data_file(data, "judgments")
    qrels_file = find_qrels(data)
    if judgments_file is not None:
        _check_judgments(judgments_file, report, queries, items)
    elif qrels_file is not None:
        _check_qrels(qrels_file, report, queries, items)
    if (judgments_file is not None or qrels_file is not None) and queries_file is None:
        report.problems.append(Problem(data, None, None, "judgments without a queries file", Severity.WARNING))
    return report


def _dims_from_model(model_dir: Path) -> tuple[int, int]:
    from index.runtime.exported_model import ModelCard

    schema = ModelCard.load(model_dir).schema
    return schema.text_dim, schema.image_dim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m index.data.validate", description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="dataset directory")
    parser.add_argument("--model", type=Path, default=None, help="take the vector dimensions from this model card")
    parser.add_argument("--text-dim", type=int, default=TEXT_DIM)
    parser.add_argument("--image-dim", type=int, default=IMAGE_DIM)
    parser.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")
    parser.add_argument("--max-problems", type=int, default=200, help="print at most this many (all are counted)")
    args = parser.parse_args(argv)
    configure_cli_logging()
    text_dim, image_dim = args.text_dim, args.image_dim
    if args.model is not None:
        try:
            text_dim, image_dim = _dims_from_model(args.model)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    report = validate(args.data, text_dim=text_dim, image_dim=image_dim, check_images=not args.no_image_check)
    for problem in report.problems[: args.max_problems]:
        print(problem)
    if len(report.problems) > args.max_problems:
        print(f"... and {len(report.problems) - args.max_problems} more")
    counts = ", ".join(f"{n} {name}" for name, n in report.counts.items()) or "nothing"
    print(f"{args.data}: {len(report.errors)} errors, {len(report.warnings)} warnings ({counts} read)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
