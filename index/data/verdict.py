"""What each record of a catalog is worth to the model: one verdict, shared by every command.

The readers (`index.data.readers`) parse records and stop at, or collect, the ones that break the format. What is
left is decided here, with the feature schema the model reads (learnt from the catalog as training learns it, or a
trained model's): `make validate`, `make train`, `make index`, `make ingest`, `make evaluate` and `make crossval`
all call `read_catalog`, so the validator predicts exactly what training and indexing do with each record.

Everyday defects of real catalogs are counted and named, never fatal:

- an item with nothing the model can use (no text, no image, and no attribute value the schema reads) is skipped:
  no candidate source can find it (BM25 and MiniLM need text, the learned space needs some token) and the ranker
  has no token to attend to, so there is no honest place to rank it;
- a judgment of an unknown or skipped item, or of an unknown query, is skipped;
- a query without judgments is kept (it is still a query to serve) but left out of training and evaluation;
- a blank (whitespace-only) title or text is read as absent;
- an attribute that is a number in some records and a string in others is read as a number, its strings as missing;
- a text longer than the text encoder's limit is embedded from its start (BM25 indexes every word).

Only a catalog where no item is left refuses, in one sentence.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from index.data.readers import (
    Problem,
    ProblemSink,
    RaiseOnError,
    Scanned,
    assign_splits,
    find_data_file,
    find_judgments,
    items_path,
    scan_image_manifest,
    scan_items,
    scan_judgments,
    scan_queries,
)
from index.data.records import (
    IMAGE_MANIFEST,
    MODALITY_FIELDS,
    TEXT_DIM,
    DataError,
    Item,
    Judgment,
    Modality,
    Query,
    Severity,
    VectorDims,
)
from model.schema import CategoricalField, FeatureSchema, NumericField

MAX_CATEGORICAL_VALUES = 64  # more distinct values than this is an id-like field, not a category
NAMED = 3  # each warning names this many records, then counts the rest


def schema_from_items(items: Sequence[Item], text_dim: int, image_dim: int, text_encoder: str) -> FeatureSchema:
    """Infer the attribute vocabulary (strings -> categorical, numbers -> numeric) from a training catalog.

    A string attribute with more than MAX_CATEGORICAL_VALUES distinct values is id-like and dropped; an attribute
    that is a number anywhere is numeric (its string values then read as missing)."""
    strings: dict[str, set[str]] = {}
    numbers: dict[str, list[float]] = {}
    for item in items:
        for name, value in item.attributes.items():
            if isinstance(value, (bool, str)):
                strings.setdefault(name, set()).add(str(value))
            elif isinstance(value, (int, float)):
                numbers.setdefault(name, []).append(float(value))
    categorical = tuple(
        CategoricalField(name, tuple(sorted(values)))
        for name, values in sorted(strings.items())
        if len(values) <= MAX_CATEGORICAL_VALUES and name not in numbers
    )
    numeric = tuple(
        NumericField(name, float(np.mean(v)), float(np.std(v) or 1.0)) for name, v in sorted(numbers.items())
    )
    return FeatureSchema(
        text_dim=text_dim, image_dim=image_dim, categorical=categorical, numeric=numeric, text_encoder=text_encoder
    )


def usable_modalities(items: Sequence[Item], schema: FeatureSchema) -> list[frozenset[Modality]]:
    """What the model can use of each item: its modalities, less attributes when the schema reads none of its values
    (an attribute token of 'missing' flags says nothing about the item, so featurisation masks it)."""
    read = schema.attributes_present(schema.encode_attributes([item.attributes for item in items]))
    return [item.modalities if ok else item.modalities - {Modality.ATTRIBUTES} for item, ok in zip(items, read)]


@dataclass(frozen=True)
class Place:
    """Where a record is: file, line (from 1) and its key (an id, or a judged pair)."""

    file: Path
    line: int | None
    key: str

    def __str__(self) -> str:
        where = self.file.name if self.line is None else f"{self.file.name}:{self.line}"
        return f"{where} ({self.key})"


@dataclass
class Defect:
    """One kind of defect in one file: how many records, which (the first few are named), and what is done."""

    kind: str  # the key of `Screened.counts`
    what: str  # e.g. "items have nothing the model can use (...)"
    outcome: str  # e.g. "skipped: ..."
    places: list[Place]
    out_of: int | None = None  # "2 of 1400 items"

    def message(self) -> str:
        count = f"{len(self.places)} of {self.out_of}" if self.out_of is not None else str(len(self.places))
        named = ", ".join(str(p) for p in self.places[:NAMED])
        more = f" and {len(self.places) - NAMED} more" if len(self.places) > NAMED else ""
        return f"{count} {self.what} ({named}{more}): {self.outcome}"

    def problem(self) -> Problem:
        """The defect as one validator warning, located at its first record."""
        first = self.places[0]
        return Problem(first.file, first.line, None, self.message(), Severity.WARNING)


@dataclass
class Screened:
    """A catalog as every command uses it: the records kept, the schema that decided, and each defect found."""

    items: list[Item]  # kept, in catalog order
    schema: FeatureSchema
    source: Path  # the items file or image manifest
    item_lines: dict[str, int]  # item id -> its line (or row) in `source`, for every item that named one
    items_read: int  # well-formed items (a format error stops every command but the validator)
    queries: list[Query] = field(default_factory=list)  # every query, for serving (see `judged_queries`)
    judgments: list[Judgment] = field(default_factory=list)  # of kept items and known queries
    judgments_read: int | None = None  # None when there is no judgments file
    defects: list[Defect] = field(default_factory=list)
    modalities: dict[Modality, int] = field(default_factory=dict)  # kept items with each usable modality
    first_without: dict[Modality, Place] = field(default_factory=dict)  # the first kept item lacking each
    text: dict[str, int] = field(default_factory=dict)  # texts embedded / truncated / the limit (bundle manifest)
    image_md5: dict[str, str] = field(default_factory=dict)  # an image manifest's recorded md5 per item id

    def place(self, item: Item) -> Place:
        return Place(self.source, self.item_lines.get(item.id), item.id)

    def measure_texts(self, measure: TextMeasure) -> None:
        """Count (in `text`, for the bundle manifest) and name (a `long_texts` defect) the kept items' texts that
        the text encoder embeds from their start only."""
        embedded = [item for item in self.items if item.text_embedding is None and Modality.TEXT in item.modalities]
        counts = measure.token_counts([item.full_text for item in embedded]) if embedded else np.zeros(0)
        long = [self.place(item) for item, n in zip(embedded, counts) if n > measure.max_tokens]
        self.text = {"encoded": len(embedded), "truncated": len(long), "max_tokens": measure.max_tokens}
        if long:
            self.defects.append(
                Defect(
                    "long_texts",
                    f"items have a text longer than the text encoder's {measure.max_tokens} word pieces",
                    "embedded from its start only; BM25 indexes every word",
                    long,
                    len(embedded),
                )
            )

    @property
    def judged_queries(self) -> list[Query]:
        judged = {j.query_id for j in self.judgments}
        return [q for q in self.queries if q.id in judged]

    @property
    def counts(self) -> dict[str, int]:
        """How many records each defect touched (every kind, 0 when none), and what was kept: the figures
        `make validate` prints and training records, equal by construction."""
        counts = dict.fromkeys(DEFECT_KINDS, 0)
        for defect in self.defects:
            counts[defect.kind] += len(defect.places)
        counts.update(items_read=self.items_read, items_kept=len(self.items), judgments_kept=len(self.judgments))
        return counts

    def log(self, logger: logging.Logger) -> None:
        """Each defect as one warning line."""
        for defect in self.defects:
            logger.warning("%s", defect.message())


DEFECT_KINDS = (
    "items_skipped",
    "blank_fields",
    "attribute_type_mismatches",
    "long_texts",
    "judgments_unknown_item",
    "judgments_skipped_item",
    "judgments_unknown_query",
    "queries_unjudged",
)


class TextMeasure(Protocol):
    """The text encoder's measure of a text (`index.runtime.text_encoder.TextEncoder` is one)."""

    max_tokens: int  # longer texts are embedded from their start only

    def token_counts(self, texts: list[str]) -> np.ndarray: ...


