"""The item rules of the data format: any non-empty subset of text, image and attributes; nothing at all is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.data.readers import read_image_manifest, read_items
from index.data.records import ImageRow, Modality, parse_item, raw_modalities

TEXT, IMAGE, ATTRIBUTES = Modality.TEXT, Modality.IMAGE, Modality.ATTRIBUTES


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"id": "a", "title": "negroni"}, {TEXT}),
        ({"id": "a", "text": "an abstract"}, {TEXT}),
        ({"id": "a", "text_embedding": [0.0] * 384}, {TEXT}),
        ({"id": "a", "image": "a.jpg"}, {IMAGE}),
        ({"id": "a", "image_embedding": [0.0] * 512}, {IMAGE}),
        ({"id": "a", "attributes": {"glass": "coupe"}}, {ATTRIBUTES}),
        ({"id": "a", "title": "spritz", "image": "a.jpg", "attributes": {"abv": 11}}, {TEXT, IMAGE, ATTRIBUTES}),
        ({"id": "a", "title": "spritz", "attributes": {"abv": 11}}, {TEXT, ATTRIBUTES}),
    ],
)
def test_any_non_empty_subset_of_modalities_is_an_item(raw: dict, expected: set[Modality]) -> None:
    parsed = parse_item(raw)
    assert parsed.ok and parsed.problems == [], parsed.problems
    assert parsed.record is not None and parsed.record.modalities == expected == raw_modalities(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "a"},
        {"id": "a", "title": "", "text": "  \n"},  # blank text is no text
        {"id": "a", "image": ""},
        {"id": "a", "attributes": {}},
        {"id": "a", "attributes": {"glass": None}},  # a null value is an attribute not given
        {"id": "a", "title": None, "image": None, "image_embedding": None},
    ],
)
def test_an_item_with_nothing_to_rank_on_is_well_formed_with_no_modality(raw: dict) -> None:
    """Whether such an item is used is the verdict's (index.data.verdict skips it, counted), not a format error."""
    parsed = parse_item(raw)
    assert parsed.ok and parsed.problems == []
    assert parsed.record is not None and parsed.record.modalities == frozenset()


def test_other_item_rules_are_unchanged() -> None:
    assert parse_item({"id": "a", "title": 3, "image": "a.jpg"}).problems[0].field == "title"
    assert parse_item({"id": "a", "title": "x", "image": 7}).problems[0].message.startswith("must be a file path")
    flat = parse_item({"id": "a", "title": "x", "attributes": {"glass": {"kind": "coupe"}}})
    assert not flat.ok and flat.problems[0].field == "attributes.glass"
    unknown = parse_item({"id": "a", "title": "x", "colour": "red"})
    assert unknown.ok and [(p.field, p.severity.value) for p in unknown.problems] == [("colour", "warning")]


def test_an_image_only_items_neutral_title_is_shown_but_is_not_text() -> None:
    item = ImageRow("p1", "images/p1.jpg").to_item("/data/images/p1.jpg")
    assert item.display_title == "photo p1" and item.modalities == {IMAGE}


def test_reader_reads_text_only_image_only_and_attribute_only_catalogs(tmp_path: Path) -> None:
    text_only = read_items(_write(tmp_path / "a.jsonl", [{"id": "a", "title": "t", "text": "abstract"}]))
    assert [i.modalities for i in text_only] == [{TEXT}] and text_only[0].full_text == "t\nabstract"
    mixed = read_items(
        _write(
            tmp_path / "b.jsonl",
            [
                {"id": "a", "image_embedding": [0.5, 0.5]},
                {"id": "b", "attributes": {"glass": "coupe"}},
                {"id": "c", "title": "with everything", "image": "c.jpg", "attributes": {"glass": "rocks"}},
            ],
        )
    )
    assert [i.modalities for i in mixed] == [{IMAGE}, {ATTRIBUTES}, {TEXT, IMAGE, ATTRIBUTES}]
    assert [i.id for i in read_image_manifest(_manifest(tmp_path))] == ["p1"]


def _manifest(tmp_path: Path) -> Path:
    (tmp_path / "manifest.csv").write_text("id,file\np1,p1.jpg\n")
    return tmp_path / "manifest.csv"


def test_reader_reads_an_item_with_nothing_and_its_blank_title_is_not_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "items.jsonl", [{"id": "a", "title": "fine"}, {"id": "b", "title": " ", "text": "x"}])
    fine, blank = read_items(path)
    assert blank.full_text == "x" and blank.display_title == "x" and fine.full_text == "fine"


def test_parquet_null_attributes_are_no_attributes(tmp_path: Path) -> None:
    """A Parquet struct column gives every row every key, null where the row has none."""
    rows = [{"id": "a", "title": "x", "attributes": {"glass": "coupe"}}, {"id": "b", "title": "y", "attributes": {}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "items.parquet")
    items = read_items(tmp_path / "items.parquet")
    assert [i.modalities for i in items] == [{TEXT, ATTRIBUTES}, {TEXT}]


def test_boolean_attributes_are_encoded_not_read_as_missing() -> None:
    """schema_from_items keeps booleans as the strings "True"/"False"; encoding a True must find that slot."""
    from index.data.verdict import schema_from_items
    from model.schema import FeatureSchema

    raws = [
        {"id": "a", "title": "x", "attributes": {"iced": True}},
        {"id": "b", "title": "y", "attributes": {"iced": False}},
    ]
    items = [record for record in (parse_item(raw).record for raw in raws) if record is not None]
    schema: FeatureSchema = schema_from_items(items, text_dim=4, image_dim=1, text_encoder="t")
    encoded = schema.encode_attributes([i.attributes for i in items])
    assert schema.categorical[0].values == ("False", "True")
    assert encoded[0].tolist() == [0.0, 1.0, 0.0] and encoded[1].tolist() == [1.0, 0.0, 0.0]
    assert schema.attributes_present(encoded).all()
