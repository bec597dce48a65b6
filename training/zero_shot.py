"""Zero-shot search as training sees it: the baselines a trained model must beat, and the choice of its candidate
sources and prior.

- `zero_shot_metrics`: MiniLM cosine, BM25 and their RRF, each over the whole catalog (its own top-K, ordered by its
  own score), scored end to end against the judgments: the quality gate compares the model with the best of them.
- `choose_analysis`: how BM25 analyses text (`--analysis auto`): none or English stems and stop words, whichever
  BM25 alone ranks better on the training and validation queries (none on a tie); chosen first, since BM25 is one of the
  candidate sources and its score the ranker's lexical evidence.
- `choose_candidates`: which sources the model's candidate lists fuse (the option with the best recall@K on the
  validation queries; zero-shot is preferred on a tie), then which prior its ranker is a residual over (the best
  nDCG@10 of the prior alone on those lists, judged on the same queries).
"""

from __future__ import annotations

import dataclasses
import logging
import math

from index.runtime.lexical import NO_ANALYSIS, LexicalIndex
from training.dataset import Candidates, CandidateSpace, Dataset, RankingLists, build_lists
from training.metrics import RankingMetrics

log = logging.getLogger(__name__)

# name -> (sources, prior): each zero-shot system is its own candidate list ordered by its own evidence.
ZERO_SHOT_SYSTEMS = {
    "zero_shot_minilm": (("dense",), "dense"),
    "zero_shot_bm25": (("bm25",), "lexical"),
    "zero_shot_rrf": (("dense", "bm25"), "rrf"),
}
# Candidate source options in order of preference on a tie (zero-shot first: it needs no trust in training).
SOURCE_OPTIONS = (
    ("dense", "bm25"),
    ("learned", "dense", "bm25"),
    ("learned", "dense"),
    ("learned",),
    ("dense",),
    ("bm25",),
)
PRIOR_OPTIONS = ("rrf", "dense", "lexical")  # the same tie rule
# `--analysis auto`'s options, the same tie rule: none assumes no language. English only, since the data format
# does not say a catalog's language; another is named with --analysis.
ANALYSIS_OPTIONS = (NO_ANALYSIS, "english")


def lists_for(dataset: Dataset, split: str, candidates: Candidates, k: int) -> RankingLists:
    """The split's queries with lists made by `candidates`."""
    lists = dataset.splits[split]
    return build_lists(
        lists.query_ids, lists.query_texts, lists.query_emb, dataset.judged, candidates, k, dataset.partial
    )


def prior_metrics(lists: RankingLists) -> RankingMetrics:
    """The lists ordered by their prior alone (what an untrained ranker serves)."""
    return lists.metrics(lists.evidence[..., 0])


