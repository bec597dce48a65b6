"""The load test's own files, read: the locustfile's samples (every request's exact client time and the server's
Server-Timing total) and Locust's CSVs (the stats table and its history)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One request as the locustfile recorded it."""

    start: float  # epoch seconds
    name: str
    status: int  # 0: no response (connection error, timeout)
    client_ms: float
    server_ms: float | None  # Server-Timing total; None when the response had none (4xx, errors)
    error: str  # why Locust counted it as a failure; empty for a success

    @property
    def route(self) -> str:
        return self.name.split(" ", 1)[0]


def load_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    with path.open(newline="") as rows:
        return [
            Sample(
                float(row["start"]),
                row["name"],
                int(row["status"]),
                float(row["client_ms"]),
                float(row["server_total_ms"]) if row["server_total_ms"] else None,
                row["error"],
            )
            for row in csv.DictReader(rows)
        ]


def number(value: str) -> float:
    """A number from one of Locust's CSV cells; NaN for "N/A" and other text."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def locust_rows(path: Path) -> list[dict[str, Any]]:
    """Locust's stats table (`locust_stats.csv`), one dict per request name; empty when the file is missing."""
    if not path.exists():
        return []
    with path.open(newline="") as rows:
        return [
            {
                "name": row["Name"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": number(row["Requests/s"]),
                "p50": number(row["50%"]),
                "p95": number(row["95%"]),
                "p99": number(row["99%"]),
            }
            for row in csv.DictReader(rows)
        ]


def locust_history(path: Path) -> dict[str, list[float]]:
    """The aggregated columns of Locust's stats history, by column name; percentiles NaN before the first window."""
    columns: dict[str, list[float]] = defaultdict(list)
    if not path.exists():
        return columns
    with path.open(newline="") as rows:
        for row in csv.DictReader(rows):
            if row["Name"] != "Aggregated":
                continue
            idle = number(row["Requests/s"]) == 0  # Locust's first rows: no window yet, percentiles read 0
            for key in ("Timestamp", "User Count", "Requests/s", "Failures/s", "50%", "95%", "99%"):
                columns[key].append(math.nan if idle and key.endswith("%") else number(row[key]))
    return columns