def _blank(value: str) -> bool:
    return bool(value) and value.isspace()


def _mixed_types(screened: Screened, items: Sequence[Item]) -> list[Defect]:
    """One defect per numeric attribute that some items give as a string: the schema reads those as missing."""
    defects = []
    for numeric in screened.schema.numeric:
        strings = [screened.place(item) for item in items if isinstance(item.attributes.get(numeric.name), (str, bool))]
        if strings:
            defects.append(
                Defect(
                    "attribute_type_mismatches",
                    f"items give attributes.{numeric.name} as a string, elsewhere it is a number",
                    "read as a number, so these values count as missing; one type per attribute, please",
                    strings,
                    len(items),
                )
            )
    return defects


def screen_items(
    scanned: Scanned[Item], file: Path, schema: FeatureSchema, text_measure: TextMeasure | None = None
) -> Screened:
    """The verdict on each item (see the module's docstring); a catalog where no item is left raises DataError."""
    items = scanned.records
    usable = usable_modalities(items, schema)
    kept = [item for item, has in zip(items, usable) if has]
    attributes = ", ".join(schema.attribute_names) or "none"
    if items and not kept:
        raise DataError(
            f"{file}: no item has anything the model can use (text, an image, or a value of an attribute it reads: "
            f"{attributes}); add a 'title' or 'text' to the items"
        )
    screened = Screened(kept, schema, file, scanned.lines, len(items))
    empty = [screened.place(item) for item, has in zip(items, usable) if not has]
    if empty:
        screened.defects.append(
            Defect(
                "items_skipped",
                f"items have nothing the model can use (no text, no image, no value of an attribute it reads: "
                f"{attributes})",
                "skipped: no candidate source can find them and the ranker has nothing to attend to",
                empty,
                len(items),
            )
        )
    blank = [screened.place(item) for item in items if _blank(item.title) or _blank(item.text)]
    if blank:
        screened.defects.append(
            Defect(
                "blank_fields",
                "items have a blank title or text (only whitespace)",
                "read as absent",
                blank,
                len(items),
            )
        )
    screened.defects += _mixed_types(screened, items)
    if text_measure is not None:
        screened.measure_texts(text_measure)
    screened.modalities = dict.fromkeys(Modality, 0)
    for item, has in zip(items, usable):
        for modality in Modality:
            if modality in has:
                screened.modalities[modality] += 1
            elif has:
                screened.first_without.setdefault(modality, screened.place(item))
    return screened


