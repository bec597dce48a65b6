"""Queries, judgments and the per-query candidate lists that training and evaluation work on.

A list holds the candidates the service would give for the query (the RRF of the sources in `Candidates.sources`:
the learned space, MiniLM dense search, BM25; `index.runtime.hybrid`), with their grades and zero-shot evidence:
the ranker learns and is evaluated on exactly what it will see when serving. Lists start zero-shot (dense and
BM25); once the two-tower retriever is trained, `Dataset.with_candidates` rebuilds them with the sources and the
prior chosen on the validation queries.

Any dataset in the user data format (docs/data.md) is read here: JSONL or Parquet files, judgments as JSONL/Parquet or
TREC qrels, items with precomputed vectors or with image paths (encoded with the ONNX CLIP image encoder). The
embedded synthetic generator is one producer of that format.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.data.readers import find_data_file, find_judgments
from index.data.records import SPLITS, DataError, Item, Judgment, Query
from index.data.verdict import Screened, read_catalog
from index.offline.featurize import featurize
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index
from index.runtime.features import CandidateFeatures
from index.runtime.hybrid import ZERO_SHOT_PRIOR, ZERO_SHOT_SOURCES, candidate_rows, evidence, ranker_evidence
from index.runtime.lexical import NO_ANALYSIS, LexicalIndex
from index.runtime.text_encoder import TextEncoder
from model.schema import FeatureSchema
from training.feedback.merge import FeedbackOptions, merge_feedback
from training.metrics import RELEVANT_GRADE, RankingMetrics, evaluate_scores

log = logging.getLogger(__name__)

IDEAL_DEPTH = 10  # nDCG@10 needs only the ten best judged grades of a query
DEFAULT_IMAGE_ENCODER = Path("artifacts/encoders/clip")  # where `make image-encoder` writes it


@dataclass
class RankingLists:
    """Q queries with K retrieved candidates each. Rows index the catalog (items, features)."""

    query_ids: list[str]
    query_texts: list[str]
    query_emb: np.ndarray  # (Q, text_dim)
    candidates: np.ndarray  # (Q, K) int64 item rows
    retrieval: np.ndarray  # (Q, K) float32 the ranker's retrieval_score input: query . candidate in the scoring space
    evidence: np.ndarray  # (Q, K, 2) float32 the ranker's evidence input (prior, lexical) for each candidate
    grades: np.ndarray  # (Q, K) float64, 0 where unjudged (judgments are integers; click labels need not be)
    compliant: np.ndarray  # (Q, K) bool
    ideal_grades: np.ndarray  # (Q, IDEAL_DEPTH) best judged grades over the whole catalog, descending
    relevant_total: np.ndarray  # (Q,) items with grade >= RELEVANT_GRADE in the whole catalog
    # (Q, K) bool: the candidates whose label is known. True everywhere for judged queries (unjudged means not
    # relevant); for a query labelled by clicks, only the items its sessions showed: of the others nothing is
    # known (no propensity weighting can make up for never showing them), so the loss and the validation skip them.
    # Taking them as irrelevant teaches the ranker that what the logging ranker missed is bad: on SYNTHETIC's first
    # fold, in the loss it halved the gain over the prior, in the validation it kept the untrained epoch
    # (BENCHMARKS.md, "Learning from clicks").
    labelled: np.ndarray

    def __len__(self) -> int:
        return len(self.query_ids)

    def take(self, rows: np.ndarray) -> RankingLists:
        """The lists at `rows`, in that order."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values[f.name] = [value[r] for r in rows] if isinstance(value, list) else value[rows]
        return RankingLists(**values)

    @staticmethod
    def concat(parts: list[RankingLists]) -> RankingLists:
        """One RankingLists holding `parts`' lists one after another."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(RankingLists):
            pieces = [getattr(p, f.name) for p in parts]
            values[f.name] = sum(pieces, []) if isinstance(pieces[0], list) else np.concatenate(pieces)
        return RankingLists(**values)

    def metrics(self, scores: np.ndarray) -> RankingMetrics:
        """Metrics of (Q, K) scores over each list's labelled candidates (`labelled`): for click labels, how well
        the shown items are ordered, which is what clicks can tell; for judgments, every candidate."""
        return evaluate_scores(np.where(self.labelled, scores, -np.inf), self.grades, self.compliant, self.ideal_grades)

    def rescored(self, space: CandidateSpace) -> RankingLists:
        """The same lists with the retrieval score taken in `space` (e.g. the item tower over masked inputs)."""
        return dataclasses.replace(self, retrieval=retrieval_matrix(space, self.candidates, self.query_emb))

    def candidate_recall(self) -> float:
        """Mean share of each query's relevant items that made its candidate list (queries with none excluded):
        what the candidate generator lets the ranker see at all."""
        has = self.relevant_total > 0
        if not has.any():
            return float("nan")
        found = (self.grades >= RELEVANT_GRADE).sum(axis=1)
        return float((found[has] / self.relevant_total[has]).mean())


Judged = dict[str, dict[int, tuple[float, bool]]]  # query id -> item row -> (grade, compliant)


@dataclass(frozen=True)
class CandidateSpace:
    """A vector space to search: unit item vectors, and the map of a query embedding into their space."""

    name: str
    items: np.ndarray  # (N, D)
    project: Callable[[np.ndarray], np.ndarray]  # (Q, text_dim) MiniLM query embeddings -> (Q, D)


def retrieval_matrix(space: CandidateSpace, rows: np.ndarray, query_emb: np.ndarray) -> np.ndarray:
    """(Q, K) inner product of each query with each of its candidates in `space`."""
    return np.einsum("qkd,qd->qk", space.items[rows], space.project(query_emb)).astype(np.float32)


def text_space(features: CandidateFeatures) -> CandidateSpace:
    """MiniLM query against MiniLM item text (title and text): the dense source, and the zero-shot cosine."""
    return CandidateSpace("text", features.text, lambda query: query)


@dataclass(frozen=True)
class Candidates:
    """How candidate lists are made, exactly as the service makes them: the RRF of `sources` (each searched to the
    list's depth over the whole catalog, filled up from dense search when they find fewer), with `prior` as the
    ranker's prior. `space` is the learned space (None before the retriever exists); it also gives the ranker's
    retrieval_score input (the text space stands in before then)."""

    text: CandidateSpace
    lexical: LexicalIndex
    space: CandidateSpace | None = None
    sources: tuple[str, ...] = ZERO_SHOT_SOURCES
    prior: str = ZERO_SHOT_PRIOR

    @property
    def scoring_space(self) -> CandidateSpace:
        return self.space or self.text

    def rows(self, query_texts: list[str], query_emb: np.ndarray, depth: int) -> np.ndarray:
        """(Q, depth) candidate rows per query (depth capped at the catalog's size)."""
        depth = min(depth, len(self.text.items))
        ranked: dict[str, list[np.ndarray]] = {"dense": list(exact_search(self.text, query_emb, depth))}
        if "bm25" in self.sources:
            ranked["bm25"] = [self.lexical.search(text, depth)[1] for text in query_texts]
        if "learned" in self.sources:
            if self.space is None:
                raise ValueError("the learned source needs the trained retriever's space")
            ranked["learned"] = list(exact_search(self.space, query_emb, depth))
        return np.stack(
            [
                candidate_rows({name: lists[q] for name, lists in ranked.items()}, self.sources, depth)
                for q in range(len(query_texts))
            ]
        )


def rows_recall(rows: np.ndarray, query_ids: list[str], judged: Judged) -> float:
    """`RankingLists.candidate_recall` for bare candidate rows (Q, K): cheap enough to run every epoch."""
    shares = []
    for query_id, found in zip(query_ids, rows, strict=True):
        relevant = {row for row, (grade, _) in judged.get(query_id, {}).items() if grade >= RELEVANT_GRADE}
        if relevant:
            shares.append(len(relevant.intersection(found.tolist())) / len(relevant))
    return float(np.mean(shares)) if shares else float("nan")


def exact_search(space: CandidateSpace, query_emb: np.ndarray, depth: int) -> np.ndarray:
    """(Q, depth) rows of the best items in `space` by exact inner-product search."""
    index = build_index(space.items, IndexParams(IndexKind.EXACT))
    return FaissIndex(index, IndexParams(IndexKind.EXACT)).search(space.project(query_emb), depth)[1]


@dataclass
class Dataset:
    """A catalog with its features and the train/val/test ranking lists."""

    items: list[Item]
    schema: FeatureSchema
    features: CandidateFeatures
    splits: dict[str, RankingLists]
    name: str
    judged: Judged
    candidates: Candidates  # how the lists were made
    partial: frozenset[str] = frozenset()  # queries labelled by clicks: only their shown items have labels
    screened: Screened | None = None  # what the catalog's verdict kept and skipped (None for a dataset made in code)
    feedback: dict[str, Any] | None = None  # with FEEDBACK: what the click labels came from (model card)

    @property
    def item_vectors(self) -> np.ndarray:
        """(N, D) the items in the space of the ranker's retrieval_score input."""
        return self.candidates.scoring_space.items

    @property
    def space(self) -> str:
        return self.candidates.scoring_space.name

    def with_candidates(
        self, candidates: Candidates, num_candidates: int, out_of_fold: list[OutOfFold] | None = None
    ) -> Dataset:
        """The same queries and labels with every split's candidate lists made again by `candidates`. With
        `out_of_fold`, each training query's list is made with the learned space of a retriever that never saw
        it (cross-fitting): the ranker then learns on lists like those of queries the service has never seen,
        not on ones whose retrieval score is overfit to its own training queries."""
        splits = {
            name: self._relist(lists, candidates, num_candidates)
            for name, lists in self.splits.items()
            if not (out_of_fold and name == "train")
        }
        if out_of_fold:
            train = self.splits["train"]
            parts = [
                self._relist(train.take(fold.rows), dataclasses.replace(candidates, space=fold.space), num_candidates)
                for fold in out_of_fold
            ]
            order = np.concatenate([fold.rows for fold in out_of_fold])
            if sorted(order.tolist()) != list(range(len(train))):
                raise ValueError("the out-of-fold parts must cover every training query exactly once")
            splits["train"] = RankingLists.concat(parts).take(np.argsort(order))
        return dataclasses.replace(self, splits=splits, candidates=candidates)

    def _relist(self, lists: RankingLists, candidates: Candidates, num_candidates: int) -> RankingLists:
        return build_lists(
            lists.query_ids, lists.query_texts, lists.query_emb, self.judged, candidates, num_candidates, self.partial
        )


@dataclass(frozen=True)
class OutOfFold:
    """Training queries (rows of the train split) and the learned space of a retriever trained without them."""

    rows: np.ndarray
    space: CandidateSpace


def judged_by_row(judgments: list[Judgment], item_rows: dict[str, int]) -> Judged:
    """query id -> item row -> (grade, compliant), the form the candidate lists are labelled from."""
    judged: Judged = {}
    for j in judgments:
        judged.setdefault(j.query_id, {})[item_rows[j.item_id]] = (j.grade, j.is_compliant)
    return judged


def encode_item_images(items: list[Item], image_encoder_dir: Path | None) -> list[Item]:
    """Fill image_embedding for items that give an image path instead, with the ONNX CLIP image encoder.

    Image paths are relative to the items file's directory (the caller resolves them). An image that cannot be
    decoded is an error here: training data should pass `make validate` and `make ingest` first, which report them.
    """
    needing = [i for i, item in enumerate(items) if item.image_embedding is None and item.image]
    if not needing:
        return items
    from index.offline.image_encoder import ImageEncoder
    from index.offline.images import ImageError, load_image

    directory = image_encoder_dir or DEFAULT_IMAGE_ENCODER
    if not (directory / "encoder.json").exists():
        raise DataError(
            f"{len(needing)} items have image paths but no image_embedding, and there is no image encoder at "
            f"{directory}: run `make image-encoder CLIP=/path/to/local/clip`"
        )
    encoder = ImageEncoder(directory)
    out = list(items)
    batch = 64
    for start in range(0, len(needing), batch):
        rows = needing[start : start + batch]
        try:
            images = [load_image(Path(str(items[r].image))) for r in rows]
        except ImageError as exc:
            raise DataError(f"cannot use an item image: {exc}") from None
        for r, vector in zip(rows, encoder.encode(images)):
            out[r] = dataclasses.replace(items[r], image_embedding=vector.tolist())
    log.info("encoded %d item images with %s", len(needing), encoder.name)
    return out


def build_lists(
    query_ids: list[str],
    query_texts: list[str],
    query_emb: np.ndarray,
    judged: Judged,
    candidates: Candidates,
    num_candidates: int,
    partial: frozenset[str] = frozenset(),
) -> RankingLists:
    """Make each query's list of `num_candidates` with `candidates`, with its evidence and labels; the queries in
    `partial` have labels for their judged rows only (`RankingLists.labelled`)."""
    rows = candidates.rows(query_texts, query_emb, num_candidates)
    text = candidates.text.items
    dense = np.einsum("qkd,qd->qk", text[rows], query_emb)
    bm25 = np.stack([candidates.lexical.scores_at(t, r) for t, r in zip(query_texts, rows)])
    found = evidence(dense.reshape(-1), bm25.reshape(-1), [rows.shape[1]] * len(rows))
    grades = np.zeros(rows.shape, dtype=np.float64)
    compliant = np.zeros(rows.shape, dtype=bool)
    ideal = np.zeros((len(query_ids), IDEAL_DEPTH), dtype=np.float64)
    relevant_total = np.zeros(len(query_ids), dtype=np.int64)
    labelled = np.ones(rows.shape, dtype=bool)
    for q, query_id in enumerate(query_ids):
        labels = judged.get(query_id, {})
        for k, row in enumerate(rows[q]):
            grades[q, k], compliant[q, k] = labels.get(int(row), (0, False))
            labelled[q, k] = query_id not in partial or int(row) in labels
        best = sorted((g for g, _ in labels.values()), reverse=True)[:IDEAL_DEPTH]
        ideal[q, : len(best)] = best
        relevant_total[q] = sum(g >= RELEVANT_GRADE for g, _ in labels.values())
    return RankingLists(
        query_ids=query_ids,
        query_texts=query_texts,
        query_emb=query_emb,
        candidates=rows.astype(np.int64),
        retrieval=retrieval_matrix(candidates.scoring_space, rows, query_emb),
        evidence=ranker_evidence(found, candidates.prior).reshape(*rows.shape, 2),
        grades=grades,
        compliant=compliant,
        ideal_grades=ideal,
        relevant_total=relevant_total,
        labelled=labelled,
    )


def require_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist (run `make data` for the synthetic default)")


def dataset_encoders(encoder_dir: Path, query_variant: str) -> tuple[TextEncoder, TextEncoder]:
    """(items' encoder, queries' encoder) for `load_dataset`: items fp32, as the index build embeds them; queries
    with `query_variant`, as the service will embed them; one graph, loaded once, when the two are the same."""
    items = TextEncoder(encoder_dir)
    return items, items if query_variant == items.variant else TextEncoder(encoder_dir, variant=query_variant)


def load_dataset(
    data_dir: Path,
    encoder: TextEncoder,
    *,
    query_encoder: TextEncoder | None = None,
    num_candidates: int = 100,
    image_dim: int | None = None,
    schema: FeatureSchema | None = None,
    image_encoder_dir: Path | None = None,
    holdout: tuple[int, int] | None = None,
    analysis: str = NO_ANALYSIS,
    feedback: FeedbackOptions | None = None,
) -> Dataset:
    """Read items/queries/judgments from data_dir, encode them and build the per-split candidate lists.

    Every record goes through the catalog's verdict (`index.data.verdict`, the same as `make validate`'s): items
    with nothing the model can use, judgments of unknown or skipped items and of unknown queries are skipped, and
    queries nobody judged are left out; each defect is logged as one warning with its count. Items that give an
    image path instead of an image_embedding are encoded with the ONNX image encoder at image_encoder_dir (default:
    artifacts/encoders/clip). `holdout` = (fold, folds) splits the queries for K-fold cross-validation instead of
    as the data says (`index.data.records.fold_split`). Queries are embedded with `query_encoder` (the variant the
    service will embed them with), items with `encoder`; the same when not given.
    `analysis` is BM25's (`index.runtime.lexical.Analyzer`). `feedback` adds the logged queries with their click
    labels (`training.feedback.merge`, which also says whether the data's judgments train too); the data then needs
    no queries or judgments.
    """
    require_data_dir(data_dir)
    judged_data = find_data_file(data_dir, "queries") is not None and find_judgments(data_dir).exists()
    if feedback is None and not judged_data:
        raise DataError(
            f"{data_dir}: training needs queries (queries.jsonl or .parquet) and judgments (judgments.jsonl or "
            ".parquet, or TREC qrels); without them build a zero-shot bundle with `make index MODEL=none`"
        )
    screened = read_catalog(data_dir, schema=schema, text_measure=encoder, holdout=holdout)
    screened.log(log)
    items = encode_item_images(screened.items, image_encoder_dir)
    rows = {item.id: i for i, item in enumerate(items)}
    learned_from, partial = None, frozenset[str]()
    if feedback is None:
        queries = screened.judged_queries
        judged = judged_by_row(screened.judgments, rows)
    else:
        queries, judged, partial, learned_from = _with_feedback(screened, feedback, rows)
    if schema is None:
        first = next((i.image_embedding for i in items if i.image_embedding is not None), None)
        # A catalog with no image at all gets image_dim 1: a placeholder column, always zero and always masked, so
        # that the stored features stay small and every graph keeps a non-empty image input. The attributes are
        # the ones the verdict was given with.
        dim = image_dim or (len(first) if first is not None else 1)
        schema = dataclasses.replace(screened.schema, text_dim=encoder.dim, image_dim=dim, text_encoder=encoder.name)
    log.info(
        "encoding %d items' text and %d queries (%s) with %s",
        len(items),
        len(queries),
        (query_encoder or encoder).variant,
        encoder.name,
    )
    features = featurize(items, schema, encoder)
    candidates = Candidates(
        text_space(features), LexicalIndex.build([item.full_text for item in items], analysis=analysis)
    )
    splits = {}
    for split in SPLITS:
        chosen = [q for q in queries if q.split == split]
        if not chosen:
            raise DataError(f"{data_dir}: no queries in split {split!r}")
        ids, texts = [q.id for q in chosen], [q.text for q in chosen]
        embedded = (query_encoder or encoder).encode(texts)
        splits[split] = build_lists(ids, texts, embedded, judged, candidates, num_candidates, partial)
    return Dataset(
        items=items,
        schema=schema,
        features=features,
        splits=splits,
        name=data_dir.name,
        judged=judged,
        candidates=candidates,
        partial=partial,
        screened=screened,
        feedback=learned_from,
    )


def _with_feedback(
    screened: Screened, feedback: FeedbackOptions, rows: dict[str, int]
) -> tuple[list[Query], Judged, frozenset[str], dict[str, Any]]:
    """The queries, labels and click-labelled queries `merge_feedback` makes of the data and the feedback log, and
    what it did."""
    merged = merge_feedback(screened.queries, screened.judgments, feedback, set(rows))
    clicks, labels = merged.clicks, feedback.labels
    judged: Judged = {}
    for query_id, item_id, grade, compliant in merged.labels:
        judged.setdefault(query_id, {})[rows[item_id]] = (grade, compliant)
    queries = [q for q in merged.queries if q.id in judged]
    log.info(
        "feedback: %s; %d logged queries with click labels (%s propensity %s), %d sessions of the data's test "
        "queries left out, %d clicked items not in the catalog; labels: %s%s",
        feedback.log.summary(),
        merged.click_queries,
        clicks.method,
        np.round(clicks.propensity, 3).tolist(),
        merged.held_out_dropped,
        merged.unknown_items,
        labels,
        "; no judged test query, so the test split is held-out logged queries (counterfactual)"
        if merged.counterfactual_test
        else "",
    )
    summary = {
        "labels": labels,
        "propensity_method": clicks.method,
        "propensity": [round(float(p), 4) for p in clicks.propensity],
        "clip": feedback.clip,
        "sessions": sum(clicks.sessions.values()),
        "logged_queries": merged.click_queries,
        "test_sessions_left_out": merged.held_out_dropped,
        "log": feedback.log.summary(),
        "counterfactual_test": merged.counterfactual_test,
    }
    return queries, judged, merged.partial, summary
