"""Ranking losses, one small module each, all with the signature (scores[B, L], labels[B, L], mask[B, L]) -> loss.

Pick one by name with `make_loss(name)`; the registry `LOSSES` lists the names the CLI accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PairwiseMarginLoss(nn.Module):
    """Margin ranking loss over every pair in a list whose grades differ (the seed design's MarginRankingLoss).

    loss = mean over pairs (i, j) with label_i > label_j of max(0, margin - (s_i - s_j)).

    Example:
        >>> loss = PairwiseMarginLoss(margin=1.0)
        >>> loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1, 0]]), torch.tensor([[True, True]]))
        tensor(0.)
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        better = (labels[:, :, None] > labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]  # (B, L, L)
        margins = F.relu(self.margin - (scores[:, :, None] - scores[:, None, :]))
        return margins[better].mean() if better.any() else scores.sum() * 0.0


class ListwiseSoftmaxLoss(nn.Module):
    """Softmax cross-entropy against the gain distribution of the list (ListNet, Cao et al. 2007; the
    'softmax loss' of Bruch et al. 2019, which bounds nDCG).

    loss = mean over lists with a relevant item of -sum_i p_i log softmax(s)_i,
    with p_i = (2^g_i - 1) / sum_j (2^g_j - 1).

    Example:
        >>> loss = ListwiseSoftmaxLoss()
        >>> loss(torch.tensor([[5.0, 0.0]]), torch.tensor([[3, 0]]), torch.tensor([[True, True]])) < 0.01
        tensor(True)
    """

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gains = (torch.pow(2.0, labels.float()) - 1.0) * mask
        has_relevant = gains.sum(-1) > 0
        if not has_relevant.any():
            return scores.sum() * 0.0
        target = gains[has_relevant] / gains[has_relevant].sum(-1, keepdim=True)
        log_probs = torch.log_softmax(scores[has_relevant].float().masked_fill(~mask[has_relevant], -1e4), dim=-1)
        return -(target * log_probs).sum(-1).mean()


class HybridLoss(nn.Module):
    """Listwise softmax loss plus a weighted pairwise margin term: the list order from the first, a margin
    between graded pairs from the second.

    loss = listwise(s, g) + pairwise_weight * pairwise(s, g).

    Example:
        >>> loss = HybridLoss(pairwise_weight=0.5)
        >>> loss(torch.tensor([[5.0, 0.0]]), torch.tensor([[3, 0]]), torch.tensor([[True, True]])) < 0.01
        tensor(True)
    """

    def __init__(self, pairwise_weight: float = 0.5) -> None:
        super().__init__()
        self.listwise = ListwiseSoftmaxLoss()
        self.pairwise = PairwiseMarginLoss()
        self.pairwise_weight = pairwise_weight

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.listwise(scores, labels, mask) + self.pairwise_weight * self.pairwise(scores, labels, mask)


LOSSES: dict[str, type[nn.Module]] = {
    "pairwise": PairwiseMarginLoss,
    "listwise": ListwiseSoftmaxLoss,
    "hybrid": HybridLoss,
}


def make_loss(name: str) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]()