def modality_warnings(screened: Screened) -> list[Problem]:
    """One warning per modality some kept items lack, at the first of them (never one per item: a catalog with a
    few pictures missing is one line)."""
    total = len(screened.items)
    warnings = []
    for modality, count in screened.modalities.items():
        if 0 < count < total:
            first = screened.first_without[modality]
            message = (
                f"{total - count} of {total} items have no {modality} the model can use ({MODALITY_FIELDS[modality]}),"
                " the first of them here: they are ranked on what they have"
            )
            warnings.append(Problem(first.file, first.line, None, message, Severity.WARNING))
    return warnings


def screen_judgments(
    screened: Screened,
    queries: Scanned[Query] | None,
    queries_file: Path | None,
    judgments: Scanned[Judgment] | None,
    judgments_file: Path | None,
    item_ids: set[str],
) -> None:
    """Keep the judgments of kept items and known queries, and note the queries nobody judged (in place)."""
    screened.queries = list(queries.records) if queries is not None else []
    if judgments is None or judgments_file is None:
        return
    screened.judgments_read = len(judgments.lines)
    known_queries = queries.keys if queries is not None else None
    kept_ids = {item.id for item in screened.items}
    unknown_item: list[Place] = []
    skipped_item: list[Place] = []
    unknown_query: list[Place] = []
    for judgment in judgments.records:
        place = Place(
            judgments_file,
            judgments.lines.get((judgment.query_id, judgment.item_id)),
            f"{judgment.query_id} -> {judgment.item_id}",
        )
        if known_queries is not None and judgment.query_id not in known_queries:
            unknown_query.append(place)
        elif judgment.item_id not in item_ids:
            unknown_item.append(place)
        elif judgment.item_id not in kept_ids:
            skipped_item.append(place)
        else:
            screened.judgments.append(judgment)
    for kind, places, what in (
        ("judgments_unknown_query", unknown_query, "judgments name a query that is not in the queries file"),
        ("judgments_unknown_item", unknown_item, "judgments name an item that is not in the catalog"),
        ("judgments_skipped_item", skipped_item, "judgments name an item that is skipped (nothing the model can use)"),
    ):
        if places:
            screened.defects.append(Defect(kind, what, "skipped", places, screened.judgments_read))
    if queries is not None and queries_file is not None:
        judged = {j.query_id for j in screened.judgments}
        unjudged = [Place(queries_file, queries.lines.get(q.id), q.id) for q in queries.records if q.id not in judged]
        if unjudged:
            screened.defects.append(
                Defect(
                    "queries_unjudged",
                    "queries have no judgment",
                    "kept for serving, left out of training and evaluation",
                    unjudged,
                    len(queries.records),
                )
            )