def zero_shot_metrics(dataset: Dataset, split: str, k: int) -> dict[str, RankingMetrics]:
    """Each zero-shot system on the split's queries, over the whole catalog (read `ndcg_at_10_e2e`)."""
    out = {}
    for name, (sources, prior) in ZERO_SHOT_SYSTEMS.items():
        candidates = dataclasses.replace(dataset.candidates, space=None, sources=sources, prior=prior)
        out[name] = prior_metrics(lists_for(dataset, split, candidates, k))
    return out


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `choose_candidates` picked and the validation figures it picked by."""

    candidates: Candidates
    recall: dict[str, float]  # "+"-joined sources -> val recall@K
    prior_ndcg: dict[str, float]  # prior -> val nDCG@10 (e2e) of the prior alone


def choose_candidates(dataset: Dataset, learned: CandidateSpace, k: int) -> Choice:
    """The candidate sources with the best recall@K, then the prior with the best nDCG@10, each on the validation
    queries, the same for every option. (Judging the zero-shot options on the training queries as well, which they
    were fitted to none of, compared options on different queries: on the tiny test catalog it picked learned+dense,
    recall 0.56 on validation, over BM25, 0.48 on train+validation, where BM25 was better held out: 0.57 to 0.51.)"""
    base = dataclasses.replace(dataset.candidates, space=learned)
    recall = {}
    for sources in SOURCE_OPTIONS:
        recall["+".join(sources)] = lists_for(
            dataset, "val", dataclasses.replace(base, sources=sources), k
        ).candidate_recall()
    best_sources = max(SOURCE_OPTIONS, key=lambda s: (recall["+".join(s)], -SOURCE_OPTIONS.index(s)))
    chosen = dataclasses.replace(base, sources=best_sources)
    prior_ndcg = {}
    for prior in PRIOR_OPTIONS:
        lists = lists_for(dataset, "val", dataclasses.replace(chosen, prior=prior), k)
        prior_ndcg[prior] = prior_metrics(lists).ndcg_at_10_e2e
    best_prior = max(PRIOR_OPTIONS, key=lambda p: (prior_ndcg[p], -PRIOR_OPTIONS.index(p)))
    log.info(
        "candidates: recall@%d %s -> %s; prior nDCG@10 %s -> %s",
        k,
        {name: round(value, 4) for name, value in recall.items()},
        "+".join(best_sources),
        {name: round(value, 4) for name, value in prior_ndcg.items()},
        best_prior,
    )
    return Choice(dataclasses.replace(chosen, prior=best_prior), recall, prior_ndcg)


@dataclasses.dataclass(frozen=True)
class AnalysisChoice:
    """What `choose_analysis` picked (the BM25 index over the catalog) and the validation figures it picked by."""

    lexical: LexicalIndex
    ndcg: dict[str, float]  # analysis -> val nDCG@10 (e2e) of BM25 alone


def choose_analysis(dataset: Dataset, k: int) -> AnalysisChoice:
    """Of `ANALYSIS_OPTIONS`, the analysis whose BM25 alone (the `zero_shot_bm25` system: its own top-K over the whole
    catalog, in its own order) has the best nDCG@10 on the training and validation queries together; none on a tie,
    or where no such query has a relevant judged item. Both splits, unlike the sources' choice: BM25 is fitted to no
    query under either analysis, so the training queries are as unseen to it as the validation ones, and a small
    judged set needs them (CISI's 10 validation queries picked none, 0.339 to 0.324, against English's lead on its
    46 training queries, 0.419 to 0.378, and on its test queries, 0.329 to 0.285). BM25 alone, like the prior's
    choice, rather than the candidate recall the sources are chosen by: an analysis moves BM25's order (the ranker's
    lexical evidence, and BM25's share of the RRF) as much as what it finds, and it is the comparison that made the
    case for stemming (CISI, all 76 queries: 0.351 none, 0.385 English). The dataset's own index is reused for its
    analysis; the other is built."""
    current = dataset.candidates.lexical
    texts = [item.full_text for item in dataset.items]
    sources, prior = ZERO_SHOT_SYSTEMS["zero_shot_bm25"]
    indexes: dict[str, LexicalIndex] = {}
    ndcg: dict[str, float] = {}
    for name in ANALYSIS_OPTIONS:
        indexes[name] = current if current.analyzer.name == name else LexicalIndex.build(texts, current.params, name)
        bm25 = dataclasses.replace(dataset.candidates, lexical=indexes[name], space=None, sources=sources, prior=prior)
        lists = RankingLists.concat([lists_for(dataset, split, bm25, k) for split in ("train", "val")])
        ndcg[name] = prior_metrics(lists).ndcg_at_10_e2e
    best = max(
        ANALYSIS_OPTIONS,
        key=lambda a: (-math.inf if math.isnan(ndcg[a]) else ndcg[a], -ANALYSIS_OPTIONS.index(a)),
    )
    log.info("BM25 analysis: BM25-alone train+val nDCG@10 %s -> %s", {a: round(v, 4) for a, v in ndcg.items()}, best)
    return AnalysisChoice(indexes[best], ndcg)
