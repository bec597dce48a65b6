"""Why a hit ranks where it does (`"explain": true`): its explanation, read from the very graph run that scored it
(`ScoringGraph.outputs` with `explain`: the scoring graph with the parts of each score as extra outputs), never from
a second model.

Per hit: the candidate sources that found it and its rank in each, with its reciprocal-rank-fusion score (a /rank
hit; /rerank documents are the caller's), the zero-shot evidence (BM25 over the list's best; the dense cosine; the
RRF prior), the ranker's prior term and learned residual (their sum is the score), the query's attention over the
item's image, text and attribute tokens per head (0 for a modality the item lacks), and the filters it passed.
Without a trained model (zero-shot serving) the prior is the score and there is neither residual nor attention; a
ranker graph not made by model.fusion (not prior + residual, one softmax) is explained without its parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.runtime.hybrid import RRF_K
from model.schema import MODALITIES


@dataclass(frozen=True)
class Details:
    """One job's candidates as the explained run saw them: each `explain_*` output's rows for its candidates (in
    candidate order), and for a /rank job the ranked rows of each source that was fused into them."""

    parts: Mapping[str, np.ndarray]
    found_by: Mapping[str, np.ndarray] | None
    prior: str  # which evidence is the prior
    sources: Sequence[str]  # the sources fused (the model's)
    zero_shot: bool  # no ranker: the prior is the score


def explanation(details: Details, at: int, row: int | None, filters: Mapping[str, list[str]] | None) -> dict[str, Any]:
    """The explanation of candidate `at` (catalog `row`, None for a /rerank text document)."""
    p = details.parts
    evidence = {name[len("explain_") :]: float(p[name][at]) for name in p if _is_evidence(name)}
    out: dict[str, Any] = {"evidence": evidence, "prior_evidence": details.prior}
    if details.found_by is not None and row is not None:
        ranks = {name: _rank_of(found, row) for name, found in details.found_by.items()}
        out["sources"] = ranks
        out["rrf"] = sum(1.0 / (RRF_K + rank) for name, rank in ranks.items() if rank and name in details.sources)
    if "explain_prior" in p:
        out["prior"] = float(p["explain_prior"][at])
        out["residual"] = float(p["explain_residual"][at])
        weights = p["explain_attention"][at]  # (H, T)
        out["attention"] = {modality: weights[:, t].tolist() for t, modality in enumerate(MODALITIES)}
    elif details.zero_shot:  # the prior is the score
        out["prior"], out["residual"] = evidence[details.prior], 0.0
    out["modalities"] = {modality: bool(p["explain_mask"][at][t] > 0) for t, modality in enumerate(MODALITIES)}
    if filters is not None:
        out["filters"] = dict(filters)
    return out


def _is_evidence(name: str) -> bool:
    return name.startswith("explain_") and name not in (
        "explain_prior",
        "explain_residual",
        "explain_attention",
        "explain_mask",
    )


def _rank_of(found: np.ndarray, row: int) -> int | None:
    """The 1-based rank of `row` in a source's ranked rows, None when that source did not find it."""
    at = np.flatnonzero(np.asarray(found) == row)
    return int(at[0]) + 1 if len(at) else None
