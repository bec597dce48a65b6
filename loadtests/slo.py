"""Service-level objectives of the load test: read from a small TOML file, checked against a finished run.

Three kinds of objective, told apart by their keys (see loadtests/slo.toml):

- `histogram` + `labels` + `quantile` + `max_ms`: a server-side quantile from a Prometheus histogram, over the bucket
  deltas between the scrapes before and after the run (computed as PromQL's `histogram_quantile` does);
- `locust` + `quantile` + `max_ms`: a client-side quantile of one Locust request name, from every request's exact
  time;
- `max_error_rate`: Locust failures over all requests (the invalid-by-design requests count as failures only when
  they are not answered 4xx).

An objective that cannot be measured (no requests, a metric the service does not export, counters that went
backwards because the service restarted) is missed: a run must show the objective was met, not just fail to show
that it was not.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class SloError(ValueError):
    """The SLO file cannot be used; the message says which objective and why."""


class Kind(StrEnum):
    HISTOGRAM = "histogram"
    LOCUST = "locust"
    ERROR_RATE = "error_rate"


@dataclass(frozen=True)
class Objective:
    """One line of the SLO file."""

    name: str
    kind: Kind
    threshold: float  # max_ms for the quantile kinds, max_error_rate for the error rate
    quantile: float = 0.99
    metric: str = ""  # histogram name (HISTOGRAM) or Locust request name (LOCUST)
    labels: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind is Kind.HISTOGRAM:
            selector = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
            return f"p{self.quantile * 100:g} of {self.metric}{{{selector}}} < {self.threshold:g} ms"
        if self.kind is Kind.LOCUST:
            return f"p{self.quantile * 100:g} of Locust {self.metric!r} < {self.threshold:g} ms"
        return f"error rate <= {self.threshold:.3%}"


@dataclass(frozen=True)
class Outcome:
    """An objective checked against a run; `measured` is None when the run could not measure it."""

    objective: Objective
    measured: float | None
    passed: bool
    note: str = ""

    def shown(self) -> str:
        if self.measured is None:
            return "no data"
        if self.objective.kind is Kind.ERROR_RATE:
            return f"{self.measured:.3%}"
        return f"{self.measured:.3f} ms"


def _objective(index: int, raw: object) -> Objective:
    if not isinstance(raw, dict):
        raise SloError(f"objective {index} is not a table")
    name = str(raw.get("name", f"objective {index}"))
    where = f"objective {index} ({name!r})"
    kinds = [k for k in ("histogram", "locust", "max_error_rate") if k in raw]
    if len(kinds) != 1:
        raise SloError(f"{where} needs exactly one of 'histogram', 'locust' or 'max_error_rate'")
    allowed = {
        "histogram": {"name", "histogram", "labels", "quantile", "max_ms"},
        "locust": {"name", "locust", "quantile", "max_ms"},
        "max_error_rate": {"name", "max_error_rate"},
    }[kinds[0]]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SloError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    if kinds[0] == "max_error_rate":
        rate = raw["max_error_rate"]
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise SloError(f"{where}: max_error_rate must be a number between 0 and 1")
        return Objective(name, Kind.ERROR_RATE, float(rate))
    quantile, max_ms = raw.get("quantile", 0.99), raw.get("max_ms")
    if not isinstance(quantile, int | float) or not 0 < quantile < 1:
        raise SloError(f"{where}: quantile must be between 0 and 1 (0.99 for p99)")
    if not isinstance(max_ms, int | float) or max_ms <= 0:
        raise SloError(f"{where}: max_ms must be a positive number of milliseconds")
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise SloError(f'{where}: labels must be a table of strings, e.g. {{ route = "/rank" }}')
    metric = raw[kinds[0]]
    if not isinstance(metric, str) or not metric:
        raise SloError(f"{where}: {kinds[0]} must name a metric or a Locust request")
    kind = Kind.HISTOGRAM if kinds[0] == "histogram" else Kind.LOCUST
    return Objective(name, kind, float(max_ms), float(quantile), metric, dict(labels))


def load_objectives(path: Path) -> list[Objective]:
    """Parse and validate an SLO file; raises SloError with one sentence on any problem."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SloError(f"{path}: no such SLO file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SloError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - {"objective"})
    if unknown:
        raise SloError(f"{path}: unknown top-level keys {unknown}; objectives go in [[objective]] tables")
    items = raw.get("objective", [])
    if not isinstance(items, list) or not items:
        raise SloError(f"{path}: no [[objective]] tables")
    try:
        return [_objective(i, item) for i, item in enumerate(items, 1)]
    except SloError as exc:
        raise SloError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Measurements:
    """What a finished run can answer, as functions so each objective asks only for what it needs.

    `histogram_ms(name, labels, q)` and `locust_ms(name, q)` return None when there is no data.
    """

    histogram_ms: Callable[[str, dict[str, str], float], float | None]
    locust_ms: Callable[[str, float], float | None]
    requests: int
    failures: int


def check(objectives: list[Objective], run: Measurements) -> list[Outcome]:
    """Each objective against the run; a missing or NaN measurement misses the objective."""
    outcomes = []
    for objective in objectives:
        note = ""
        measured: float | None
        if objective.kind is Kind.HISTOGRAM:
            measured = run.histogram_ms(objective.metric, objective.labels, objective.quantile)
            if measured is None:
                note = "no observations in this histogram series during the run (or the service does not export it)"
        elif objective.kind is Kind.LOCUST:
            measured = run.locust_ms(objective.metric, objective.quantile)
            if measured is None:
                note = f"no Locust requests named {objective.metric!r}"
        else:
            measured = run.failures / run.requests if run.requests else None
            if measured is None:
                note = "Locust sent no requests"
        if measured is not None and math.isnan(measured):
            measured, note = None, note or "not measurable"
        passed = measured is not None and (
            measured <= objective.threshold if objective.kind is Kind.ERROR_RATE else measured < objective.threshold
        )
        outcomes.append(Outcome(objective, measured, passed, note))
    return outcomes
