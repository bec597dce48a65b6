"""Ranking losses on toy lists: right order costs less, empty lists cost nothing, gradients point the right way."""

from __future__ import annotations

import doctest

import pytest
import torch

from training import losses
from training.losses import LOSSES, make_loss

LABELS = torch.tensor([[3, 2, 0, 0]])
MASK = torch.ones_like(LABELS, dtype=torch.bool)


@pytest.mark.parametrize("name", list(LOSSES))
def test_correct_order_costs_less_than_reversed(name: str) -> None:
    loss = make_loss(name)
    good = torch.tensor([[3.0, 2.0, 0.0, -1.0]])
    assert loss(good, LABELS, MASK) < loss(good.flip(-1), LABELS, MASK)


@pytest.mark.parametrize("name", list(LOSSES))
def test_list_without_relevant_items_gives_zero_and_finite_grad(name: str) -> None:
    scores = torch.randn(1, 4, requires_grad=True)
    value = make_loss(name)(scores, torch.zeros(1, 4, dtype=torch.long), MASK)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_raises_the_relevant_item(name: str) -> None:
    scores = torch.zeros(1, 4, requires_grad=True)
    make_loss(name)(scores, LABELS, MASK).backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 3]  # descending the loss raises item 0, lowers item 3


def test_masked_candidates_are_ignored() -> None:
    mask = torch.tensor([[True, True, False, False]])
    loss = make_loss("hybrid")
    base = loss(torch.tensor([[2.0, 1.0, 0.0, 0.0]]), LABELS, mask)
    assert loss(torch.tensor([[2.0, 1.0, 50.0, 50.0]]), LABELS, mask) == pytest.approx(base.item())


def test_pairwise_margin_is_zero_beyond_the_margin() -> None:
    loss = make_loss("pairwise")
    assert loss(torch.tensor([[10.0, 5.0, 0.0, -5.0]]), LABELS, MASK).item() == 0.0


def test_unknown_loss_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown loss 'ndcg'"):
        make_loss("ndcg")


def test_docstring_examples_run_and_hold() -> None:
    results = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0, results
