"""Train the two-tower candidate generator on the training queries' judgments.

Each step scores a batch of training queries against catalog items and applies the listwise softmax loss over
them (target proportional to 2^grade - 1: the sampled-softmax retrieval objective of Covington et al. 2016 and
Yi et al. 2019, with graded targets). Catalogs up to `retrieval_items_per_step` items are scored whole; larger ones
score the batch's relevant items plus a uniform sample of the rest. Early stopping on validation candidate recall:
the share of a query's relevant items that reach its top-K candidates, which bounds what the ranker can ever show.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from index.runtime.features import CandidateFeatures
from model.retrieval import RetrievalConfig, TwoTowerRetriever
from training.dataset import CandidateSpace, Dataset, OutOfFold, RankingLists, exact_search, rows_recall
from training.losses import ListwiseSoftmaxLoss
from training.metrics import RELEVANT_GRADE
from training.train import TrainConfig, best_rate, seed_everything, select_device

log = logging.getLogger(__name__)


@dataclass
class RetrieverResult:
    """The best retriever (by validation candidate recall) and how training went."""

    model: TwoTowerRetriever
    config: RetrievalConfig
    best_val_recall: float
    best_epoch: int
    epochs_run: int
    seconds: float
    lr: float  # the learning rate of the run kept


def catalog_tensors(features: CandidateFeatures, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(text, image, attrs, mask) of the whole catalog on `device`: the arguments of `encode_items`."""
    arrays = (features.text, features.image, features.attrs, features.mask)
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


@torch.inference_mode()
def encode_catalog(model: TwoTowerRetriever, catalog: tuple[torch.Tensor, ...], batch: int = 65536) -> np.ndarray:
    """(N, D) item vectors for the whole catalog, in eval mode."""
    was_training = model.training
    model.eval()
    parts = [model.encode_items(*(t[s : s + batch] for t in catalog)) for s in range(0, len(catalog[0]), batch)]
    model.train(was_training)
    return torch.cat(parts).float().cpu().numpy()


def learned_space(model: TwoTowerRetriever, features: CandidateFeatures, device: torch.device) -> CandidateSpace:
    """The retriever's space: its item vectors for the catalog, and its query tower."""
    model = model.to(device).eval()

    @torch.inference_mode()
    def project(query: np.ndarray) -> np.ndarray:
        return model.encode_queries(torch.from_numpy(query).to(device)).float().cpu().numpy()

    return CandidateSpace("learned", encode_catalog(model, catalog_tensors(features, device)), project)


