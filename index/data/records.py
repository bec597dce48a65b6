"""The user data format, defined once (docs/data.md): the record types and the rules each record must follow.

Each file kind has one `parse_*` function that turns a raw record (a JSON object, a Parquet row, a CSV row, a qrels
line) into a typed record plus the problems it has. The readers (`index.data.readers`) stop at the first error; the
validator (`index.data.validate`) lists every problem. Both call these same functions, so a rule lives in one place.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import numpy as np

SPLITS = ("train", "val", "test")
GRADES = range(0, 4)
DATA_SUFFIXES = (".jsonl", ".parquet")  # items, queries and judgments come in either
QRELS_FILES = ("qrels.txt", "judgments.qrels", "qrels")  # TREC qrels, when there is no judgments file
IMAGE_MANIFEST = "manifest.csv"  # a folder of images: id, file[, md5]
NEUTRAL_TITLE = "photo {id}"  # image-only catalogs have no captions; a neutral title says nothing false
TEXT_DIM = 384  # all-MiniLM-L6-v2: the validator's default for text_embedding
IMAGE_DIM = 512  # CLIP ViT-B/32's projection: the validator's default for image_embedding
# Queries with no `split` field are split by a hash of their id: stable across runs and machines, and a query
# never moves between splits when others are added.
HASH_SPLIT = (("train", 0.6), ("val", 0.8), ("test", 1.0))

ITEM_FIELDS = frozenset({"id", "title", "text", "image", "attributes", "image_embedding", "text_embedding"})
QUERY_FIELDS = frozenset({"id", "text", "constraints", "split"})
JUDGMENT_FIELDS = frozenset({"query_id", "item_id", "grade", "compliant"})


class DataError(ValueError):
    """A data file that cannot be used, with the file, line and field in the message."""


class Modality(StrEnum):
    """What an item can be ranked on. Every item has at least one; a catalog may lack one entirely (no pictures,
    no text), and the model masks what an item lacks."""

    TEXT = "text"  # a non-empty `title` or `text`, or a `text_embedding`
    IMAGE = "image"  # an `image` path or an `image_embedding`
    ATTRIBUTES = "attributes"  # an `attributes` map with at least one value


# What gives an item each modality, in the words the validator's messages use.
MODALITY_FIELDS = {
    Modality.TEXT: "a 'title', a 'text' or a 'text_embedding'",
    Modality.IMAGE: "an 'image' path or an 'image_embedding'",
    Modality.ATTRIBUTES: "an 'attributes' map with at least one value",
}


def _has_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not value.isspace()


def modalities(
    *,
    title: Any = None,
    text: Any = None,
    text_embedding: Any = None,
    image: Any = None,
    image_embedding: Any = None,
    attributes: Any = None,
) -> frozenset[Modality]:
    """The modalities these field values give an item (values as the data has them: wrong types give nothing).
    The one definition: `parse_item`, the readers' counts and `Item.modalities` all use it. Runs twice per item
    read, so it is written for speed (no sets built, no generators)."""
    has_text = text_embedding is not None or _has_text(title) or _has_text(text)
    has_image = image_embedding is not None or _has_text(image)
    # None values are attributes not given (a Parquet struct column gives every key, null where a row has none)
    has_attributes = (
        isinstance(attributes, (dict, Mapping))  # dict first: the ABC check is slow
        and len(attributes) > 0
        and (None not in attributes.values() or any(v is not None for v in attributes.values()))
    )
    return _MODALITY_SETS[has_text, has_image, has_attributes]


_MODALITY_SETS = {
    (t, i, a): frozenset(m for m, given in zip(Modality, (t, i, a), strict=True) if given)
    for t in (False, True)
    for i in (False, True)
    for a in (False, True)
}


def raw_modalities(raw: Mapping[str, Any]) -> frozenset[Modality]:
    """The modalities of a raw item record (a JSON object or a Parquet row), before it is parsed."""
    return modalities(
        title=raw.get("title"),
        text=raw.get("text"),
        text_embedding=raw.get("text_embedding"),
        image=raw.get("image"),
        image_embedding=raw.get("image_embedding"),
        attributes=raw.get("attributes"),
    )


class Severity(StrEnum):
    ERROR = "error"  # the data cannot be used as it is
    WARNING = "warning"  # usable, but probably not what was meant


@dataclass(frozen=True)
class FieldProblem:
    """One problem of one record: which field (None for the whole record) and what."""

    field: str | None
    message: str
    severity: Severity = Severity.ERROR


@dataclass(frozen=True)
class Item:
    """One catalog item as the user supplied it."""

    id: str
    title: str  # "" when the item has none
    attributes: dict[str, Any] = field(default_factory=dict)
    image_embedding: list[float] | None = None
    text_embedding: list[float] | None = None
    image: str | None = None
    text: str = ""  # a description or abstract: the longer text field, "" when the item has none
    # True for the neutral title an image-only catalog's items get (NEUTRAL_TITLE): shown, but it says nothing, so
    # it is not text to rank on
    placeholder_title: bool = False

    @property
    def modalities(self) -> frozenset[Modality]:
        """What this item has (`index.data.verdict.usable_modalities`: what the model can use of it)."""
        return modalities(
            title=None if self.placeholder_title else self.title,
            text=self.text,
            text_embedding=self.text_embedding,
            image=self.image,
            image_embedding=self.image_embedding,
            attributes=self.attributes,
        )

    @property
    def display_title(self) -> str:
        """What a result shows as its title: the title, or the start of the text when there is no title."""
        return self.title if _has_text(self.title) else self.text[:200]

    @property
    def full_text(self) -> str:
        """Every text field, title first: what the text encoder embeds and lexical search indexes."""
        return "\n".join(part for part in (self.title, self.text) if _has_text(part))


@dataclass(frozen=True)
class Query:
    """A query as the user supplied it; `split` is None when the data names none (see `hash_split`)."""

    id: str
    text: str
    split: str | None
    constraints: dict[str, Any]


@dataclass(frozen=True)
class Judgment:
    """A graded (query, item) pair; `compliant` is None when the data does not say (then grade >= 2 counts)."""

    query_id: str
    item_id: str
    grade: int
    compliant: bool | None = None

    @property
    def is_compliant(self) -> bool:
        return self.compliant if self.compliant is not None else self.grade >= 2


@dataclass(frozen=True)
class ImageRow:
    """One row of an image manifest: an item that is only a picture."""

    id: str
    file: str
    md5: str | None = None

    def to_item(self, image_path: str) -> Item:
        return Item(id=self.id, title=NEUTRAL_TITLE.format(id=self.id), image=image_path, placeholder_title=True)


@dataclass(frozen=True)
class VectorDims:
    """The embedding widths a dataset is checked against (the readers leave this to featurisation)."""

    text: int = TEXT_DIM
    image: int = IMAGE_DIM


Record = TypeVar("Record")


@dataclass
class Parsed(Generic[Record]):
    """A parsed record (None when an error makes it unusable) and every problem found in it."""

    record: Record | None
    problems: list[FieldProblem] = field(default_factory=list)

    def error(self, field_name: str | None, message: str) -> None:
        self.problems.append(FieldProblem(field_name, message))

    def warn(self, field_name: str | None, message: str) -> None:
        self.problems.append(FieldProblem(field_name, message, Severity.WARNING))

    @property
    def ok(self) -> bool:
        return not any(p.severity is Severity.ERROR for p in self.problems)


def hash_split(query_id: str) -> str:
    """The split of a query whose data names none: 60/20/20 by a hash of its id."""
    fraction = int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "big") / 2**64
    return next(name for name, upper in HASH_SPLIT if fraction < upper)


def fold_of(query_id: str, folds: int) -> int:
    """The query's fold for K-fold cross-validation: a hash of its id mod `folds` (stable across runs, machines and
    added queries)."""
    return int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "big") % folds


def fold_split(query_id: str, fold: int, folds: int) -> str:
    """The split of a query when fold `fold` of `folds` is held out: that fold is the test split, the next one the
    validation split (early stopping, model choices), the rest train."""
    own = fold_of(query_id, folds)
    if own == fold:
        return "test"
    return "val" if own == (fold + 1) % folds else "train"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _non_empty_string(parsed: Parsed[Any], name: str, value: Any) -> bool:
    if isinstance(value, str) and value:
        return True
    parsed.error(name, f"must be a non-empty string, got {value!r}")
    return False


def _flat_map(parsed: Parsed[Any], name: str, value: Any) -> bool:
    """A flat map of names to strings, booleans or finite numbers (attributes, constraints)."""
    if not isinstance(value, Mapping):
        parsed.error(name, f"must be an object of names to strings or numbers, got {type(value).__name__}")
        return False
    ok = True
    for key, entry in value.items():
        if entry is None or isinstance(entry, (str, bool)):
            continue
        if not is_number(entry):
            parsed.error(f"{name}.{key}", f"must be a string or a number (a flat map), got {type(entry).__name__}")
            ok = False
        elif not math.isfinite(entry):
            parsed.error(f"{name}.{key}", f"must be a finite number, got {entry!r}")
            ok = False
    return ok


def _vector(parsed: Parsed[Any], name: str, value: Any, dim: int | None) -> bool:
    """A list of finite numbers, of width `dim` when given. Checked with numpy: catalogs hold millions of values."""
    if not isinstance(value, (list, tuple)):
        parsed.error(name, f"must be a list of {dim or 'some'} numbers, got {type(value).__name__}")
        return False
    if dim is not None and len(value) != dim:
        parsed.error(name, f"has {len(value)} values, expected {dim}")
        return False
    try:
        array = np.asarray(value)
    except ValueError:
        array = np.asarray(value, dtype=object)
    if array.ndim == 1 and array.dtype.kind in "iuf" and bool(np.isfinite(array).all()):
        return True
    bad = next(i for i, v in enumerate(value) if not (is_number(v) and math.isfinite(v)))
    parsed.error(name, f"value {bad} is {value[bad]!r}, not a finite number")
    return False


def parse_item(raw: Mapping[str, Any], dims: VectorDims | None = None) -> Parsed[Item]:
    """An item: `id`, and any of text (a `title`, a `text` such as a description or abstract, or both; or a
    `text_embedding`), an image (an `image` path or an `image_embedding`) and `attributes`. An item with none of
    them is well-formed but useless: `index.data.verdict` skips it, counted. `dims` checks the embeddings' widths
    (the validator's job; featurisation checks them against the model otherwise)."""
    parsed: Parsed[Item] = Parsed(None)
    item_id = raw.get("id")
    ok = _non_empty_string(parsed, "id", item_id)
    title, text = raw.get("title"), raw.get("text")
    for name, value in (("title", title), ("text", text)):
        if value is not None and not isinstance(value, str):
            parsed.error(name, f"must be a string, got {value!r}")
            ok = False
    attributes = raw.get("attributes")
    if attributes is not None:
        ok = _flat_map(parsed, "attributes", attributes) and ok
    widths = {"text_embedding": dims.text if dims else None, "image_embedding": dims.image if dims else None}
    for name, dim in widths.items():
        if raw.get(name) is not None:
            ok = _vector(parsed, name, raw[name], dim) and ok
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        parsed.error("image", f"must be a file path (string), got {type(image).__name__}")
        ok = False
    for unknown in sorted(set(raw) - ITEM_FIELDS):
        parsed.warn(unknown, "unknown field, ignored")
    if ok:
        parsed.record = Item(
            id=str(item_id),
            title=title or "",
            text=text or "",
            attributes=dict(attributes or {}),
            image_embedding=raw.get("image_embedding"),
            text_embedding=raw.get("text_embedding"),
            image=image,
        )
    return parsed


def parse_query(raw: Mapping[str, Any]) -> Parsed[Query]:
    """A query: `id`, `text`, optional `split` (train, val or test) and `constraints` (a flat map)."""
    parsed: Parsed[Query] = Parsed(None)
    query_id, text, split = raw.get("id"), raw.get("text"), raw.get("split")
    ok = _non_empty_string(parsed, "id", query_id)
    if not isinstance(text, str) or not text.strip():
        parsed.error("text", f"must be a non-empty string, got {text!r}")
        ok = False
    if "split" in raw and split not in SPLITS:
        parsed.error("split", f"must be one of {', '.join(SPLITS)}, got {split!r}")
        ok = False
    constraints = raw.get("constraints")
    if constraints is not None:
        ok = _flat_map(parsed, "constraints", constraints) and ok
    for unknown in sorted(set(raw) - QUERY_FIELDS):
        parsed.warn(unknown, "unknown field, ignored")
    if ok:
        parsed.record = Query(str(query_id), str(text), split, dict(constraints or {}))
    return parsed


def parse_judgment(raw: Mapping[str, Any], *, warn_unknown: bool = True) -> Parsed[Judgment]:
    """A judgment: `query_id`, `item_id`, `grade` (an integer 0..3) and optional `compliant` (true or false)."""
    parsed: Parsed[Judgment] = Parsed(None)
    query_id, item_id, grade = raw.get("query_id"), raw.get("item_id"), raw.get("grade")
    ok = _non_empty_string(parsed, "query_id", query_id)
    ok = _non_empty_string(parsed, "item_id", item_id) and ok
    if not isinstance(grade, int) or isinstance(grade, bool) or grade not in GRADES:
        parsed.error("grade", f"must be an integer 0..3, got {grade!r}")
        ok = False
        grade = 0
    compliant = raw.get("compliant")
    if "compliant" in raw and not isinstance(compliant, bool):
        parsed.error("compliant", f"must be true or false, got {compliant!r}")
        ok = False
    if warn_unknown:
        for unknown in sorted(set(raw) - JUDGMENT_FIELDS):
            parsed.warn(unknown, "unknown field, ignored")
    if ok:
        parsed.record = Judgment(str(query_id), str(item_id), int(grade), compliant)
    return parsed


def parse_qrels_line(parts: list[str]) -> Parsed[Judgment]:
    """A TREC qrels line, split on whitespace: `query_id iteration item_id grade`."""
    if len(parts) != 4:
        parsed: Parsed[Judgment] = Parsed(None)
        parsed.error(None, f"expected 4 columns (query_id iteration item_id grade), got {len(parts)}")
        return parsed
    grade: Any = int(parts[3]) if parts[3].lstrip("-").isdigit() else parts[3]
    return parse_judgment({"query_id": parts[0], "item_id": parts[2], "grade": grade}, warn_unknown=False)


def parse_image_row(row: Mapping[str, str | None]) -> Parsed[ImageRow]:
    """A row of an image manifest (CSV): `id`, `file` (relative to the CSV), optional `md5` of the file."""
    parsed: Parsed[ImageRow] = Parsed(None)
    item_id, file = (row.get("id") or "").strip(), (row.get("file") or "").strip()
    if not item_id:
        parsed.error("id", "must be non-empty")
    if not file:
        parsed.error("file", "must be non-empty")
    if parsed.ok:
        parsed.record = ImageRow(item_id, file, (row.get("md5") or "").strip().lower() or None)
    return parsed
