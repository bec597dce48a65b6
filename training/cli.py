"""Command line for the training side: `python -m training.cli train|export [options]`.

Options are generated from `TrainConfig`, so the CLI, the checkpoint and the model card name the same settings.
Bad input ends with one sentence on stderr and exit code 2; nothing else prints a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from index.cli_logging import configure_cli_logging
from index.data.records import DataError
from index.runtime.features import text_only_features
from index.runtime.files import write_json
from index.runtime.lexical import NO_ANALYSIS
from model.fusion import FusionRanker
from model.retrieval import TwoTowerRetriever
from training.baselines import LambdaMART, text_cosine_scores
from training.dataset import (
    Dataset,
    OutOfFold,
    dataset_encoders,
    exact_search,
    load_dataset,
    require_data_dir,
    rows_recall,
)
from training.export import ParityError, run_export
from training.feedback.sessions import FeedbackError
from training.metrics import NDCG_CONVENTION, RELEVANT_GRADE, RankingMetrics
from training.retrieval import RetrieverResult, learned_space, out_of_fold_spaces, train_retriever
from training.train import AUTO_ANALYSIS, FeatureTensors, TrainConfig, score_lists, select_device, train
from training.zero_shot import (
    SOURCE_OPTIONS,
    Choice,
    choose_analysis,
    choose_candidates,
    lists_for,
    zero_shot_metrics,
)

log = logging.getLogger("training")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        kind = Path if f.type in ("Path", Path) else type(f.default)
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f"(default: {f.default})"
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def metrics_table(results: dict[str, RankingMetrics], title: str) -> str:
    lines = [
        title,
        f"{'system':<16} {'nDCG@10':>8} {'nDCG@10 e2e':>12} {'Compliance@1':>13} {'MRR':>7}",
    ]
    for name, m in results.items():
        lines.append(
            f"{name:<16} {m.ndcg_at_10:>8.4f} {m.ndcg_at_10_e2e:>12.4f} {m.compliance_at_1:>13.4f} {m.mrr:>7.4f}"
        )
    any_metrics = next(iter(results.values()))
    lines.append(
        f"({any_metrics.queries} queries, {any_metrics.queries_without_relevant} without a relevant candidate; "
        f"{NDCG_CONVENTION}; e2e = ideal over all judged items, including those retrieval missed; "
        "fusion_text_only = the same lists given as plain-string /rerank documents: text only, image and attributes "
        "masked; prior = the lists ordered by the ranker's zero-shot prior alone; zero_shot_* = each zero-shot "
        "search over the whole catalog, its own top-K: read their e2e column)"
    )
    return "\n".join(lines)


def candidates_table(recall: dict[str, float], k: int, choice: Choice) -> str:
    chosen = "+".join(choice.candidates.sources)
    lines = [
        f"Candidate generation (RRF of the sources), recall@{k} of relevant items (grade >= 2); served: {chosen} "
        f"(best on the validation queries), prior: {choice.candidates.prior}, BM25 analysis: "
        f"{choice.candidates.lexical.analyzer.name}",
        f"  {'sources':<22} {'val':>7} {'test':>7}",
    ]
    lines += [
        f"  {name:<22} {choice.recall[name]:>7.4f} {value:>7.4f}{'  *' if name == chosen else ''}"
        for name, value in recall.items()
    ]
    return "\n".join(lines)


def text_only_scores(
    dataset: Dataset, retriever: TwoTowerRetriever, model: FusionRanker, device: torch.device
) -> np.ndarray:
    """(Q, K) fusion scores of the test lists as /rerank sees plain-string documents (`text_only_features`, the
    service's own definition): the text only, image and attributes masked, with the retrieval score from the item
    tower over those same inputs."""
    blind = text_only_features(dataset.features.text, dataset.schema)
    test = dataset.splits["test"].rescored(learned_space(retriever, blind, device))
    return score_lists(model, FeatureTensors(blind, device), test)


def crossfit(cfg: TrainConfig, dataset: Dataset, retriever: RetrieverResult) -> list[OutOfFold] | None:
    """The out-of-fold learned spaces for the ranker's training lists (`out_of_fold_spaces`), or None when
    cross-fitting is off or there are too few training queries to split."""
    train_queries = len(dataset.splits["train"])
    if not cfg.crossfit or train_queries < 2 * cfg.crossfit:
        log.info("cross-fitting off (--crossfit %d, %d training queries)", cfg.crossfit, train_queries)
        return None
    parts = out_of_fold_spaces(
        dataclasses.replace(cfg, retrieval_lr=retriever.lr), dataset, max(1, retriever.best_epoch)
    )
    train = dataset.splits["train"]
    in_sample = exact_search(
        learned_space(retriever.model, dataset.features, torch.device("cpu")), train.query_emb, cfg.num_candidates
    )
    held_out = np.empty_like(in_sample)
    for part in parts:
        held_out[part.rows] = exact_search(part.space, train.query_emb[part.rows], cfg.num_candidates)
    log.info(
        "training queries' learned recall@%d: %.4f from the retriever trained on them, %.4f out of fold "
        "(the ranker trains on the out-of-fold lists)",
        cfg.num_candidates,
        rows_recall(in_sample, train.query_ids, dataset.judged),
        rows_recall(held_out, train.query_ids, dataset.judged),
    )
    return parts


def with_analysis(cfg: TrainConfig, dataset: Dataset) -> tuple[Dataset, dict[str, float]]:
    """The dataset with its lists made by BM25 under the analysis `cfg.analysis` resolves to (`choose_analysis` for
    auto; `load_dataset` built the named one, or none for auto), and the validation figures auto chose by."""
    if cfg.analysis != AUTO_ANALYSIS:
        return dataset, {}
    choice = choose_analysis(dataset, cfg.num_candidates)
    if choice.lexical is not dataset.candidates.lexical:
        dataset = dataset.with_candidates(
            dataclasses.replace(dataset.candidates, lexical=choice.lexical), cfg.num_candidates
        )
    return dataset, choice.ndcg


def evaluate_systems(
    dataset: Dataset, scores_by_system: dict[str, np.ndarray], split: str = "test"
) -> dict[str, RankingMetrics]:
    lists = dataset.splits[split]
    return {name: lists.metrics(scores) for name, scores in scores_by_system.items()}


def trained_on(dataset: Dataset) -> str:
    """One line for the model card: what the ranker's labels came from."""
    if dataset.feedback is None:
        return "judgments"
    f = dataset.feedback
    method = f["propensity_method"]
    weighting = "not corrected for position" if method == "none" else f"weighted by {method} propensities"
    source = f"clicks from {f['sessions']} logged sessions, {weighting}"
    test = "held-out logged queries' click labels (counterfactual)" if f["counterfactual_test"] else "judgments"
    return f"{source}{' and judgments' if f['labels'] == 'both' else ''}; tested on {test}"


def run_train(cfg: TrainConfig) -> int:
    started = time.perf_counter()
    require_data_dir(cfg.data_dir)  # the user's likeliest mistake, so it is the first thing checked
    items, queries = dataset_encoders(cfg.encoder_dir, cfg.query_encoder)
    dataset = load_dataset(
        cfg.data_dir,
        items,
        query_encoder=queries,
        num_candidates=cfg.num_candidates,
        holdout=cfg.holdout,
        analysis=NO_ANALYSIS if cfg.analysis == AUTO_ANALYSIS else cfg.analysis,
        feedback=cfg.feedback_options(),
    )
    dataset, analysis_ndcg = with_analysis(cfg, dataset)
    analysis = dataset.candidates.lexical.analyzer.name
    synthetic = "SYNTHETIC " if "synthetic" in dataset.name else ""
    log.info(
        "dataset %s%s: %d items (with each modality: %s), %s",
        synthetic,
        dataset.name,
        len(dataset.items),
        dataset.features.coverage(),
        {k: len(v) for k, v in dataset.splits.items()},
    )
    retriever = train_retriever(cfg, dataset)
    log.info(
        "best val candidate recall@%d %.4f at epoch %d (learning rate %g); %d epochs in %.1fs",
        cfg.num_candidates,
        retriever.best_val_recall,
        retriever.best_epoch,
        retriever.lr,
        retriever.epochs_run,
        retriever.seconds,
    )
    learned = learned_space(retriever.model, dataset.features, select_device(cfg.device))
    choice = choose_candidates(dataset, learned, cfg.num_candidates)
    candidate_recall = {
        "+".join(sources): lists_for(
            dataset, "test", dataclasses.replace(choice.candidates, sources=sources), cfg.num_candidates
        ).candidate_recall()
        for sources in SOURCE_OPTIONS
    }
    out_of_fold = crossfit(cfg, dataset, retriever)
    dataset = dataset.with_candidates(choice.candidates, cfg.num_candidates, out_of_fold)
    print(candidates_table(candidate_recall, cfg.num_candidates, choice))

    result = train(cfg, dataset)
    log.info(
        "best val nDCG@10 %.4f at epoch %d (learning rate %g); %d epochs in %.1fs (%.2fs/epoch on %s)",
        result.best_val_ndcg,
        result.best_epoch,
        result.lr,
        result.epochs_run,
        result.seconds,
        result.seconds_per_epoch,
        result.device,
    )

    lambdamart = LambdaMART(seed=cfg.seed).fit(dataset, dataset.splits["train"], dataset.splits["val"])
    tensors = FeatureTensors.of(dataset, torch.device(result.device))
    test = dataset.splits["test"]
    results = evaluate_systems(
        dataset,
        {
            "fusion": score_lists(result.model, tensors, test),
            "lambdamart": lambdamart.scores(dataset, test),
            "two_tower": test.retrieval,
            "text_cosine": text_cosine_scores(dataset.features, test),
            "fusion_text_only": text_only_scores(dataset, retriever.model, result.model, torch.device(result.device)),
            "prior": test.evidence[..., 0],
        },
    )
    results.update(zero_shot_metrics(dataset, "test", cfg.num_candidates))
    print(metrics_table(results, f"Test split of {synthetic}dataset '{dataset.name}', learned candidates:"))

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": result.model.state_dict(),
            "optimizer": result.optimizer_state,
            "model_config": dataclasses.asdict(result.model_config),
            "retriever": retriever.model.state_dict(),
            "retriever_config": dataclasses.asdict(retriever.config),
            "candidates": {
                "sources": list(choice.candidates.sources),
                "prior": choice.candidates.prior,
                "analysis": analysis,
            },
            "schema": dataset.schema.to_dict(),
            # the rates of the runs kept, the analysis used
            "train_config": dataclasses.replace(
                cfg, lr=result.lr, retrieval_lr=retriever.lr, analysis=analysis
            ).to_dict(),
            "step": result.steps,
            "best_val_ndcg": result.best_val_ndcg,
            "best_epoch": result.best_epoch,
            "history": result.history,
        },
        cfg.out_dir / "checkpoint.pt",
    )
    write_json(
        cfg.out_dir / "metrics.json",
        {
            "dataset": dataset.name,
            "synthetic": bool(synthetic),
            # what the labels came from: judgments, and with FEEDBACK the click log (training.feedback)
            "trained_on": trained_on(dataset),
            "feedback": dataset.feedback,
            # what the catalog's verdict kept and skipped: the counts `make validate` prints for the same data
            "catalog": dataset.screened.counts if dataset.screened is not None else {},
            "convention": NDCG_CONVENTION,
            "test": {name: m.as_dict() for name, m in results.items()},
            "candidates": {
                "k": cfg.num_candidates,
                "relevant_grade": RELEVANT_GRADE,
                "sources": list(choice.candidates.sources),
                "prior": choice.candidates.prior,
                "analysis": analysis,
                "selection_bm25_ndcg@10": {name: round(value, 4) for name, value in analysis_ndcg.items()},
                "selection_recall": {name: round(value, 4) for name, value in choice.recall.items()},
                "selection_prior_ndcg@10": {name: round(value, 4) for name, value in choice.prior_ndcg.items()},
                "test_recall": {name: round(value, 4) for name, value in candidate_recall.items()},
            },
            "training": {
                "device": result.device,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "lr": result.lr,
                "seconds": round(result.seconds, 2),
                "seconds_per_epoch": round(result.seconds_per_epoch, 3),
                "best_val_ndcg@10": round(result.best_val_ndcg, 4),
                "retriever_epochs_run": retriever.epochs_run,
                "retriever_lr": retriever.lr,
                "retriever_seconds": round(retriever.seconds, 2),
                "retriever_best_val_recall": round(retriever.best_val_recall, 4),
                "crossfit_parts": len(out_of_fold) if out_of_fold else 0,
            },
        },
    )
    log.info(
        "wrote %s and %s (%.0fs in all)",
        cfg.out_dir / "checkpoint.pt",
        cfg.out_dir / "metrics.json",
        time.perf_counter() - started,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cli", description="Train or export the fusion ranker.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_config_options(commands.add_parser("train", help="train, evaluate against baselines, save a checkpoint"))
    export = commands.add_parser("export", help="export ONNX, check parity, write the model card")
    export.add_argument("--out-dir", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    configure_cli_logging()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        if args.command == "train":
            return run_train(config_from_args(args))
        return run_export(args.out_dir)
    except (DataError, FeedbackError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
