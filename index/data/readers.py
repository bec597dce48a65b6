"""One reader per file kind of the user data format: items, queries, judgments (or TREC qrels), image manifests.

Each kind is read by one `scan_*` function that decodes the file, parses every record with `index.data.records`
and applies the rules of the format that span records (unique ids, one judgment per pair). Where its problems go is
the caller's choice: `RaiseOnError` stops at the first error (training, indexing and ingestion), the validator
collects them all (`index.data.validate`). What a well-formed record is worth to the model (an item with nothing
to rank on, a judgment of an unknown item, a query nobody judged) is decided after the scan, by `index.data.verdict`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol

from index.data.records import (
    DATA_SUFFIXES,
    QRELS_FILES,
    DataError,
    ImageRow,
    Item,
    Judgment,
    Parsed,
    Query,
    Record,
    Severity,
    VectorDims,
    fold_split,
    hash_split,
    parse_image_row,
    parse_item,
    parse_judgment,
    parse_qrels_line,
    parse_query,
)


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
class Scanned(Generic[Record]):
    """What a scan read: the usable records, and the line of every record that named a key (an id, or a judged
    pair), usable or not, so that references to a record with a bad field are not reported again as unknown."""

    records: list[Record]
    lines: dict[Any, int] = field(default_factory=dict)

    @property
    def keys(self) -> set[Any]:
        return set(self.lines)


class ProblemSink(Protocol):
    """Where a scan sends the problems it finds."""

    def add(self, problem: Problem) -> None: ...


class RaiseOnError:
    """The readers' sink: the first error raises DataError naming file, line and field; warnings are ignored."""

    def add(self, problem: Problem) -> None:
        if problem.severity is Severity.ERROR:
            raise DataError(str(problem).replace(": error: ", ": ", 1))


class _File:
    """A scan of one file: problems are located here and sent to the sink."""

    def __init__(self, path: Path, sink: ProblemSink) -> None:
        self.path, self.sink = path, sink

    def error(self, line: int | None, field_name: str | None, message: str) -> None:
        self.sink.add(Problem(self.path, line, field_name, message))

    def warn(self, line: int | None, field_name: str | None, message: str) -> None:
        self.sink.add(Problem(self.path, line, field_name, message, Severity.WARNING))

    def report(self, line: int, parsed: Parsed[Record]) -> Record | None:
        for p in parsed.problems:
            self.sink.add(Problem(self.path, line, p.field, p.message, p.severity))
        return parsed.record


def find_data_file(directory: Path, stem: str) -> Path | None:
    """`<stem>.jsonl` or `<stem>.parquet` in directory (JSONL first), or None when neither exists."""
    return next((directory / f"{stem}{s}" for s in DATA_SUFFIXES if (directory / f"{stem}{s}").exists()), None)


def find_qrels(directory: Path) -> Path | None:
    return next((directory / n for n in QRELS_FILES if (directory / n).exists()), None)


def find_judgments(directory: Path) -> Path:
    """judgments.jsonl / judgments.parquet, else a TREC qrels file; the JSONL name when there is none."""
    return find_data_file(directory, "judgments") or find_qrels(directory) or directory / "judgments.jsonl"


def items_path(data: Path) -> Path:
    """The items file of a dataset directory (items.jsonl or items.parquet), or data itself when it is a file."""
    if not data.is_dir():
        return data
    return find_data_file(data, "items") or data / "items.jsonl"


def _is_qrels(path: Path) -> bool:
    return path.name in QRELS_FILES or path.suffix == ".qrels"


