"""Train the fusion ranker on per-query candidate lists, with early stopping on validation nDCG@10.

`make train` (`python -m training.cli train`) first trains the candidate generator (`training.retrieval`), then
this ranker on the lists it retrieves, evaluates both against baselines on the held-out test queries, and writes
`artifacts/checkpoint.pt` and `artifacts/metrics.json`. CUDA with bf16 autocast when a GPU is present, CPU
otherwise.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from index.runtime.features import CandidateFeatures
from index.runtime.lexical import analysis_choices
from model.fusion import FusionConfig, FusionRanker
from training.dataset import Dataset, RankingLists
from training.feedback.merge import LABEL_MODES, FeedbackOptions
from training.feedback.propensity import METHODS
from training.feedback.sessions import read_feedback_log
from training.losses import LOSSES, make_loss
from training.metrics import NDCG_CONVENTION, RankingMetrics

R = TypeVar("R")
log = logging.getLogger(__name__)
AUTO_ANALYSIS = "auto"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved with the checkpoint and in the model card."""

    data_dir: Path = Path("data/synthetic")
    out_dir: Path = Path("artifacts")
    encoder_dir: Path = Path("artifacts/encoders/minilm")
    # "auto": hybrid on judgments; listwise with `feedback`, whose click grades are fractional and noisy, so that
    # the pairwise term would count nearly every pair as ordered; the listwise loss over them is the IPW loss.
    loss: str = "auto"
    epochs: int = 80
    batch_queries: int = 16
    # The ranker's peak learning rate and the candidate generator's are each chosen on the validation queries from
    # `lr_grid` (one run per rate, the first wins a tie); `--lr-grid ""` trains at `lr` and `retrieval_lr` alone. No
    # one rate serves both ends: a large judged set (SYNTHETIC, 600 training queries) needs 6e-3, since the
    # residual head starts at zero and at 2e-3 is still climbing after 80 epochs; a small one (CISI, about 45 per
    # fold) overfits within three epochs at 6e-3. BENCHMARKS.md, "Training: the learning rate", has the figures.
    lr: float = 2e-3
    lr_grid: str = "2e-3,6e-3"
    min_lr: float = 1e-4
    warmup_steps: int = 30
    weight_decay: float = 1e-4
    patience: int = 20
    num_candidates: int = 100
    dim: int = 96
    heads: int = 4
    hidden: int = 128
    dropout: float = 0.2
    seed: int = 0
    device: str = "auto"
    retrieval_dim: int = 128
    retrieval_hidden: int = 256
    retrieval_epochs: int = 40
    retrieval_items_per_step: int = 8192
    retrieval_lr: float = 2e-3  # the candidate generator's own (constant) rate, without a grid, and patience
    retrieval_patience: int = 12
    # The MiniLM graph that embeds the queries ("int8" or "fp32"), the one the service serves queries with
    # (RANK_QUERY_ENCODER): the ranker learns from the embeddings it will be given. Items are always embedded fp32.
    query_encoder: str = "int8"
    # BM25's lexical analysis (index.runtime.lexical.Analyzer): "none", a Snowball language ("english", ...), or
    # "auto": none or english, whichever BM25 alone ranks better on the train and validation queries (zero_shot).
    # The model card records the one used, and `make index` builds the bundle's BM25 with it.
    analysis: str = AUTO_ANALYSIS
    crossfit: int = (
        0  # K >= 2: the ranker trains on out-of-fold lists from K retrievers, each without 1/K of the queries
    )
    folds: int = 0  # K-fold cross-validation by query: 0 keeps the data's splits; K >= 3 holds out fold `fold`
    fold: int = 0
    # Learning from the service's impression and feedback log (training.feedback): the log directory (its
    # RANK_LOG_DIR; "" for none), whether the data's judgments train too ("both") or only test ("clicks"), how the
    # examination propensities are estimated (em, swap, or none: uncorrected), the first N sessions only (0: all),
    # and the smallest propensity a click is weighted by.
    feedback: str = ""
    labels: str = "both"
    propensity: str = "swap"
    feedback_sessions: int = 0
    ipw_clip: float = 0.05

    @property
    def holdout(self) -> tuple[int, int] | None:
        """(fold, folds) when cross-validating, for `read_queries`."""
        return (self.fold, self.folds) if self.folds else None

    def __post_init__(self) -> None:
        if self.loss == "auto":
            object.__setattr__(self, "loss", "listwise" if self.feedback else "hybrid")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        positive = ("epochs", "batch_queries", "num_candidates", "dim", "heads", "hidden")
        retrieval = (
            "retrieval_dim",
            "retrieval_hidden",
            "retrieval_epochs",
            "retrieval_items_per_step",
            "retrieval_patience",
        )
        for name in (*positive, *retrieval):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if any(lr <= 0 for lr in (*self.ranker_lrs, *self.retrieval_lrs)):
            raise ValueError(
                f"learning rates must be positive, got lr={self.lr} retrieval_lr={self.retrieval_lr} "
                f"lr_grid={self.lr_grid!r}"
            )
        if self.query_encoder not in ("fp32", "int8"):
            raise ValueError(f"query_encoder must be fp32 or int8, got {self.query_encoder!r}")
        if self.analysis != AUTO_ANALYSIS and self.analysis not in analysis_choices():
            raise ValueError(
                f"unknown lexical analysis {self.analysis!r}: choose auto, none or a language, one of "
                + ", ".join(analysis_choices()[1:])
            )
        if self.crossfit == 1 or self.crossfit < 0:
            raise ValueError(f"--crossfit needs 0 (off) or K >= 2 parts, got {self.crossfit}")
        if self.labels not in LABEL_MODES or self.propensity not in METHODS:
            raise ValueError(
                f"--labels must be one of {', '.join(LABEL_MODES)} and --propensity one of {', '.join(METHODS)}, got "
                f"{self.labels!r} and {self.propensity!r}"
            )
        if self.feedback_sessions < 0 or not 0.0 < self.ipw_clip <= 1.0:
            raise ValueError(
                f"--feedback-sessions must be >= 0 and --ipw-clip in (0, 1], got {self.feedback_sessions} and "
                f"{self.ipw_clip}"
            )
        if self.folds and (self.folds < 3 or not 0 <= self.fold < self.folds):
            raise ValueError(
                f"--folds needs K >= 3 and 0 <= --fold < K (test, validation and training folds), got "
                f"folds={self.folds} fold={self.fold}"
            )

    def feedback_options(self) -> FeedbackOptions | None:
        """The joined feedback log and how to learn from it, or None without `feedback`."""
        if not self.feedback:
            return None
        return FeedbackOptions(
            read_feedback_log(Path(self.feedback)), self.labels, self.propensity, self.feedback_sessions, self.ipw_clip
        )

    @property
    def ranker_lrs(self) -> tuple[float, ...]:
        """The ranker's learning rates to try, in order of preference on a tie."""
        return self._grid() or (self.lr,)

    @property
    def retrieval_lrs(self) -> tuple[float, ...]:
        """The candidate generator's learning rates to try, in order of preference on a tie."""
        return self._grid() or (self.retrieval_lr,)

    def _grid(self) -> tuple[float, ...]:
        try:
            return tuple(float(part) for part in self.lr_grid.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"--lr-grid must be comma-separated numbers, got {self.lr_grid!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values: dict[str, Any] = {k: Path(v) if k.endswith("_dir") else v for k, v in data.items()}
        return cls(**values)


@dataclass
class TrainResult:
    """The best model (by validation nDCG@10) and how training went."""

    model: FusionRanker
    model_config: FusionConfig
    best_val_ndcg: float
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_per_epoch: float
    device: str
    steps: int
    optimizer_state: dict[str, Any]
    lr: float  # the peak learning rate of the run kept
    history: list[dict[str, float]] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible to torch")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr; a pure function of the step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


class FeatureTensors:
    """Catalog features on the training device, gathered per batch of lists."""

    def __init__(self, features: CandidateFeatures, device: torch.device) -> None:
        self.text = torch.from_numpy(features.text).to(device)
        self.image = torch.from_numpy(features.image).to(device)
        self.attrs = torch.from_numpy(features.attrs).to(device)
        self.mask = torch.from_numpy(features.mask).to(device)
        self.device = device

    @classmethod
    def of(cls, dataset: Dataset, device: torch.device) -> FeatureTensors:
        return cls(dataset.features, device)

    def batch(self, lists: RankingLists, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(query, text, image, attrs, mask, retrieval_score, evidence, query_index) for the lists at `rows` (the
        arguments of `FusionRanker.forward`), candidates flattened to M = B*K."""
        cand = torch.from_numpy(lists.candidates[rows]).to(self.device)  # (B, K)
        flat = cand.flatten()
        query_index = torch.arange(len(rows), device=self.device).repeat_interleave(cand.shape[1])
        query = torch.from_numpy(lists.query_emb[rows]).to(self.device)
        retrieval_score = torch.from_numpy(lists.retrieval[rows].reshape(-1)).to(self.device)
        candidate = (self.text[flat], self.image[flat], self.attrs[flat], self.mask[flat])
        evidence = torch.from_numpy(lists.evidence[rows].reshape(-1, 2)).to(self.device)
        return query, *candidate, retrieval_score, evidence, query_index


def validate(model: FusionRanker, tensors: FeatureTensors, lists: RankingLists) -> RankingMetrics:
    """Validation metrics of the model on `lists`, over their labelled candidates."""
    return lists.metrics(score_lists(model, tensors, lists))


@torch.inference_mode()
def score_lists(model: FusionRanker, tensors: FeatureTensors, lists: RankingLists, batch: int = 64) -> np.ndarray:
    """Scores (Q, K) for every candidate of every list, in eval mode."""
    was_training = model.training
    model.eval()
    out = np.zeros(lists.candidates.shape, dtype=np.float32)
    for start in range(0, len(lists), batch):
        rows = np.arange(start, min(start + batch, len(lists)))
        scores = model(*tensors.batch(lists, rows)).float()
        out[rows] = scores.view(len(rows), -1).cpu().numpy()
    model.train(was_training)
    return out


def best_rate(what: str, rates: tuple[float, ...], run: Callable[[float], R], score: Callable[[R], float]) -> list[R]:
    """`run` at each learning rate, in order; the runs, the best by `score` first (the earlier rate on a tie)."""
    runs = []
    for rate in rates:
        if len(rates) > 1:
            tqdm.write(f"{what} at learning rate {rate:g}")
        runs.append(run(rate))
    order = sorted(range(len(runs)), key=lambda i: -score(runs[i]))  # a stable sort keeps the earlier of equals
    if len(runs) > 1:
        scores = ", ".join(f"{rate:g}: {score(r):.4f}" for rate, r in zip(rates, runs, strict=True))
        tqdm.write(f"{what}: kept learning rate {rates[order[0]]:g} (validation {scores})")
    return [runs[i] for i in order]


def train(cfg: TrainConfig, dataset: Dataset) -> TrainResult:
    """One run per learning rate of `cfg.ranker_lrs`; the run whose best epoch has the best val nDCG@10 is kept (the
    earlier rate on a tie). Its epochs and seconds count every run."""
    runs = best_rate(
        "ranker", cfg.ranker_lrs, lambda lr: train_at(replace(cfg, lr=lr), dataset), lambda run: run.best_val_ndcg
    )
    seconds, epochs = sum(run.seconds for run in runs), sum(run.epochs_run for run in runs)
    return replace(runs[0], seconds=seconds, epochs_run=epochs, seconds_per_epoch=seconds / max(1, epochs))


def train_at(cfg: TrainConfig, dataset: Dataset) -> TrainResult:
    """Train a FusionRanker on dataset.splits['train'] at `cfg.lr`, selecting the epoch with the best val nDCG@10."""
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    use_amp = device.type == "cuda"
    schema = dataset.schema
    model_cfg = FusionConfig(
        text_dim=schema.text_dim,
        image_dim=schema.image_dim,
        attr_dim=schema.attr_dim,
        dim=cfg.dim,
        heads=cfg.heads,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
    )
    model = FusionRanker(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = make_loss(cfg.loss)
    tensors = FeatureTensors.of(dataset, device)
    train_lists, val_lists = dataset.splits["train"], dataset.splits["val"]
    labels_all = torch.from_numpy(train_lists.grades).to(device)
    labelled_all = torch.from_numpy(train_lists.labelled).to(device)
    generator = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(train_lists) / cfg.batch_queries)
    total_steps = cfg.epochs * steps_per_epoch

    log.info(
        "training on %s%s: %d train / %d val lists of %d candidates, loss=%s; %s",
        device,
        " (bf16 autocast)" if use_amp else "",
        len(train_lists),
        len(val_lists),
        train_lists.candidates.shape[1],
        cfg.loss,
        NDCG_CONVENTION,
    )
    # Epoch 0 is the untrained ranker, which orders every list by its prior (see model.fusion): early stopping may
    # keep it, so training never ships a ranker below the prior on the validation queries.
    prior = validate(model, tensors, val_lists)
    tqdm.write(f"epoch   0  (the prior alone)  val nDCG@10 {prior.ndcg_at_10:.4f}")
    best = (prior.ndcg_at_10, 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = [{"epoch": 0, "val_ndcg@10": prior.ndcg_at_10}]
    step, started = 0, time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="epochs", unit="epoch", leave=False, disable=None)
    for epoch in bar:
        model.train()
        losses = []
        for rows in np.array_split(generator.permutation(len(train_lists)), steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                scores = model(*tensors.batch(train_lists, rows)).view(len(rows), -1)  # (B, K)
            labels = labels_all[torch.from_numpy(rows).to(device)]
            loss = loss_fn(scores.float(), labels, labelled_all[torch.from_numpy(rows).to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        val = validate(model, tensors, val_lists)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_ndcg@10": val.ndcg_at_10})
        improved = val.ndcg_at_10 > best[0]
        if improved:
            best = (val.ndcg_at_10, epoch + 1, copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", val_ndcg=f"{val.ndcg_at_10:.4f}")
        tqdm.write(
            f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  val nDCG@10 {val.ndcg_at_10:.4f}"
            f"  val Compliance@1 {val.compliance_at_1:.3f}{'  *' if improved else ''}"
        )
        if epoch + 1 - best[1] >= cfg.patience:
            tqdm.write(f"early stop: no val nDCG@10 gain for {cfg.patience} epochs")
            break
    bar.close()
    seconds = time.perf_counter() - started
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(
        model=model,
        model_config=model_cfg,
        best_val_ndcg=best[0],
        best_epoch=best[1],
        epochs_run=len(history) - 1,
        seconds=seconds,
        seconds_per_epoch=seconds / max(1, len(history) - 1),
        device=str(device),
        steps=step,
        optimizer_state=optimizer.state_dict(),
        lr=cfg.lr,
        history=history,
    )
