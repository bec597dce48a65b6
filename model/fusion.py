"""The query-conditioned multimodal fusion ranker.

A candidate is three tokens (image, text, attributes) projected to `dim`; the query (a MiniLM embedding) becomes one
token that attends over them. The attended vector, its product with the query token, the query token's product with each
modality's value vector, the per-head attention logits (one explicit query-vs-modality match score each), the
query/title cosine and the candidate generator's score (the first stage's evidence, as in any ranking cascade) feed
an MLP that gives one score.

Everything on the candidate side is independent of the query: `encode_candidates` is run once per catalog item at
index time and its output (keys and values) stored, so that `score` does only the query-side work per request.

Shapes: B queries, M candidates in all (any mix of queries; `query_index[m]` says which query candidate m is for),
d = dim, H = heads, T = 3 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_TOKENS = 3  # image, text, attributes


@dataclass(frozen=True)
class FusionConfig:
    """Architecture hyper-parameters; the input widths come from the FeatureSchema."""

    text_dim: int
    image_dim: int
    attr_dim: int
    dim: int = 64
    heads: int = 4
    hidden: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    @property
    def num_interactions(self) -> int:
        return 2 + self.heads * NUM_TOKENS  # query/title cosine, retrieval score, one logit per (head, token)

    @property
    def head_inputs(self) -> int:
        # fused, fused * query, query * each token's value, and the scalar interactions
        return (2 + NUM_TOKENS) * self.dim + self.num_interactions


class FusionRanker(nn.Module):
    """Scores candidates for queries from image, text and attribute features, conditioned on the query."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.image_proj = nn.Linear(cfg.image_dim, d)
        self.attr_proj = nn.Linear(cfg.attr_dim, d)
        self.modality = nn.Parameter(torch.randn(NUM_TOKENS, d) * 0.02)
        self.token_norm = nn.LayerNorm(d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.token_dropout = nn.Dropout(cfg.dropout)

        self.query_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.LayerNorm(d))
        self.query_heads = nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.head = nn.Sequential(
            nn.Linear(cfg.head_inputs, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )

    def encode_candidates(self, text: torch.Tensor, image: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """Query-independent candidate keys and values, (M, 2, T, d); precomputed at index time."""
        tokens = torch.stack([self.image_proj(image), self.text_proj(text), self.attr_proj(attrs)], dim=1)
        tokens = self.token_norm(self.token_dropout(tokens) + self.modality)  # (M, T, d)
        return torch.stack([self.key(tokens), self.value(tokens)], dim=1)  # (M, 2, T, d)

    def score(
        self,
        query: torch.Tensor,  # (B, text_dim)
        cand_kv: torch.Tensor,  # (M, 2, T, d)
        cand_text: torch.Tensor,  # (M, text_dim)
        retrieval_score: torch.Tensor,  # (M,) the candidate generator's inner product for each candidate
        query_index: torch.Tensor,  # (M,) int64 in [0, B)
    ) -> torch.Tensor:
        """The per-request part: scores (M,) for candidates whose keys/values were encoded ahead."""
        h, dh = self.cfg.heads, self.cfg.dim // self.cfg.heads
        q_tok = self.query_proj(query)  # (B, d)
        q_heads = self.query_heads(q_tok)[query_index].unflatten(-1, (h, dh))  # (M, H, dh)
        keys = cand_kv[:, 0].unflatten(-1, (h, dh))  # (M, T, H, dh)
        values = cand_kv[:, 1].unflatten(-1, (h, dh))  # (M, T, H, dh)

        logits = torch.einsum("mhd,mthd->mht", q_heads, keys) / math.sqrt(dh)  # (M, H, T)
        attn = torch.softmax(logits, dim=-1)
        fused = self.attn_out(torch.einsum("mht,mthd->mhd", attn, values).flatten(1))  # (M, d)

        q_cand = q_tok[query_index]  # (M, d)
        per_token = (q_cand.unsqueeze(1) * cand_kv[:, 1]).flatten(1)  # (M, T*d): which modality matches the query
        cosine = (F.normalize(query, dim=-1)[query_index] * F.normalize(cand_text, dim=-1)).sum(-1, keepdim=True)
        interactions = [cosine, retrieval_score.unsqueeze(-1), logits.flatten(1)]
        features = torch.cat([fused, fused * q_cand, per_token, *interactions], dim=-1)
        return self.head(features).squeeze(-1)  # (M,)

    def forward(
        self,
        query: torch.Tensor,
        text: torch.Tensor,
        image: torch.Tensor,
        attrs: torch.Tensor,
        retrieval_score: torch.Tensor,
        query_index: torch.Tensor,
    ) -> torch.Tensor:
        """Score raw candidate features end to end (training and the parity reference)."""
        return self.score(query, self.encode_candidates(text, image, attrs), text, retrieval_score, query_index)
