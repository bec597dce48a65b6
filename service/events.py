"""The impression and feedback log (`EventLog`): what the service showed, for a sampled share of /rank requests
(`RANK_LOG_SAMPLE`), and what users did with it (`POST /feedback`), for learning from traffic.

Off the response path: a request only offers its record to a bounded queue and never waits. One writer thread
turns records into JSON lines and writes them into segment files in `RANK_LOG_DIR`: each segment is written as
`events-<start>-<n>.jsonl.partial`, then flushed, fsynced and renamed to `.jsonl` when it holds
`RANK_LOG_SEGMENT_RECORDS` records or is `RANK_LOG_SEGMENT_SECONDS` old, and at shutdown. A reader takes `*.jsonl`
only, so after a crash a segment is complete or absent. A full queue (a slow or stalled disk) drops the record and
counts it in `rank_event_records_total{outcome="dropped"}`; it never slows or fails a request. The writer wakes every
50 ms, not per record (`EventLog`).

An impression's feature logging is computed by the writer, off the response path, with the serving code's own
functions on the bundle version the record names: per shown item its query/title cosine (`dense`), BM25 score, the
learned retrieval score (with a model) and its modalities, beside its id, position and score.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from model.schema import MODALITIES
from service.engine import RankingEngine
from service.metrics import Metrics
from service.outcomes import RankOutcome

SEGMENT_GLOB = "events-*.jsonl"


@dataclass(frozen=True)
class Impression:
    """A served /rank answer, as the writer needs it (the engine, to log the features the ranker read)."""

    request_id: str
    query: str  # normalised, as served
    engine: RankingEngine
    outcome: RankOutcome
    explored: list[int] | None = None  # positions swapped by exploration, when any
    time: float = 0.0

    def record(self) -> dict[str, Any]:
        o, bundle = self.outcome, self.engine.bundle
        rows = np.asarray([bundle.row_of[item_id] for item_id in o.ids], dtype=np.int64)
        features: dict[str, list[Any]] = {"bm25": bundle.lexical.scores_at(self.query, rows).tolist()}
        vector = self.engine.encoder.cached(self.query)
        if vector is not None:
            features["dense"] = (bundle.text[rows] @ vector).tolist()
        projected = self.engine.projected(self.query)  # the query tower's output, as the request left it cached
        if projected is not None and bundle.retrieval is not None:
            features["retrieval"] = (bundle.retrieval[rows] @ projected).tolist()
        present = bundle.mask[rows] > 0
        features["modalities"] = [[m for t, m in enumerate(MODALITIES) if has[t]] for has in present]
        return {
            "kind": "impression",
            "time": _iso(self.time),
            "request_id": self.request_id,
            "query": self.query,
            "model_version": o.model_version,
            "bundle_version": o.bundle_version,
            "items": [
                {"id": item_id, "position": i + 1, "score": score}
                for i, (item_id, score) in enumerate(zip(o.ids, o.scores, strict=True))
            ],
            "features": features,
            "explored": self.explored,
        }


@dataclass(frozen=True)
class Feedback:
    """What a user did with a shown item."""

    request_id: str
    item_id: str
    event: str
    dwell_ms: float | None = None
    time: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "kind": "feedback",
            "time": _iso(self.time),
            "request_id": self.request_id,
            "item_id": self.item_id,
            "event": self.event,
            "dwell_ms": self.dwell_ms,
        }


Event = Impression | Feedback


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


class EventLog:
    """The queue and its one writer thread (see the module docstring).

    The queue is a deque that nobody is woken for: a request appends its record (one atomic append, no lock, no
    notify) and the writer takes what is there every `interval` seconds. Woken per record, the writer started its
    work (JSON, feature logging) at once, on the other core, while the request that offered it was still being
    answered, and the two took turns at the GIL."""

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        *,
        max_queue: int = 10_000,
        segment_records: int = 10_000,
        segment_seconds: float = 60.0,
        interval: float = 0.05,
        write: Callable[[Any, bytes], None] | None = None,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._queue: deque[Event] = deque()
        self._max_queue = max_queue
        self._segment_records, self._segment_seconds = segment_records, segment_seconds
        self._interval = interval
        self._write = write or _write_line
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._segments = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def offer(self, event: Event) -> bool:
        """Queue `event` for the writer without waiting; False (and counted as dropped) when the queue is full."""
        if len(self._queue) >= self._max_queue:
            kind = "impression" if isinstance(event, Impression) else "feedback"
            self._metrics.event_records.labels(kind, "dropped").inc()
            return False
        self._queue.append(event)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, finish the open segment, and stop (a writer stuck past `timeout` loses what is
        queued, as a crash would)."""
        self._closing.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        segment: _Segment | None = None
        while True:
            closing = self._closing.wait(self._interval)
            while self._queue:
                event = self._queue.popleft()
                kind = "impression" if isinstance(event, Impression) else "feedback"
                try:
                    line = orjson.dumps(event.record(), option=orjson.OPT_APPEND_NEWLINE)
                except Exception:  # a record that cannot be made (an item gone after a swap): counted, not written
                    self._metrics.event_records.labels(kind, "failed").inc()
                    continue
                if segment is None:
                    segment = self._open()
                self._write(segment.handle, line)
                segment.records += 1
                self._metrics.event_records.labels(kind, "written").inc()
                if segment.records >= self._segment_records:
                    _finish(segment)
                    segment = None
            if segment is not None and (closing or segment.age() >= self._segment_seconds):
                _finish(segment)
                segment = None
            if closing:
                return

    def _open(self) -> _Segment:
        self._segments += 1
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"events-{stamp}-{os.getpid()}-{self._segments:06d}.jsonl.partial"
        return _Segment(path, open(path, "wb"), time.monotonic())


@dataclass
class _Segment:
    """The segment being written: complete only once `_finish` renamed it."""

    path: Path
    handle: Any
    opened: float
    records: int = 0

    def age(self) -> float:
        return time.monotonic() - self.opened


def _finish(segment: _Segment | None) -> None:
    """Flush, fsync and rename the segment to `.jsonl`: from then on it is complete."""
    if segment is None:
        return
    segment.handle.flush()
    os.fsync(segment.handle.fileno())
    segment.handle.close()
    os.replace(segment.path, segment.path.with_suffix(""))


def _write_line(handle: Any, data: bytes) -> None:
    handle.write(data)


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every record of the complete segments in `directory`, oldest segment first."""
    records = []
    for segment in sorted(directory.glob(SEGMENT_GLOB)):
        records += [json.loads(line) for line in segment.read_text(encoding="utf-8").splitlines() if line]
    return records
