"""Shadow scoring: a candidate engine ranks a share of live /rank requests after their responses are sent, and
the service records how far its lists agree with the serving model's (`service.agreement`), plus its own stage
times. Nothing it computes reaches a client.

The shadow ranks on a thread of its own (the "shadow-stage" batcher in `service.lifecycle`; its engine owns its own
FAISS indexes), so real requests never queue behind its work and never meet a full queue because of it. It is still
shed first: a request is shadowed only while both the ranking queue and the shadow's are shorter than
`Settings.shadow_max_queue`, so on a busy machine the shadow gives way.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field

from service.agreement import Agreement
from service.engine import RankingEngine
from service.outcomes import RankOutcome
from service.split import in_share

RECENT = 2000  # per-request figures kept for the /admin/shadow quantiles


@dataclass
class Shadow:
    """A loaded candidate engine, the share of requests it scores, and what it has recorded so far."""

    engine: RankingEngine
    share: float  # 0..100
    counts: Counter[str] = field(default_factory=Counter)  # compared, shed, failed
    sums: dict[str, float] = field(default_factory=dict)  # agreement figure -> sum over compared pairs
    tau_pairs: int = 0  # compared pairs with a Kendall's tau (two or more common items)
    recent_total_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    recent_rbo: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def takes(self, key: str) -> bool:
        """Whether this request is shadowed (a stable split, as the canary's)."""
        return in_share(key, self.share)

    def record(self, found: Agreement, outcome: RankOutcome, total_ms: float) -> None:
        self.counts["compared"] += 1
        for name, value in found.as_dict().items():
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + value
        self.tau_pairs += found.kendall_tau is not None
        self.recent_total_ms.append(total_ms)
        self.recent_rbo.append(found.rbo)

    def summary(self, serving: RankingEngine) -> dict[str, object]:
        """What GET /admin/shadow answers: versions, share, counts, mean agreement, the shadow's own time."""
        compared = self.counts["compared"]

        def mean(name: str, n: int) -> float | None:
            return round(self.sums.get(name, 0.0) / n, 4) if n else None

        def quantile(values: deque[float], q: float) -> float | None:
            if len(values) < 2:
                return values[0] if values else None
            return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 4)

        return {
            "status": "shadow",
            "model_version": serving.model_version,
            "bundle_version": serving.bundle.version,
            "shadow_model_version": self.engine.model_version,
            "shadow_bundle_version": self.engine.bundle.version,
            "share": self.share,
            "compared": compared,
            "shed": self.counts["shed"],
            "failed": self.counts["failed"],
            "mean": {
                "overlap_at_10": mean("overlap_at_10", compared),
                "rbo": mean("rbo", compared),
                "kendall_tau": mean("kendall_tau", self.tau_pairs),
                "top1": mean("top1", compared),
            },
            "rbo_p10": quantile(self.recent_rbo, 0.10),  # the worst-agreeing tenth of recent requests starts here
            "shadow_total_ms": {
                "p50": quantile(self.recent_total_ms, 0.50),
                "p99": quantile(self.recent_total_ms, 0.99),
            },
        }