def read_catalog(
    data: Path,
    *,
    schema: FeatureSchema | None = None,
    text_measure: TextMeasure | None = None,
    holdout: tuple[int, int] | None = None,
    judged: bool = True,
    sink: ProblemSink | None = None,
    dims: VectorDims | None = None,
    image_exists: Callable[[str], bool] | None = None,
) -> Screened:
    """Read and screen a dataset: items (a directory's items.jsonl/.parquet or image manifest.csv, or that file),
    and a directory's queries and judgments (JSONL, Parquet or TREC qrels) when it has them.

    Args:
        data: the dataset directory, or an items file or image manifest.
        schema: the trained model's feature schema; None learns it from the items as training does (the verdict
            needs only its attributes: the learnt schema's text and image widths are placeholders).
        text_measure: the text encoder, to name the texts it truncates (`Screened.text`).
        holdout: (fold, folds) for K-fold cross-validation's splits (`assign_splits`).
        judged: False reads the items alone (indexing needs no queries or judgments).
        sink: where format problems go; the default raises DataError at the first error.
        dims, image_exists: the validator's extra checks of embedding widths and image files.

    Image paths come back resolved against the items file's directory.
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or directory")
    sink = sink or RaiseOnError()
    source = items_path(data)
    if data.is_dir() and not source.exists():
        source = data / IMAGE_MANIFEST
        if not source.exists():
            raise DataError(f"{data}: no items.jsonl, items.parquet or {IMAGE_MANIFEST}")
    md5: dict[str, str] = {}
    if source.suffix == ".csv":
        rows = scan_image_manifest(source, sink, image_exists=image_exists)
        scanned = Scanned([row.to_item(row.file) for row in rows.records], rows.lines)
        md5 = {row.id: row.md5 for row in rows.records if row.md5}
    else:
        scanned = scan_items(source, sink, dims=dims, image_exists=image_exists)
    if not scanned.records and isinstance(sink, RaiseOnError):
        raise DataError(f"{source}: no items")
    scanned.records = [
        dataclasses.replace(item, image=str(source.parent / item.image)) if item.image else item
        for item in scanned.records
    ]
    if schema is None:
        schema = schema_from_items(scanned.records, text_dim=TEXT_DIM, image_dim=1, text_encoder="learnt")
    screened = screen_items(scanned, source, schema, text_measure)
    screened.image_md5 = md5
    queries_file = find_data_file(data, "queries") if data.is_dir() and judged else None
    queries = scan_queries(queries_file, sink) if queries_file is not None else None
    judgments_file = find_judgments(data) if data.is_dir() and judged else None
    judgments = scan_judgments(judgments_file, sink) if judgments_file and judgments_file.exists() else None
    screen_judgments(screened, queries, queries_file, judgments, judgments_file, scanned.keys)
    screened.queries = assign_splits(screened.queries, holdout)
    return screened
