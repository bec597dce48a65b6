"""The training queries of `make train FEEDBACK=dir`: the data's judged queries and the logged ones, with their
labels, in the form `training.dataset` builds ranking lists from.

- A logged query whose text is one of the data's queries (normalised as the service normalises it) takes that
  query's id and split; any other gets an id from its text and a split by hash: 1 in 5 validation, and, when the
  data has no judged test query, 1 in 5 test as well, whose held-out click labels then make the counterfactual
  test set the quality gate decides on.
- A test query of the data is never trained on: its logged sessions are dropped before anything is estimated
  (propensities included), so that the gate and the evaluation see only judgments and clicks the model never
  learned from. `FeedbackOptions.sessions` then keeps the first N sessions (a learning curve by sample size).
- `labels`: "both" keeps the data's judgments and adds click grades for the items no person judged; "clicks" keeps
  the data's judgments for its test queries only (to evaluate), and trains and validates on clicks alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from index.data.records import Judgment, Query, fold_of, hash_split
from index.runtime.query_text import normalize_text
from training.feedback.labels import ClickLabels, click_labels
from training.feedback.propensity import METHODS, estimate_propensity
from training.feedback.sessions import FeedbackError, FeedbackLog

LABEL_MODES = ("both", "clicks")


@dataclass(frozen=True)
class FeedbackOptions:
    """A joined feedback log and how to learn from it (TrainConfig's feedback settings)."""

    log: FeedbackLog
    labels: str = "both"  # LABEL_MODES
    propensity: str = "swap"  # training.feedback.propensity.METHODS
    sessions: int = 0  # the first N usable sessions; 0: all
    clip: float = 0.05  # propensities below count as this (weights at most 1 / clip)

    def __post_init__(self) -> None:
        if self.labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)} with feedback, got {self.labels!r}")
        if self.propensity not in METHODS:
            raise ValueError(f"propensity must be one of {', '.join(METHODS)}, got {self.propensity!r}")
        if self.sessions < 0 or not 0.0 < self.clip <= 1.0:
            raise ValueError(f"feedback sessions must be >= 0 and the clip in (0, 1], got {self.sessions}, {self.clip}")


@dataclass(frozen=True)
class Merged:
    """Queries with splits, and (query id, item id, grade, compliant) labels, human and from clicks."""

    queries: list[Query]
    labels: list[tuple[str, str, float, bool]]
    click_queries: int  # logged queries trained, validated or tested on
    held_out_dropped: int  # sessions of the data's test queries (left out)
    unknown_items: int  # clicked-on items no longer in the catalog
    counterfactual_test: bool  # the test split is held-out logged queries with click labels
    clicks: ClickLabels  # what the kept sessions gave
    partial: frozenset[str]  # queries with click labels and no judgments: only their shown items are labelled


_TRAIN = Query("", "", "train", {})  # stands for a logged query the data does not have


def _log_id(text: str) -> str:
    return "log-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def merge_feedback(
    queries: list[Query], judgments: list[Judgment], options: FeedbackOptions, catalog: set[str]
) -> Merged:
    """See the module's docstring."""
    labels = options.labels
    judged_ids = {j.query_id for j in judgments}
    by_text = {normalize_text(q.text): q for q in queries if q.id in judged_ids}
    test_ids = {q.id for q in by_text.values() if q.split == "test"}
    counterfactual = not test_ids
    usable = [s for s in options.log.sessions if by_text.get(s.query, _TRAIN).split != "test"]
    dropped = len(options.log.sessions) - len(usable)
    if options.sessions:
        if len(usable) < options.sessions:
            raise FeedbackError(
                f"{options.sessions} feedback sessions asked for, but the log has {len(usable)} outside the test "
                "queries: simulate or log more, or ask for fewer"
            )
        usable = usable[: options.sessions]
    depth = max((len(s.shown) for s in usable), default=1)  # as deep as answers went
    theta = estimate_propensity(options.propensity, usable, depth)
    clicks = click_labels(usable, theta, options.propensity, options.clip)
    kept = [j for j in judgments if labels == "both" or j.query_id in test_ids]
    human = {(j.query_id, j.item_id) for j in kept}
    out: list[tuple[str, str, float, bool]] = [(j.query_id, j.item_id, float(j.grade), j.is_compliant) for j in kept]
    kept_ids = {j.query_id for j in kept}
    chosen = {q.id: q for q in queries if q.id in kept_ids}
    unknown, partial = 0, set()
    for text, grades in clicks.grades.items():
        query = by_text.get(text)
        if query is None:
            query_id = _log_id(text)
            split = hash_split(query_id) if counterfactual else ("val" if fold_of(query_id, 5) == 0 else "train")
            query = Query(query_id, text, split, {})
        if query.id not in kept_ids:
            partial.add(query.id)
        chosen[query.id] = query
        for item_id, grade in grades.items():
            if item_id not in catalog:
                unknown += 1
            elif (query.id, item_id) not in human:
                out.append((query.id, item_id, grade, grade >= 2.0))
    return Merged(
        list(chosen.values()), out, len(clicks.grades), dropped, unknown, counterfactual, clicks, frozenset(partial)
    )
