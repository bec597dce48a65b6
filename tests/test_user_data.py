"""Training reads any dataset in the user data format: Parquet, TREC qrels, queries without splits, image paths."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.data.records import DataError, hash_split
from index.offline.image_encoder import ImageEncoder
from index.offline.images import load_image
from index.runtime.text_encoder import TextEncoder
from training.dataset import Dataset, load_dataset

from .clip_fixtures import TinyClip, tiny_clip, write_awkward_images, write_items
from .conftest import TinyPipeline

__all__ = ["tiny_clip"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _grades_by_query(dataset: Dataset) -> dict[str, tuple[list[int], list[int], list[bool]]]:
    out = {}
    for lists in dataset.splits.values():
        for q, qid in enumerate(lists.query_ids):
            out[qid] = (lists.candidates[q].tolist(), lists.grades[q].tolist(), lists.compliant[q].tolist())
    return out


def test_parquet_items_qrels_and_unsplit_queries_read_like_the_jsonl_original(
    tiny: TinyPipeline, tmp_path: Path
) -> None:
    pq.write_table(pa.Table.from_pylist(_records(tiny.data / "items.jsonl")), tmp_path / "items.parquet")
    queries = [{k: v for k, v in q.items() if k != "split"} for q in _records(tiny.data / "queries.jsonl")]
    write_items(tmp_path / "queries.jsonl", queries)
    qrels = [f"{j['query_id']} 0 {j['item_id']} {j['grade']}\n" for j in _records(tiny.data / "judgments.jsonl")]
    (tmp_path / "qrels.txt").write_text("".join(qrels))

    encoder = TextEncoder(tiny.encoder)
    original = load_dataset(tiny.data, encoder, num_candidates=20)
    converted = load_dataset(tmp_path, encoder, num_candidates=20)
    assert converted.schema == original.schema
    for name in ("text", "image", "attrs", "mask"):
        np.testing.assert_array_equal(getattr(converted.features, name), getattr(original.features, name))
    # same lists and labels per query (the synthetic data's compliant flag is grade >= 2, the qrels default)
    assert _grades_by_query(converted) == _grades_by_query(original)
    sizes = {split: len(lists) for split, lists in converted.splits.items()}
    assert sizes == dict(Counter(hash_split(q["id"]) for q in queries)) and min(sizes.values()) >= 10


def test_hash_split_is_stable_and_roughly_60_20_20() -> None:
    counts = Counter(hash_split(f"query-{i}") for i in range(5000))
    assert abs(counts["train"] / 5000 - 0.6) < 0.03 and abs(counts["val"] / 5000 - 0.2) < 0.03
    assert hash_split("query-17") == hash_split("query-17")


def test_items_with_image_paths_are_encoded_for_training(
    tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path
) -> None:
    names = write_awkward_images(tmp_path / "pics", 8)
    write_items(
        tmp_path / "items.jsonl",
        [
            {"id": f"i{k}", "title": f"drink {k}", "image": f"pics/{name}", "attributes": {"glass": "coupe"}}
            for k, name in enumerate(names)
        ],
    )
    queries = [{"id": f"q{k}", "text": f"drink {k}", "split": ("train", "val", "test")[k % 3]} for k in range(6)]
    write_items(tmp_path / "queries.jsonl", queries)
    write_items(tmp_path / "judgments.jsonl", [{"query_id": f"q{k}", "item_id": f"i{k}", "grade": 3} for k in range(6)])
    encoder = TextEncoder(tiny.encoder)

    with pytest.raises(DataError, match="make image-encoder"):
        load_dataset(tmp_path, encoder, num_candidates=4, image_encoder_dir=tmp_path / "no-encoder")

    dataset = load_dataset(tmp_path, encoder, num_candidates=4, image_encoder_dir=tiny_clip.encoder)
    assert dataset.schema.image_dim == 512 and dataset.features.image.shape == (8, 512)
    expected = ImageEncoder(tiny_clip.encoder).encode([load_image(tmp_path / "pics" / n) for n in names])
    np.testing.assert_allclose(dataset.features.image, expected, atol=1e-5)
    assert dataset.splits["test"].grades.max() == 3
