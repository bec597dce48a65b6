"""How likely a user is to examine each position of an answer: the examination propensities that turn clicks,
which favour whatever was shown first, into an unbiased relevance signal.

Both estimators assume the position-based click model (PBM): P(click on d at position k for q) = theta_k * gamma_qd,
examination times attractiveness, with theta_1 = 1 (propensities are relative to the top: the scale is not
identifiable from clicks, and inverse-propensity weighting needs only ratios).

- `em_propensity`: expectation-maximisation on the PBM over every session (Chuklin et al. 2015; Wang et al. 2018).
  It identifies theta only where the same item was shown at different positions for the same query; the service's
  `RANK_EXPLORE` adjacent swaps provide that.
- `swap_propensity`: intervention harvesting from those swaps alone (Joachims et al. 2017; Agarwal et al. 2019). For
  an adjacent pair (a, b) normally at (k, k+1), the clicks either item gets at k+1 against at k, each per session of
  its order, estimate theta_{k+1} / theta_k; the ratios chain from theta_1 = 1.

Training uses `swap` by default: measured against simulated users' known propensities (`python -m
training.evaluate.propensity_check`; BENCHMARKS.md, "Learning from clicks"), over answers 50 deep at 100k sessions
it was within 0.22 in mean |log ratio| over the top 20 on CISI and SYNTHETIC, EM 0.50 and 0.61; below 10k sessions
neither is close (EM, with few sessions per (query, item), drifts towards 1, which is no correction).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from training.feedback.sessions import Session

METHODS = ("em", "swap", "none")  # "none": every position weighted 1, no correction


def _observations(sessions: Sequence[Session], depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct (query, item, position) shown: the position index (0-based), the (query, item) pair's index,
    how often it was shown there, and how often clicked there. Aggregated, so an EM iteration costs the number of
    distinct placements, not of impressions."""
    placements: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    for session in sessions:
        for k, item in enumerate(session.shown[:depth]):
            row = placements[(session.query, item, k)]
            row[0] += 1
            row[1] += item in session.clicked
    pairs: dict[tuple[str, str], int] = {}
    keys = list(placements)
    position = np.asarray([k for _, _, k in keys], dtype=np.int64)
    pair = np.asarray([pairs.setdefault((q, d), len(pairs)) for q, d, _ in keys], dtype=np.int64)
    shown = np.asarray([placements[key][0] for key in keys], dtype=np.float64)
    clicked = np.asarray([placements[key][1] for key in keys], dtype=np.float64)
    return position, pair, shown, clicked


def em_propensity(sessions: Sequence[Session], depth: int = 10, iterations: int = 20000) -> np.ndarray:
    """(depth,) examination propensities by EM on the position-based model, theta_1 = 1. EM creeps along the
    ridge where theta and gamma trade scale, hence the many (cheap, aggregated) iterations."""
    k, pair, n, c = _observations(sessions, depth)
    if not len(k):
        return np.ones(depth)
    pairs = int(pair.max()) + 1
    theta, gamma = np.full(depth, 0.5), np.full(pairs, 0.5)
    per_position = np.maximum(np.bincount(k, weights=n, minlength=depth), 1.0)
    per_pair = np.bincount(pair, weights=n, minlength=pairs)
    for _ in range(iterations):
        t, g = theta[k], gamma[pair]
        missed = np.maximum(1.0 - t * g, 1e-12)  # P(no click)
        # The expected posteriors of the unclicked impressions: examined but unattractive, or attractive but unseen.
        examined = c + (n - c) * t * (1.0 - g) / missed
        attractive = c + (n - c) * (1.0 - t) * g / missed
        theta = np.clip(np.bincount(k, weights=examined, minlength=depth) / per_position, 1e-6, 1.0)
        gamma = np.clip(np.bincount(pair, weights=attractive, minlength=pairs) / per_pair, 1e-6, 1.0)
    # Examination does not rise down a list; where clicks are too few to say so, EM's tail drifts up towards 1.
    return np.minimum.accumulate(theta / theta[0])


def swap_propensity(sessions: Sequence[Session], depth: int = 10) -> np.ndarray:
    """(depth,) propensities from the exploration swaps alone, theta_1 = 1.

    Each adjacent pair of positions gives a ratio theta_{k+1} / theta_k, and the ratios chain, so one noisy ratio
    moves every position below it. Deep in a list clicks are few and the ratios noisy: capping each at 1 and
    chaining them drifted to 1e-4 by position 50 where the truth was 0.02 (simulated users, 100k sessions). So the
    log ratios are pooled instead: fitted by isotonic regression, weighted by the clicks behind each, to a
    sequence that never falls down the list and stays at most 0 (examination does not rise down a list, and its
    decay slows: true of (1/k)^eta users and of cascade-like ones). A pair no swap measured has no weight."""
    # (query, k, a, b): a normally at k, b at k+1 -> [sessions in order, a's clicks at k, b's at k+1,
    #                                                 sessions swapped, a's clicks at k+1, b's at k]
    counts: dict[tuple[str, int, str, str], list[float]] = defaultdict(lambda: [0.0] * 6)
    for s in sessions:
        if s.explored is not None:
            k = s.explored[0] - 1
            b, a = s.shown[k], s.shown[k + 1]  # shown swapped: b (normally k+1) is at k
            row = counts[(s.query, k, a, b)]
            row[3] += 1
            row[4] += a in s.clicked
            row[5] += b in s.clicked
        else:
            for k in range(min(depth, len(s.shown)) - 1):
                a, b = s.shown[k], s.shown[k + 1]
                row = counts[(s.query, k, a, b)]
                row[0] += 1
                row[1] += a in s.clicked
                row[2] += b in s.clicked
    at_lower = np.zeros(depth)  # sum over pairs of theta_{k+1} (gamma_a + gamma_b), estimated
    at_upper = np.zeros(depth)  # sum over pairs of theta_k (gamma_a + gamma_b), estimated
    clicks = np.zeros(depth)  # the clicks behind each estimate: its weight
    for (_, k, _, _), (n0, a_k, b_k1, n1, a_k1, b_k) in counts.items():
        if n0 and n1 and k + 1 < depth:
            at_lower[k] += a_k1 / n1 + b_k1 / n0
            at_upper[k] += a_k / n0 + b_k / n1
            clicks[k] += a_k + b_k1 + a_k1 + b_k
    measured = (at_upper > 0) & (at_lower > 0)
    log_ratios = np.where(measured, np.log(np.maximum(at_lower, 1e-12) / np.maximum(at_upper, 1e-12)), 0.0)
    pooled = np.minimum(_nondecreasing(log_ratios[:-1], np.where(measured, clicks, 0.0)[:-1]), 0.0)
    return np.exp(np.concatenate([[0.0], np.cumsum(pooled)]))


def _nondecreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted isotonic regression onto non-decreasing sequences (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, length]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (v2, w2, n2), (v1, w1, n1) = blocks.pop(), blocks.pop()
            total = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / total if total > 0 else min(v1, v2), total, n1 + n2])
    return np.asarray([value for value, _, n in blocks for _ in range(int(n))])


def estimate_propensity(method: str, sessions: Sequence[Session], depth: int = 10) -> np.ndarray:
    """The propensities by `method` (one of METHODS)."""
    if method == "em":
        return em_propensity(sessions, depth)
    if method == "swap":
        return swap_propensity(sessions, depth)
    if method == "none":
        return np.ones(depth)
    raise ValueError(f"unknown propensity method {method!r}; choose one of {', '.join(METHODS)}")
