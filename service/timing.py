"""`StageTimer`: the wall time of each stage of a ranking batch (service.metrics.STAGES), taken as laps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StageTimer:
    """Wall time of each batch stage in ms; every job of the batch reports the batch's stage times."""

    ms: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        """Time since the last lap, added to `stage` (a stage may run in two pieces)."""
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now