def _relevant_rows(lists: RankingLists, dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (judged item rows, their grades), as arrays for fast label lookups."""
    out = []
    for query_id in lists.query_ids:
        labels = dataset.judged.get(query_id, {})
        rows = np.fromiter(labels.keys(), dtype=np.int64, count=len(labels))
        grades = np.fromiter((g for g, _ in labels.values()), dtype=np.float64, count=len(labels))
        out.append((rows, grades))
    return out


def _sample_items(
    batch: list[tuple[np.ndarray, np.ndarray]], n_items: int, per_step: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted item rows to score this step: all of them for a small catalog, else relevant + uniform sample."""
    if n_items <= per_step:
        return np.arange(n_items)
    relevant = np.concatenate([rows[grades >= RELEVANT_GRADE] for rows, grades in batch])
    fill = rng.choice(n_items, size=per_step, replace=False)
    return np.union1d(relevant, fill)


def _labels(batch: list[tuple[np.ndarray, np.ndarray]], sample: np.ndarray) -> np.ndarray:
    """(B, S) grades of the sampled items for each query of the batch (0 where unjudged)."""
    labels = np.zeros((len(batch), len(sample)), dtype=np.float64)
    for b, (rows, grades) in enumerate(batch):
        at = np.searchsorted(sample, rows)
        inside = (at < len(sample)) & (sample[np.minimum(at, len(sample) - 1)] == rows)
        labels[b, at[inside]] = grades[inside]
    return labels


def train_retriever(cfg: TrainConfig, dataset: Dataset) -> RetrieverResult:
    """One retriever per learning rate of `cfg.retrieval_lrs`; the best val recall is kept (the earlier rate on a
    tie). Its epochs and seconds count every run."""
    runs = best_rate(
        "retriever",
        cfg.retrieval_lrs,
        lambda lr: train_retriever_at(replace(cfg, retrieval_lr=lr), dataset),
        lambda result: result.best_val_recall,
    )
    return replace(runs[0], epochs_run=sum(r.epochs_run for r in runs), seconds=sum(r.seconds for r in runs))


def train_retriever_at(
    cfg: TrainConfig, dataset: Dataset, train_rows: np.ndarray | None = None, epochs: int | None = None
) -> RetrieverResult:
    """Train a TwoTowerRetriever on the train split's judgments, keeping the epoch with the best val recall; or,
    with `epochs`, train exactly that many epochs on the training queries at `train_rows` (cross-fitting)."""
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    schema = dataset.schema
    model_cfg = RetrievalConfig(
        text_dim=schema.text_dim,
        image_dim=schema.image_dim,
        attr_dim=schema.attr_dim,
        dim=cfg.retrieval_dim,
        hidden=cfg.retrieval_hidden,
    )
    model = TwoTowerRetriever(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.retrieval_lr, weight_decay=cfg.weight_decay)
    loss_fn = ListwiseSoftmaxLoss()
    text, image, attrs, mask = catalog_tensors(dataset.features, device)
    train_lists, val_lists = dataset.splits["train"], dataset.splits["val"]
    if train_rows is not None:
        train_lists = train_lists.take(train_rows)
    judged = _relevant_rows(train_lists, dataset)
    n_items = len(dataset.items)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = max(1, -(-len(train_lists) // cfg.batch_queries))
    query_emb = torch.from_numpy(train_lists.query_emb).to(device)

    log.info(
        "training the two-tower retriever on %s: %d train queries, %d items (%s per step), recall@%d on val",
        device,
        len(train_lists),
        n_items,
        "all" if n_items <= cfg.retrieval_items_per_step else cfg.retrieval_items_per_step,
        cfg.num_candidates,
    )
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    epochs_run, started = 0, time.perf_counter()
    for epoch in tqdm(range(epochs or cfg.retrieval_epochs), desc="retriever", unit="epoch", leave=False, disable=None):
        model.train()
        for rows in np.array_split(rng.permutation(len(train_lists)), steps_per_epoch):
            batch = [judged[r] for r in rows]
            sample = _sample_items(batch, n_items, cfg.retrieval_items_per_step, rng)
            picked = torch.from_numpy(sample).to(device)
            items = model.encode_items(text[picked], image[picked], attrs[picked], mask[picked])  # (S, D)
            logits = model(query_emb[torch.from_numpy(rows).to(device)], items)  # (B, S)
            labels = torch.from_numpy(_labels(batch, sample)).to(device)
            loss = loss_fn(logits, labels, torch.ones_like(labels, dtype=torch.bool))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epochs_run = epoch + 1
        if epochs is not None:
            best = (float("nan"), epochs_run, model.state_dict())
            continue
        found = exact_search(learned_space(model, dataset.features, device), val_lists.query_emb, cfg.num_candidates)
        recall = rows_recall(found, val_lists.query_ids, dataset.judged)
        improved = recall > best[0]
        if improved:
            best = (recall, epochs_run, copy.deepcopy(model.state_dict()))
        tqdm.write(
            f"retriever epoch {epochs_run:3d}  loss {loss.item():.4f}  val recall@{cfg.num_candidates} {recall:.4f}"
            f"{'  *' if improved else ''}"
        )
        if epochs_run - best[1] >= cfg.retrieval_patience:
            tqdm.write(f"early stop: no val recall gain for {cfg.retrieval_patience} epochs")
            break
    model.load_state_dict(best[2])
    model.eval()
    return RetrieverResult(
        model=model,
        config=model_cfg,
        best_val_recall=best[0],
        best_epoch=best[1],
        epochs_run=epochs_run,
        seconds=time.perf_counter() - started,
        lr=cfg.retrieval_lr,
    )


def out_of_fold_spaces(cfg: TrainConfig, dataset: Dataset, epochs: int) -> list[OutOfFold]:
    """Cross-fitting: the training queries split into `cfg.crossfit` parts; for each, the learned space of a
    retriever trained on the other parts for `epochs` at `cfg.retrieval_lr` (the full retriever's best epoch and
    rate). The ranker's training lists
    are made from these, so the retrieval score it learns to weigh is one measured on queries the retriever did not
    see, as every served query is."""
    n = len(dataset.splits["train"])
    parts = np.array_split(np.random.default_rng(cfg.seed).permutation(n), cfg.crossfit)
    device = select_device(cfg.device)
    out = []
    for i, held in enumerate(parts):
        started = time.perf_counter()
        rest = np.setdiff1d(np.arange(n), held)
        model = train_retriever_at(cfg, dataset, train_rows=rest, epochs=epochs).model
        out.append(OutOfFold(np.sort(held), learned_space(model, dataset.features, device)))
        log.info(
            "cross-fitting %d/%d: retriever on %d training queries for the other %d, %d epochs in %.1fs",
            i + 1,
            cfg.crossfit,
            len(rest),
            len(held),
            epochs,
            time.perf_counter() - started,
        )
    return out
