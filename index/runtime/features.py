"""The ranker's raw candidate features as the runtime holds them, and what a plain-string document is to the model.

Made from catalog items by `index.offline.featurize` (offline) and read back from a bundle (at serve time).

A modality an item lacks is not faked: its row is zeros and the mask says it is absent, so the ranker leaves its
token out of the attention and the candidate generator's item tower leaves it out of the item vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.schema import ATTRIBUTES, IMAGE, MODALITIES, TEXT, FeatureSchema


@dataclass
class CandidateFeatures:
    """Raw per-item features, row i for item i: text (N, text_dim), image (N, image_dim), attrs (N, attr_dim), and
    mask (N, 3) float32, 1 where the item has the modality, in token order image, text, attributes
    (`model.schema.MODALITIES`)."""

    text: np.ndarray
    image: np.ndarray
    attrs: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.text)
        if self.mask.shape != (n, len(MODALITIES)) or len(self.image) != n or len(self.attrs) != n:
            raise ValueError(
                f"features of {n} items need image, attrs and a ({n}, {len(MODALITIES)}) mask, got "
                f"image {self.image.shape}, attrs {self.attrs.shape}, mask {self.mask.shape}"
            )

    def coverage(self) -> dict[str, int]:
        """How many items have each modality (the manifest and the model card report it)."""
        return {name: int(self.mask[:, t].sum()) for t, name in enumerate(MODALITIES)}


def modality_mask(image: np.ndarray, text: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """(N, 3) float32 mask from per-modality (N,) booleans, in token order."""
    mask = np.zeros((len(image), len(MODALITIES)), dtype=np.float32)
    mask[:, IMAGE], mask[:, TEXT], mask[:, ATTRIBUTES] = image, text, attributes
    return mask


def text_only_features(text: np.ndarray, schema: FeatureSchema) -> CandidateFeatures:
    """What a plain-string document (a `/rerank` string) is to the model: its text embedding, with the image and the
    attributes masked (their rows are zeros and 'missing' flags, never read). The service scores such documents
    with these features, and the evaluation's `fusion_text_only` row measures them so."""
    n = len(text)
    return CandidateFeatures(
        text=text,
        image=np.zeros((n, schema.image_dim), dtype=np.float32),
        attrs=np.repeat(schema.encode_attributes([{}]), n, axis=0),
        mask=modality_mask(np.zeros(n, bool), np.ones(n, bool), np.zeros(n, bool)),
    )
