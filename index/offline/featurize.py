"""Turn catalog items into the ranker's raw candidate features: text, image and attribute matrices, and the mask
of which modalities each item has (any non-empty subset of text, image and attributes).

Shared by training (which learns from them) and the index build (which stores them in the bundle), so the
features a model was trained on are, bit for bit, the features it is served with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.data.records import DataError, Item, Modality
from index.offline.text_cache import encode_texts
from index.runtime.features import CandidateFeatures, modality_mask
from index.runtime.text_encoder import TextEncoder
from model.schema import FeatureSchema


def item_text(item: Item) -> str:
    """The text that is embedded for an item (and searched by the candidate generator): every text field."""
    return item.full_text


def has_text(item: Item) -> bool:
    """The item has a text modality: some text to embed (a placeholder title is none), or a precomputed text vector."""
    return Modality.TEXT in item.modalities


def _check_dim(item: Item, what: str, row: Sequence[float], dim: int) -> None:
    if len(row) != dim:
        raise DataError(f"item {item.id!r}: {what} has dimension {len(row)}, the schema expects {dim}")


def _masked(
    items: Sequence[Item], schema: FeatureSchema, text: np.ndarray, image: np.ndarray, has_image: np.ndarray
) -> CandidateFeatures:
    """Features with their modality mask: a missing text or image is a zero row with mask 0, never a made-up vector;
    attributes are masked when the schema can read none of the item's. An item with no modality at all is refused,
    naming it: it would be a candidate the ranker cannot attend to (`index.data.verdict` skips such items before
    they get here)."""
    attrs = schema.encode_attributes([i.attributes for i in items])
    texted = np.fromiter((has_text(i) for i in items), dtype=bool, count=len(items))
    mask = modality_mask(has_image, texted, schema.attributes_present(attrs))
    text[~texted] = 0.0
    image[~has_image] = 0.0
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if len(empty):
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        raise DataError(
            f"item {items[empty[0]].id!r}{more}: no text, no image and no attribute the model knows "
            f"({', '.join(schema.attribute_names) or 'none'}); an item needs at least one"
        )
    return CandidateFeatures(text=text, image=image, attrs=attrs, mask=mask)


def featurize(items: Sequence[Item], schema: FeatureSchema, encoder: TextEncoder) -> CandidateFeatures:
    """Encode items: precomputed text embeddings are used as given, others are encoded with the text encoder; an item
    without text or without an image gets that modality masked (an image path must have been encoded already)."""
    if encoder.dim != schema.text_dim:
        raise DataError(f"text encoder gives {encoder.dim}-d vectors, the schema expects text_dim={schema.text_dim}")
    text = np.zeros((len(items), schema.text_dim), dtype=np.float32)
    to_encode = [i for i, item in enumerate(items) if item.text_embedding is None and has_text(item)]
    if to_encode:
        text[to_encode] = encode_texts(encoder, [item_text(items[i]) for i in to_encode])
    image = np.zeros((len(items), schema.image_dim), dtype=np.float32)
    has_image = np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        if item.text_embedding is not None:
            _check_dim(item, "text_embedding", item.text_embedding, schema.text_dim)
            text[i] = item.text_embedding
        if item.image_embedding is not None:
            _check_dim(item, "image_embedding", item.image_embedding, schema.image_dim)
            image[i], has_image[i] = item.image_embedding, True
        elif Modality.IMAGE in item.modalities:
            raise DataError(
                f"item {item.id!r}: image {item.image!r} is not encoded (no image_embedding); "
                "encode it with the image encoder first (`make ingest`)"
            )
    return _masked(items, schema, text, image, has_image)


def features_from_arrays(
    items: Sequence[Item], schema: FeatureSchema, text: np.ndarray, image: np.ndarray
) -> CandidateFeatures:
    """Features for items whose text and image vectors were computed elsewhere (e.g. by batched ingestion): an item
    has an image when it gave a vector or a path (whose picture was encoded into `image`)."""
    expected = {"text": (len(items), schema.text_dim), "image": (len(items), schema.image_dim)}
    for name, array in (("text", text), ("image", image)):
        if array.shape != expected[name]:
            raise DataError(f"{name} vectors have shape {array.shape}, the schema expects {expected[name]}")
    has_image = np.fromiter((Modality.IMAGE in i.modalities for i in items), dtype=bool, count=len(items))
    return _masked(
        items,
        schema,
        np.array(text, dtype=np.float32, order="C"),  # copies: masked rows are zeroed in place
        np.array(image, dtype=np.float32, order="C"),
        has_image,
    )
