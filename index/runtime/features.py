"""The ranker's raw candidate features as the runtime holds them, and what a plain-string document is to the model.

Made from catalog items by `index.offline.featurize` (offline) and read back from a bundle (at serve time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.schema import FeatureSchema


@dataclass
class CandidateFeatures:
    """Raw per-item features, row i for item i: text (N, text_dim), image (N, image_dim), attrs (N, attr_dim)."""

    text: np.ndarray
    image: np.ndarray
    attrs: np.ndarray


def text_only_features(text: np.ndarray, schema: FeatureSchema) -> CandidateFeatures:
    """What a plain-string document (a `/rerank` string) is to the model: its text embedding, no image (zeros) and no
    known attribute. The service scores such documents with these features and the evaluation measures them so."""
    return CandidateFeatures(
        text=text,
        image=np.zeros((len(text), schema.image_dim), dtype=np.float32),
        attrs=np.repeat(schema.encode_attributes([{}]), len(text), axis=0),
    )
