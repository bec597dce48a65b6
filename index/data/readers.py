"""Catalog items in the user data format (JSONL or Parquet; docs/data.md), read into typed records.

One item per line (or row): `id`, `title`, optional `attributes` (flat map of strings and numbers), and either an
`image` path or a precomputed `image_embedding`; optional precomputed `text_embedding`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file that cannot be used, with the file, line and field in the message."""


@dataclass(frozen=True)
class Item:
    """One catalog item as the user supplied it."""

    id: str
    title: str
    attributes: dict[str, Any] = field(default_factory=dict)
    image_embedding: list[float] | None = None
    text_embedding: list[float] | None = None
    image: str | None = None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each non-blank line; a bad line raises DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield number, record


DATA_SUFFIXES = (".jsonl", ".parquet")


def iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number from 1, record) for each row of a Parquet file; an unreadable file raises DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        # Parquet has no "absent": a column another row uses is null here, which reads as the field not given.
        yield number, {key: value for key, value in record.items() if value is not None}


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a JSONL (line numbers) or Parquet (row numbers) file, chosen by the file's suffix."""
    return iter_parquet(path) if path.suffix == ".parquet" else iter_jsonl(path)


def find_data_file(directory: Path, stem: str) -> Path | None:
    """`<stem>.jsonl` or `<stem>.parquet` in directory (JSONL first), or None when neither exists."""
    return next((directory / f"{stem}{s}" for s in DATA_SUFFIXES if (directory / f"{stem}{s}").exists()), None)


def items_path(data: Path) -> Path:
    """The items file of a dataset directory (items.jsonl or items.parquet), or data itself when it is a file."""
    if not data.is_dir():
        return data
    return find_data_file(data, "items") or data / "items.jsonl"


def read_items(path: Path) -> list[Item]:
    """Read items.jsonl or items.parquet; ids must be unique strings and titles present."""
    items: list[Item] = []
    seen: set[str] = set()
    for number, record in iter_records(path):
        item_id, title = record.get("id"), record.get("title", record.get("text"))
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"{path}:{number}: field 'id' must be a non-empty string")
        if item_id in seen:
            raise DataError(f"{path}:{number}: field 'id' duplicates {item_id!r}")
        if not isinstance(title, str):
            raise DataError(f"{path}:{number}: field 'title' must be a string")
        seen.add(item_id)
        items.append(
            Item(
                id=item_id,
                title=title,
                attributes=dict(record.get("attributes") or {}),
                image_embedding=record.get("image_embedding"),
                text_embedding=record.get("text_embedding"),
                image=record.get("image"),
            )
        )
    if not items:
        raise DataError(f"{path}: no items")
    return items
