"""The candidate generator's two towers: queries and items mapped into one inner-product space.

A title-only search (MiniLM query vs MiniLM title) misses every item whose title does not say what the query asks
for, however plainly its image or metadata shows it. The item tower reads all three modalities (text, image,
attributes), the query tower maps the MiniLM query embedding into the same space, and FAISS searches that space.
Both outputs are unit-norm, so inner product is cosine. The item tower is query-independent and runs once per item
at index time; the query tower is one small MLP per request.

A modality an item lacks contributes nothing to its vector: the item tower's input for it is multiplied by the
item's modality mask (exactly the unmasked input where the modality is present).

Shapes: B queries, N items, D = dim; mask (N, 3) in token order image, text, attributes (`model.schema.MODALITIES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.schema import ATTRIBUTES, IMAGE, TEXT


@dataclass(frozen=True)
class RetrievalConfig:
    """Tower hyper-parameters; the input widths come from the FeatureSchema."""

    text_dim: int
    image_dim: int
    attr_dim: int
    dim: int = 128
    hidden: int = 256

    @property
    def item_inputs(self) -> int:
        return self.text_dim + self.image_dim + self.attr_dim


def _tower(inputs: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TwoTowerRetriever(nn.Module):
    """Embeds queries and items for candidate generation by inner-product search."""

    def __init__(self, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.query_tower = _tower(cfg.text_dim, cfg.hidden, cfg.dim)
        self.item_tower = _tower(cfg.item_inputs, cfg.hidden, cfg.dim)
        # Softmax temperature for training only; it does not change the order of inner products.
        self.logit_scale = nn.Parameter(torch.tensor(3.0))

    def encode_queries(self, query: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) MiniLM query embeddings -> (B, D) unit vectors."""
        return F.normalize(self.query_tower(query), dim=-1)

    def encode_items(
        self, text: torch.Tensor, image: torch.Tensor, attrs: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, ...) raw item features and their (N, 3) modality mask -> (N, D) unit vectors."""
        # A missing modality's input is zeroed, so its weights add nothing to the first layer (nor do the 'missing'
        # flags of an item without attributes, which are not zeros): the item is placed by what it has.
        mask = mask.to(text.dtype)
        inputs = [text * mask[:, TEXT, None], image * mask[:, IMAGE, None], attrs * mask[:, ATTRIBUTES, None]]
        return F.normalize(self.item_tower(torch.cat(inputs, dim=-1)), dim=-1)

    def forward(self, query: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Training logits (B, N) of queries against already-encoded items."""
        return self.encode_queries(query) @ items.T * self.logit_scale.exp()
