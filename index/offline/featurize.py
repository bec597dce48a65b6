"""Turn catalog items into the ranker's raw candidate features: text, image and attribute matrices.

Shared by training (which learns from them) and the index build (which stores them in the bundle), so the
features a model was trained on are, bit for bit, the features it is served with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.data.records import DataError, Item
from index.runtime.features import CandidateFeatures
from index.runtime.text_encoder import TextEncoder
from model.schema import CategoricalField, FeatureSchema, NumericField

MAX_CATEGORICAL_VALUES = 64  # more distinct values than this is an id-like field, not a category


def schema_from_items(items: Sequence[Item], text_dim: int, image_dim: int, text_encoder: str) -> FeatureSchema:
    """Infer the attribute vocabulary (strings -> categorical, numbers -> numeric) from a training catalog."""
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


def item_text(item: Item) -> str:
    """The text that is embedded for an item (and searched by the candidate generator): every text field."""
    return item.full_text


def _stack(items: Sequence[Item], what: str, dim: int) -> np.ndarray:
    out = np.zeros((len(items), dim), dtype=np.float32)
    for i, item in enumerate(items):
        row = getattr(item, what)
        if row is None:
            raise DataError(f"item {item.id!r}: no {what} (give one, or an image path for the image encoder)")
        if len(row) != dim:
            raise DataError(f"item {item.id!r}: {what} has dimension {len(row)}, the schema expects {dim}")
        out[i] = row
    return out


def featurize(items: Sequence[Item], schema: FeatureSchema, encoder: TextEncoder) -> CandidateFeatures:
    """Encode items: precomputed text embeddings are used as given, others are encoded with the text encoder."""
    if encoder.dim != schema.text_dim:
        raise DataError(f"text encoder gives {encoder.dim}-d vectors, the schema expects text_dim={schema.text_dim}")
    text = np.zeros((len(items), schema.text_dim), dtype=np.float32)
    to_encode = [i for i, item in enumerate(items) if item.text_embedding is None]
    given = [i for i, item in enumerate(items) if item.text_embedding is not None]
    if to_encode:
        text[to_encode] = encoder.encode([item_text(items[i]) for i in to_encode])
    if given:
        text[given] = _stack([items[i] for i in given], "text_embedding", schema.text_dim)
    image = _stack(items, "image_embedding", schema.image_dim)
    return CandidateFeatures(text=text, image=image, attrs=schema.encode_attributes([i.attributes for i in items]))


def features_from_arrays(
    items: Sequence[Item], schema: FeatureSchema, text: np.ndarray, image: np.ndarray
) -> CandidateFeatures:
    """Features for items whose text and image vectors were computed elsewhere (e.g. by batched ingestion)."""
    expected = {"text": (len(items), schema.text_dim), "image": (len(items), schema.image_dim)}
    for name, array in (("text", text), ("image", image)):
        if array.shape != expected[name]:
            raise DataError(f"{name} vectors have shape {array.shape}, the schema expects {expected[name]}")
    return CandidateFeatures(
        text=np.ascontiguousarray(text, dtype=np.float32),
        image=np.ascontiguousarray(image, dtype=np.float32),
        attrs=schema.encode_attributes([i.attributes for i in items]),
    )
