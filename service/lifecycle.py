"""What serves a request: `AppState` (on `app.state.rank`) wires the service's life (`service.phase.Lifecycle`), its
engines and their swaps (`service.engines.Engines`) and the batchers (the encode, ranking and shadow stages), and
runs a job through them (`serve`), handing /rank requests to the shadow after their responses (`after_rank`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

from index.runtime.files import ArtifactError
from service.agreement import agreement
from service.auth import ApiKeys, KeyDenied, KeyQuotas, QuotaExceeded
from service.batcher import MicroBatcher, Then
from service.engine import RankingEngine, Work, process_encode_work, process_work
from service.engines import Engines
from service.errors import NotReady
from service.events import EventLog, Impression
from service.jobs import Embedded, Job, RankJob, RerankJob
from service.judgments import JudgmentLog
from service.metrics import Metrics
from service.outcomes import Outcome, RankOutcome, RerankOutcome
from service.phase import Lifecycle
from service.protocol import RankRequest
from service.settings import EncoderVariant, Settings
from service.shadow import Shadow
from service.tracing import RequestTrace, Tracing

log = logging.getLogger("service")


@dataclass
class AppState:
    """Everything the routes need, typed, on `app.state.rank`."""

    settings: Settings
    metrics: Metrics
    api_keys: ApiKeys | None = None  # the data plane's keys (service/auth.py); None: no key asked for
    quotas: KeyQuotas | None = None  # each key id's request rate (service/auth.py); None: no quota
    batcher: MicroBatcher[Work, Outcome] | None = None  # the ranking stage
    encode_batcher: MicroBatcher[Work, Embedded] | None = None  # the encode stage, for queries not in the cache
    document_batcher: MicroBatcher[Work, Embedded] | None = None  # the same, for /rerank jobs with text documents
    shadow_batcher: MicroBatcher[Work, Outcome] | None = None  # the shadow's own ranking thread
    tracing: Tracing | None = None  # OpenTelemetry (service/tracing.py); None: off
    judgments: JudgmentLog | None = None  # the workbench's grades (service/judgments.py), opened on first use
    zero_shot: RankingEngine | None = None  # the workbench's zero-shot search over the serving catalog
    events: EventLog | None = None  # the impression and feedback log (service/events.py); None: off
    lifecycle: Lifecycle = field(init=False)
    engines: Engines = field(init=False)
    _shadow_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.metrics.ready)
        self.engines = Engines(self.settings, self.metrics, self.lifecycle)

    def admit(self, authorization: str) -> None:
        """Check a data-plane request's `Authorization` value when API keys are set (KeyDenied: 401 without a
        key, 403 with a wrong one) and its key's quota when there is one (QuotaExceeded: 429), and count the
        request under its key's id, never the key."""
        if self.api_keys is None:
            return
        try:
            key_id = self.api_keys.identify(authorization)
        except KeyDenied as denied:
            self.metrics.key_requests.labels("missing" if denied.status == 401 else "invalid").inc()
            raise
        if self.quotas is not None:
            try:
                self.quotas.take(key_id)
            except QuotaExceeded:
                self.metrics.rejections.labels("key_quota").inc()
                raise
        self.metrics.key_requests.labels(key_id).inc()

    def explore(self, outcome: RankOutcome) -> tuple[RankOutcome, list[int] | None]:
        """For a `RANK_EXPLORE` share of answers, the outcome with two adjacent results swapped (a random pair) and
        the swapped positions (1-based); else the outcome as it is and None."""
        share = self.settings.explore
        if share <= 0.0 or len(outcome.ids) < 2 or random.random() >= share:
            return outcome, None
        i = random.randrange(len(outcome.ids) - 1)

        def swapped(column: list[Any]) -> list[Any]:
            column = list(column)
            column[i], column[i + 1] = column[i + 1], column[i]
            return column

        explored = dataclasses.replace(
            outcome,
            ids=swapped(outcome.ids),
            scores=swapped(outcome.scores),
            titles=swapped(outcome.titles),
            attributes=swapped(outcome.attributes),
            explanations=swapped(outcome.explanations) if outcome.explanations is not None else None,
        )
        self.metrics.explored.inc()
        return explored, [i + 1, i + 2]

    def log_impression(
        self,
        request_id: str,
        engine: RankingEngine,
        query: str,
        outcome: RankOutcome,
        explored: list[int] | None = None,
    ) -> None:
        """Offer a served /rank answer to the impression log, for a sampled share of requests (never waits); an
        explored answer is always offered, since its swap is what learning from it needs."""
        sample = self.settings.log_sample
        if self.events is None or not (explored or sample >= 1.0 or (sample > 0.0 and random.random() < sample)):
            return
        self.events.offer(Impression(request_id, query, engine, outcome, explored, time.time()))

    def trace(self, route: str, carrier: Mapping[str, str]) -> RequestTrace | None:
        """A request's trace under the caller's `traceparent` in `carrier` (headers, gRPC metadata), or None with
        tracing off. `serve` finishes it."""
        return self.tracing.start(route, carrier) if self.tracing is not None else None

    # -- start and stop, from the lifespan ---------------------------------------------------------------------

    def start(self, engine: RankingEngine) -> None:
        """Serve `engine`: start the batcher (when batching is on), listen for SIGHUP, and become ready. Runs on
        the event loop."""
        self.engines.publish(engine)
        s = self.settings
        sys.setswitchinterval(s.switch_interval_us / 1e6)  # the process's, set here where its threads start
        if s.batching:
            batcher: MicroBatcher[Work, Outcome] = MicroBatcher(
                process_work,
                lambda work: work.size,
                max_size=s.max_batch_candidates,
                max_delay_us=s.max_delay_us,
                max_queue=s.max_queue,
                name="rank-stage",
            )
            batcher.start()
            self.metrics.queue_depth.set_function(lambda: batcher.depth)
            self.batcher = batcher
        if s.batching and s.encode_thread:
            # Cache misses are encoded on threads of their own, so that a never-seen query's MiniLM time never holds
            # up the ranking of requests whose embeddings are cached (ONNX Runtime releases the GIL). /rerank text
            # documents (up to max_documents texts a request) get their own thread, so a never-seen /rank query
            # never waits behind them either.
            # The int8 graph embeds one text per call (TextEncoder.encode), so a batch of misses gains nothing from
            # being encoded together, and each would wait for the whole batch: take them one at a time instead.
            one_at_a_time = s.query_encoder is EncoderVariant.INT8
            self.encode_batcher = self._encode_stage("encode-stage", 1 if one_at_a_time else s.max_encode_batch)
            self.document_batcher = self._encode_stage("document-stage", s.max_encode_batch)
            queries, documents = self.encode_batcher, self.document_batcher
            self.metrics.encode_queue_depth.set_function(lambda: queries.depth + documents.depth)
        if s.batching:
            # The shadow ranks on a thread of its own: its engine owns its own FAISS indexes, real requests never
            # queue behind its work, and its queue is not theirs, so it can never cause them a 429.
            self.shadow_batcher = MicroBatcher(
                process_work,
                lambda work: work.size,
                max_size=s.max_batch_candidates,
                max_queue=max(1, s.shadow_max_queue),
                name="shadow-stage",
            )
            self.shadow_batcher.start()
        _install_sighup(self)
        self.lifecycle.become_ready()

    def _alone(self, stage: MicroBatcher[Work, Embedded] | None) -> bool:
        """Whether no stage but `stage` has work: then its MiniLM call may use the cores the others would need."""
        stages = (self.batcher, self.encode_batcher, self.document_batcher, self.shadow_batcher)
        return all(other is None or other is stage or other.idle for other in stages)

    def _encode_stage(self, name: str, max_size: int) -> MicroBatcher[Work, Embedded]:
        """A MiniLM stage on a thread of its own; each batch may use the idle threads when it is alone (`_alone`)."""
        stage: MicroBatcher[Work, Embedded] = MicroBatcher(
            lambda batch: process_encode_work(batch, self._alone(stage)),
            lambda work: 1,
            max_size=max_size,
            max_queue=self.settings.max_queue,
            name=name,
        )
        stage.start()
        return stage

    def stop(self) -> None:
        """Drain, then let the batchers finish what is queued, and the event log what it holds."""
        self.lifecycle.begin_drain()
        for batcher in (self.encode_batcher, self.document_batcher, self.batcher, self.shadow_batcher):
            if batcher is not None:
                batcher.close()
        if self.events is not None:
            self.events.close()

    # -- shadow ranking, after a /rank response ----------------------------------------------------------------

    async def after_rank(self, served_by: RankingEngine, body: RankRequest, query: str, outcome: RankOutcome) -> None:
        """Run after a /rank response is sent (a Starlette background task): hand the request to the shadow, if
        one is loaded and takes it, on a task of its own, so that the response's connection is not held."""
        shadow = self.engines.shadow
        if shadow is None or served_by is shadow.engine or not shadow.takes(query):
            return
        task = asyncio.get_running_loop().create_task(self._shadow_rank(shadow, served_by, body, query, outcome))
        self._shadow_tasks.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_rank(
        self, shadow: Shadow, served_by: RankingEngine, body: RankRequest, query: str, outcome: RankOutcome
    ) -> None:
        labels = (served_by.model_version, shadow.engine.model_version)
        busy = [b.depth for b in (self.batcher, self.shadow_batcher) if b is not None]
        if busy and max(busy) >= self.settings.shadow_max_queue:  # real requests waiting, or the shadow behind
            shadow.counts["shed"] += 1
            self.metrics.shadow_requests.labels("shed", *labels).inc()
            return
        try:
            started = time.perf_counter()
            job = shadow.engine.prepare_rank(body)
            vector = served_by.encoder.cached(query)  # the served request's MiniLM vector: no second encode
            if vector is not None:
                job = dataclasses.replace(job, embedded=Embedded(vector))
            elif self.encode_batcher is not None:
                job = dataclasses.replace(job, embedded=await self.encode_batcher.submit(Work(shadow.engine, job)))
            if self.shadow_batcher is not None:
                result = await self.shadow_batcher.submit(Work(shadow.engine, job))
            else:
                result = await asyncio.to_thread(shadow.engine.serve_one, job)
            total_ms = (time.perf_counter() - started) * 1000.0
        except Exception as exc:  # a shadow's failure is recorded, never raised: no client is waiting for it
            shadow.counts["failed"] += 1
            self.metrics.shadow_requests.labels("failed", *labels).inc()
            log.debug("shadow %s failed on a request: %s", shadow.engine.model_version, exc)
            return
        assert isinstance(result, RankOutcome)
        found = agreement(outcome.ids, result.ids)
        shadow.record(found, result, total_ms)
        self.metrics.shadow_requests.labels("compared", *labels).inc()
        for figure, value in found.as_dict().items():
            if value is not None:
                self.metrics.shadow_agreement.labels(figure, *labels).observe(value)
        for stage, ms in {**result.timing, "total": total_ms}.items():
            self.metrics.shadow_stage_seconds.labels(stage, labels[1]).observe(ms / 1000.0)

    # -- one request -------------------------------------------------------------------------------------------

    @overload
    async def serve(
        self, engine: RankingEngine, job: RankJob, timeout_ms: int | None, route: str, trace: RequestTrace | None = None
    ) -> tuple[RankOutcome, dict[str, float]]: ...

    @overload
    async def serve(
        self,
        engine: RankingEngine,
        job: RerankJob,
        timeout_ms: int | None,
        route: str,
        trace: RequestTrace | None = None,
    ) -> tuple[RerankOutcome, dict[str, float]]: ...

    async def serve(
        self, engine: RankingEngine, job: Job, timeout_ms: int | None, route: str, trace: RequestTrace | None = None
    ) -> tuple[Outcome, dict[str, float]]:
        """Run a job through the encode stage when it needs MiniLM, then the ranking batcher (or all inline when
        batching is off), and time it. Returns the outcome and its stage timing in ms with `total` added, rounded to
        4 decimals; each stage is observed (unrounded) in the `rank_stage_seconds` histogram under `route`. A
        `trace` (`trace`) is finished with the outcome, or failed with the error."""
        try:
            outcome, timing = await self._serve(engine, job, timeout_ms, route)
        except Exception as exc:
            if trace is not None:
                trace.fail(exc)
            raise
        if trace is not None:
            trace.finish(outcome, timing)
        return outcome, timing

    async def _serve(
        self, engine: RankingEngine, job: Job, timeout_ms: int | None, route: str
    ) -> tuple[Outcome, dict[str, float]]:
        started = time.perf_counter()
        deadline = started + timeout_ms / 1000.0 if timeout_ms else None
        encode = self.document_batcher if isinstance(job, RerankJob) and job.texts else self.encode_batcher
        encoded = engine.needs_encoding(job)
        outcome: Outcome
        if self.batcher is None:
            outcome = engine.serve_one(job)
        elif encode is not None and encoded:
            # The encode thread queues the embedded job for ranking itself: no wait for the event loop in between.
            def embedded(vectors: Embedded) -> Work:
                return Work(engine, dataclasses.replace(job, embedded=vectors))

            outcome = await encode.submit(Work(engine, job), deadline, Then(self.batcher, embedded))
        else:
            outcome = await self.batcher.submit(Work(engine, job), deadline)
        timing = dict(outcome.timing)
        timing["total"] = (time.perf_counter() - started) * 1000.0
        self.metrics.model_requests.labels(route, outcome.model_version).inc()
        self.metrics.served_seconds.labels(route, "yes" if encoded else "no", outcome.model_version).observe(
            timing["total"] / 1000.0
        )
        for stage, ms in timing.items():
            self.metrics.stage_seconds.labels(route, stage).observe(ms / 1000.0)
            timing[stage] = round(ms, 4)
        return outcome, timing


def _install_sighup(state: AppState) -> None:
    """SIGHUP reloads the configured artifacts (only possible when the loop runs in the main thread)."""

    async def reload() -> None:
        try:
            await state.engines.reload()
        except (ArtifactError, FileNotFoundError, ValueError, NotReady) as exc:
            log.error("SIGHUP reload refused, still serving the old model: %s", exc)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    except (RuntimeError, ValueError, NotImplementedError):
        log.debug("SIGHUP reload not installed (event loop not in the main thread)")
