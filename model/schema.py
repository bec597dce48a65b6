"""The feature schema: what the ranker sees of a query and of a catalog item, as one typed object.

Training, export, the index bundle and the service all carry a copy of it; two artifacts work together only when
their schemas are equal, and `FeatureSchema.differences` names the field that is not.

Pure numpy: the service imports this module, and the service never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
# The candidate's tokens in the ranker's order. A modality mask (N, 3), 1 = present, has one column per entry; the
# features, the bundle and both models index it with these constants.
MODALITIES = ("image", "text", "attributes")
IMAGE, TEXT, ATTRIBUTES = range(len(MODALITIES))


@dataclass(frozen=True)
class CategoricalField:
    """An attribute with a closed set of values, one-hot encoded plus a 'missing' slot."""

    name: str
    values: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.values) + 1


@dataclass(frozen=True)
class NumericField:
    """A numeric attribute, standardised with the training catalog's mean and std, plus a 'missing' flag."""

    name: str
    mean: float
    std: float

    @property
    def width(self) -> int:
        return 2


@dataclass(frozen=True)
class FeatureSchema:
    """Dimensions and attribute vocabulary shared by every artifact of one model generation."""

    text_dim: int
    image_dim: int
    categorical: tuple[CategoricalField, ...]
    numeric: tuple[NumericField, ...] = ()
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    image_encoder: str = "clip-vit-b32-space"
    version: int = SCHEMA_VERSION
    _offsets: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.text_dim <= 0 or self.image_dim <= 0:
            raise ValueError(f"dimensions must be positive, got text_dim={self.text_dim} image_dim={self.image_dim}")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"attribute names must be unique, got {names}")
        offset = 0
        for f in self.fields:
            self._offsets[f.name] = offset
            offset += f.width

    @property
    def fields(self) -> tuple[CategoricalField | NumericField, ...]:
        return (*self.categorical, *self.numeric)

    @property
    def attr_dim(self) -> int:
        # A schema without attribute fields (a catalog whose only attribute is id-like, or none) keeps one column
        # that is always zero: a placeholder whose token is always masked, so no graph has a zero-width input.
        return max(1, sum(f.width for f in self.fields))

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def categorical_field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.categorical)

    def categorical_field(self, name: str) -> CategoricalField | None:
        return next((f for f in self.categorical if f.name == name), None)

    def encode_attributes(self, items: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode attribute maps as a (N, attr_dim) float32 matrix.

        Unknown categorical values and absent fields both set the field's 'missing' slot: the ranker must learn to
        look elsewhere (title, image) for what the catalog metadata does not say.
        """
        out = np.zeros((len(items), self.attr_dim), dtype=np.float32)
        for row, attrs in enumerate(items):
            for cat in self.categorical:
                base = self._offsets[cat.name]
                value = attrs.get(cat.name)
                if isinstance(value, bool):
                    value = str(value)  # the vocabulary holds booleans as "True"/"False" (schema_from_items)
                slot = cat.values.index(value) if value in cat.values else len(cat.values)
                out[row, base + slot] = 1.0
            for num in self.numeric:
                base = self._offsets[num.name]
                value = attrs.get(num.name)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[row, base] = (float(value) - num.mean) / (num.std or 1.0)
                else:
                    out[row, base + 1] = 1.0
        return out

    def attributes_present(self, encoded: np.ndarray) -> np.ndarray:
        """(N,) bool from `encode_attributes`' output: the item has at least one field the schema can read (a known
        categorical value, a finite number). An item without one has nothing in its attribute token, which is then
        masked: a vector of 'missing' flags says nothing about the item."""
        missing = [self._offsets[f.name] + f.width - 1 for f in self.fields]  # each field's 'missing' slot is last
        if not missing:
            return np.zeros(len(encoded), dtype=bool)
        return (encoded[:, missing] == 0).any(axis=1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_offsets", None)
        data["attr_dim"] = self.attr_dim
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        return cls(
            text_dim=int(data["text_dim"]),
            image_dim=int(data["image_dim"]),
            categorical=tuple(CategoricalField(c["name"], tuple(c["values"])) for c in data["categorical"]),
            numeric=tuple(NumericField(n["name"], float(n["mean"]), float(n["std"])) for n in data["numeric"]),
            text_encoder=str(data["text_encoder"]),
            image_encoder=str(data["image_encoder"]),
            version=int(data.get("version", SCHEMA_VERSION)),
        )

    def differences(self, other: FeatureSchema) -> list[str]:
        """Name every field where two schemas disagree, as 'field: mine != theirs'."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: {mine[key]!r} != {theirs.get(key)!r}" for key in mine if mine[key] != theirs.get(key)]