def _text_lines(scan: _File) -> Iterator[tuple[int, str]]:
    """(line number, text) of each UTF-8 line; a line that is not UTF-8 is reported with its byte and skipped."""
    if not scan.path.exists():
        scan.error(None, None, "file not found")
        return
    with open(scan.path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                scan.error(number, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")


def _parquet_rows(scan: _File) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not scan.path.exists():
        scan.error(None, None, "file not found")
        return
    try:
        table = pq.read_table(scan.path)
    except (OSError, pa.ArrowException) as exc:
        scan.error(None, None, f"not a readable Parquet file ({str(exc).splitlines()[0]})")
        return
    for number, record in enumerate(table.to_pylist(), start=1):
        # Parquet has no "absent": a column another row uses is null here, which reads as the field not given.
        yield number, {key: value for key, value in record.items() if value is not None}


def _records(scan: _File) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) of a JSONL or Parquet file; undecodable lines are reported and skipped."""
    if scan.path.suffix == ".parquet":
        yield from _parquet_rows(scan)
        return
    for number, line in _text_lines(scan):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            scan.error(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            scan.error(number, None, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield number, record


def _unique(scan: _File, seen: dict[str, int], number: int, key: str, what: str = "id") -> bool:
    if key in seen:
        scan.error(number, what, f"duplicates id {key!r} (first on line {seen[key]})")
        return False
    seen[key] = number
    return True


def scan_items(
    path: Path, sink: ProblemSink, *, dims: VectorDims | None = None, image_exists: Callable[[str], bool] | None = None
) -> Scanned[Item]:
    """Items of a JSONL or Parquet file. `image_exists` (given a path relative to the file) checks image files."""
    scan = _File(path, sink)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for number, raw in _records(scan):
        item = scan.report(number, parse_item(raw, dims))
        if isinstance(raw.get("id"), str) and raw["id"] and not _unique(scan, seen, number, raw["id"]):
            continue
        image = raw.get("image")
        if (
            image_exists is not None
            and isinstance(image, str)
            and "image_embedding" not in raw
            and not image_exists(image)
        ):
            scan.error(number, "image", f"file not found: {path.parent / image}")
        if item is not None:
            items.append(item)
    return Scanned(items, seen)


def scan_queries(path: Path, sink: ProblemSink) -> Scanned[Query]:
    """Queries of a JSONL or Parquet file, with `split` as the data gives it (None when absent)."""
    scan = _File(path, sink)
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for number, raw in _records(scan):
        query = scan.report(number, parse_query(raw))
        if isinstance(raw.get("id"), str) and raw["id"] and not _unique(scan, seen, number, raw["id"]):
            continue
        if query is not None:
            queries.append(query)
    return Scanned(queries, seen)


def _judgment_lines(scan: _File) -> Iterator[tuple[int, Parsed[Judgment], tuple[str, str] | None]]:
    """(line, parsed judgment, (query id, item id) when both are non-empty strings) of a judgments or qrels file."""
    if _is_qrels(scan.path):
        for number, line in _text_lines(scan):
            parts = line.split()
            if parts:
                yield number, parse_qrels_line(parts), (parts[0], parts[2]) if len(parts) == 4 else None
        return
    for number, raw in _records(scan):
        query_id, item_id = raw.get("query_id"), raw.get("item_id")
        named = isinstance(query_id, str) and query_id and isinstance(item_id, str) and item_id
        pair = (str(query_id), str(item_id)) if named else None
        yield number, parse_judgment(raw), pair


def scan_judgments(path: Path, sink: ProblemSink) -> Scanned[Judgment]:
    """Judgments of a JSONL/Parquet file or TREC qrels (whether their queries and items exist is the verdict's)."""
    scan = _File(path, sink)
    judgments: list[Judgment] = []
    seen: dict[tuple[str, str], int] = {}
    for number, parsed, pair in _judgment_lines(scan):
        judgment = scan.report(number, parsed)
        if pair is None:
            continue
        if pair in seen:
            scan.error(number, None, f"judges ({pair[0]!r}, {pair[1]!r}) again (first on line {seen[pair]})")
            continue
        seen[pair] = number
        if judgment is not None:
            judgments.append(judgment)
    return Scanned(judgments, seen)


def scan_image_manifest(
    path: Path, sink: ProblemSink, *, image_exists: Callable[[str], bool] | None = None
) -> Scanned[ImageRow]:
    """Rows of an image manifest CSV (at least `id` and `file` columns)."""
    scan = _File(path, sink)
    rows: list[ImageRow] = []
    seen: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "file"} - set(reader.fieldnames or [])
            if missing:
                scan.error(1, None, f"missing column(s) {', '.join(sorted(missing))} (need id and file)")
                return Scanned(rows)
            for number, raw in enumerate(reader, start=2):
                row = scan.report(number, parse_image_row(raw))
                if row is None or not _unique(scan, seen, number, row.id):
                    continue
                if image_exists is not None and not image_exists(row.file):
                    scan.error(number, "file", f"file not found: {path.parent / row.file}")
                rows.append(row)
    except FileNotFoundError:
        scan.error(None, None, "file not found")
    except UnicodeDecodeError as exc:
        scan.error(None, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    return Scanned(rows, seen)


def _not_empty(path: Path, records: list[Any], what: str) -> None:
    if not records:
        raise DataError(f"{path}: no {what}")


def read_items(path: Path) -> list[Item]:
    """Items of items.jsonl or items.parquet; stops at the first error."""
    items = scan_items(path, RaiseOnError()).records
    _not_empty(path, items, "items")
    return items


def assign_splits(queries: list[Query], fold: tuple[int, int] | None = None) -> list[Query]:
    """Every query with its split. With `fold` = (f, K), splits are K-fold cross-validation's for fold f
    (`fold_split`), whatever the data says; otherwise, when no query names a split, every query is split by
    `hash_split`; when some do, the others are training queries."""
    if fold is not None:
        return [dataclasses.replace(q, split=fold_split(q.id, *fold)) for q in queries]
    named = any(q.split is not None for q in queries)
    return [dataclasses.replace(q, split=q.split or ("train" if named else hash_split(q.id))) for q in queries]


def read_image_manifest(path: Path) -> list[ImageRow]:
    """Rows of an image manifest CSV; stops at the first error."""
    rows = scan_image_manifest(path, RaiseOnError()).records
    _not_empty(path, rows, "items")
    return rows
