"""What the service is doing now and what serves a request: the one start-up/ready/draining state machine
(`Lifecycle`), and `AppState` (on `app.state.rank`), which holds the serving engine and the batcher, swaps engines
(`reload`) and runs a job through the batcher (`serve`).

A hot swap (`POST /admin/reload` or SIGHUP) loads and validates a new engine beside the serving one and replaces it
in one assignment; work already queued finishes on the engine that validated it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import overload

from prometheus_client import Gauge

from index.runtime.files import ArtifactError
from service.agreement import agreement
from service.batcher import MicroBatcher, Then
from service.engine import RankingEngine, Work, process_encode_work, process_work
from service.errors import NoCanary, NoShadow, NothingToRollBack, NotReady
from service.jobs import Embedded, Job, RankJob, RerankJob
from service.loading import load_engine
from service.metrics import Metrics
from service.outcomes import Outcome, RankOutcome, RerankOutcome
from service.protocol import RankRequest
from service.settings import EncoderVariant, Settings
from service.shadow import Shadow
from service.split import in_share

log = logging.getLogger("service")


class Phase(StrEnum):
    """Where the service is in its life; /health/ready answers 200 only in READY."""

    STARTING = "starting"  # loading and warming; requests get 503
    READY = "ready"
    DRAINING = "draining"  # SIGTERM or shutdown: requests get 503 while in-flight ones finish


class Lifecycle:
    """The service's one state machine: STARTING -> READY -> DRAINING, or STARTING -> DRAINING when the stop comes
    during start-up. Nothing leaves DRAINING. It is the only writer of the `rank_ready` gauge, so the gauge and
    readiness cannot disagree.

    Transitions run on the event-loop thread: in the lifespan, or in uvicorn's signal handler, which Python runs on
    the main thread between bytecodes of that same thread. So they never race, and there is no lock (a lock taken
    in a signal handler could deadlock against the code it interrupted).
    """

    def __init__(self, ready_gauge: Gauge) -> None:
        self._phase = Phase.STARTING
        self._ready_gauge = ready_gauge
        ready_gauge.set(0)

    @property
    def phase(self) -> Phase:
        return self._phase

    def become_ready(self) -> bool:
        """STARTING -> READY; False (and no change) when a drain began first."""
        if self._phase is not Phase.STARTING:
            return False
        self._phase = Phase.READY
        self._ready_gauge.set(1)
        return True

    def begin_drain(self) -> bool:
        """-> DRAINING: readiness off, new requests refused with 503, in-flight ones still finish. True when this
        call began the drain, False when it was already draining."""
        if self._phase is Phase.DRAINING:
            return False
        self._phase = Phase.DRAINING
        self._ready_gauge.set(0)
        return True


@dataclass(frozen=True)
class Canary:
    """A candidate engine serving `share` percent of requests, picked by a stable hash of each request's key (the
    X-Request-Key header, else the query text), so that one user keeps meeting one model."""

    engine: RankingEngine
    share: float  # 0..100

    def takes(self, key: str) -> bool:
        return in_share(key, self.share)


@dataclass
class AppState:
    """Everything the routes need, typed, on `app.state.rank`."""

    settings: Settings
    metrics: Metrics
    engine: RankingEngine | None = None
    previous: RankingEngine | None = None  # the engine the last swap replaced, kept in memory for `rollback`
    canary: Canary | None = None
    shadow: Shadow | None = None
    batcher: MicroBatcher[Work, Outcome] | None = None  # the ranking stage
    encode_batcher: MicroBatcher[Work, Embedded] | None = None  # the encode stage, for queries not in the cache
    document_batcher: MicroBatcher[Work, Embedded] | None = None  # the same, for /rerank jobs with text documents
    shadow_batcher: MicroBatcher[Work, Outcome] | None = None  # the shadow's own ranking thread
    lifecycle: Lifecycle = field(init=False)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _shadow_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.metrics.ready)

    # -- start and stop, from the lifespan ---------------------------------------------------------------------

    def start(self, engine: RankingEngine) -> None:
        """Serve `engine`: start the batcher (when batching is on), listen for SIGHUP, and become ready. Runs on
        the event loop."""
        self.publish(engine)
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
        """Drain, then let the batchers finish what is queued."""
        self.lifecycle.begin_drain()
        for batcher in (self.encode_batcher, self.document_batcher, self.batcher, self.shadow_batcher):
            if batcher is not None:
                batcher.close()

    # -- the serving engine ------------------------------------------------------------------------------------

    def publish(self, engine: RankingEngine) -> None:
        """Make `engine` the one that serves new requests (one assignment: atomic for the handlers)."""
        self.engine = engine
        self.metrics.info.info(
            {
                "model_version": engine.model_version,
                "bundle_version": engine.bundle.version,
                "provider": engine.provider,
                "index": str(engine.bundle.dense.params.kind),
            }
        )

    def current(self, key: str | None = None) -> RankingEngine:
        """The engine for a new request (the canary's when one runs and takes the request's `key`); NotReady
        unless READY."""
        phase = self.lifecycle.phase
        if phase is Phase.DRAINING:
            raise NotReady("the service is shutting down")
        if phase is not Phase.READY or self.engine is None:
            raise NotReady("the service is not ready")
        canary = self.canary  # read once: a promotion or rollback replaces it in one assignment
        if canary is not None and key is not None and canary.takes(key):
            return canary.engine
        return self.engine

    async def _load(self, model_dir: Path | None, bundle_dir: Path | None) -> RankingEngine:
        """A new engine, loaded and validated as at start-up, off the event loop; raises when the artifacts are
        wrong (the serving engine is untouched)."""
        return await asyncio.to_thread(
            load_engine, self.settings, self.metrics, model_dir=model_dir, bundle_dir=bundle_dir
        )

    async def reload(self, model_dir: Path | None = None, bundle_dir: Path | None = None) -> dict[str, str]:
        """Load and validate new artifacts beside the serving ones, then switch. Raises (keeping the old engine
        serving) when anything about the new artifacts is wrong."""
        async with self.reload_lock:
            old = self.current()
            new = await self._load(model_dir, bundle_dir)
            return self._swap(old, new, "reloaded")

    async def start_canary(
        self, share: float, model_dir: Path | None = None, bundle_dir: Path | None = None
    ) -> dict[str, object]:
        """Serve `share` percent of requests with new artifacts (loaded and validated as for a reload), or, without
        paths, change the share of the running canary, or start one with the loaded shadow (which then ends);
        NoCanary, a 409, when there is neither."""
        async with self.reload_lock:
            serving = self.current()
            if model_dir is None and bundle_dir is None:
                if self.canary is not None:
                    engine = self.canary.engine
                elif self.shadow is not None:  # the shadow, already loaded and compared, starts serving
                    engine, self.shadow = self.shadow.engine, None
                else:
                    raise NoCanary("no canary is running: give model_dir (and bundle_dir) to start one")
            else:
                engine = await self._load(model_dir, bundle_dir)
            self.canary = Canary(engine, share)
            log.info("canary: model %s serves %g%% (the rest %s)", engine.model_version, share, serving.model_version)
            return self.canary_status()

    def canary_status(self) -> dict[str, object]:
        canary, serving = self.canary, self.current()
        return {
            "status": "canary" if canary else "no canary",
            "model_version": serving.model_version,
            "bundle_version": serving.bundle.version,
            "canary_model_version": canary.engine.model_version if canary else None,
            "canary_bundle_version": canary.engine.bundle.version if canary else None,
            "share": canary.share if canary else 0.0,
        }

    async def promote(self) -> dict[str, str]:
        """The canary becomes the serving engine for all requests, and the canary ends (one swap: the old engine
        is kept for `rollback`). NoCanary when none runs."""
        async with self.reload_lock:
            old, canary = self.current(), self.canary
            if canary is None:
                raise NoCanary("no canary is running: nothing to promote")
            status = self._swap(old, canary.engine, "promoted")
            self.canary = None
            return status

    async def rollback(self) -> dict[str, str]:
        """During a canary, end it (every request back on the serving engine). Otherwise serve the engine the last
        swap replaced again, from memory (nothing is read from disk), and keep the one it replaces for the next
        rollback. NothingToRollBack when neither applies."""
        async with self.reload_lock:
            old = self.current()
            if self.canary is not None:
                ended, self.canary = self.canary, None
                log.info("rolled back: canary %s ended, %s serves all", ended.engine.model_version, old.model_version)
                return {
                    "status": "canary ended",
                    "model_version": old.model_version,
                    "bundle_version": old.bundle.version,
                    "previous_model_version": ended.engine.model_version,
                    "previous_bundle_version": ended.engine.bundle.version,
                }
            if self.previous is None:
                raise NothingToRollBack("nothing to roll back to: no reload has replaced the serving model yet")
            return self._swap(old, self.previous, "rolled back")

    # -- the shadow -------------------------------------------------------------------------------------------

    async def start_shadow(
        self, share: float, model_dir: Path | None = None, bundle_dir: Path | None = None
    ) -> dict[str, object]:
        """Load new artifacts (validated as for a reload) as a shadow that ranks `share` percent of /rank requests
        after their responses are sent, or, without paths, change the loaded shadow's share (NoShadow, a 409, when
        none is loaded). A new shadow starts its figures from zero."""
        async with self.reload_lock:
            serving = self.current()
            if model_dir is None and bundle_dir is None:
                if self.shadow is None:
                    raise NoShadow("no shadow is loaded: give model_dir (and bundle_dir) to load one")
                self.shadow.share = share
            else:
                engine = await self._load(model_dir, bundle_dir)
                self.shadow = Shadow(engine, share)
            log.info(
                "shadow: model %s scores %g%% of /rank beside %s",
                self.shadow.engine.model_version,
                share,
                serving.model_version,
            )
            return self.shadow.summary(serving)

    def shadow_status(self) -> dict[str, object]:
        shadow = self.shadow
        return shadow.summary(self.current()) if shadow else {"status": "no shadow"}

    async def stop_shadow(self) -> dict[str, object]:
        """Unload the shadow; answers its final figures. NoShadow when none is loaded."""
        async with self.reload_lock:
            shadow, self.shadow = self.shadow, None
            if shadow is None:
                raise NoShadow("no shadow is loaded: nothing to stop")
            return {**shadow.summary(self.current()), "status": "shadow stopped"}

    async def after_rank(self, served_by: RankingEngine, body: RankRequest, query: str, outcome: RankOutcome) -> None:
        """Run after a /rank response is sent (a Starlette background task): hand the request to the shadow, if
        one is loaded and takes it, on a task of its own, so that the response's connection is not held."""
        shadow = self.shadow
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

    def _swap(self, old: RankingEngine, new: RankingEngine, status: str) -> dict[str, str]:
        self.publish(new)
        self.previous = old
        log.info(
            "%s: model %s -> %s, bundle %s -> %s",
            status,
            old.model_version,
            new.model_version,
            old.bundle.version,
            new.bundle.version,
        )
        return {
            "status": status,
            "model_version": new.model_version,
            "bundle_version": new.bundle.version,
            "previous_model_version": old.model_version,
            "previous_bundle_version": old.bundle.version,
        }

    # -- one request -------------------------------------------------------------------------------------------

    @overload
    async def serve(
        self, engine: RankingEngine, job: RankJob, timeout_ms: int | None, route: str
    ) -> tuple[RankOutcome, dict[str, float]]: ...

    @overload
    async def serve(
        self, engine: RankingEngine, job: RerankJob, timeout_ms: int | None, route: str
    ) -> tuple[RerankOutcome, dict[str, float]]: ...

    async def serve(
        self, engine: RankingEngine, job: Job, timeout_ms: int | None, route: str
    ) -> tuple[Outcome, dict[str, float]]:
        """Run a job through the encode stage when it needs MiniLM, then the ranking batcher (or all inline when
        batching is off), and time it. Returns the outcome and its stage timing in ms with `total` added, rounded to
        4 decimals; each stage is observed (unrounded) in the `rank_stage_seconds` histogram under `route`."""
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
            await state.reload()
        except (ArtifactError, FileNotFoundError, ValueError, NotReady) as exc:
            log.error("SIGHUP reload refused, still serving the old model: %s", exc)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    except (RuntimeError, ValueError, NotImplementedError):
        log.debug("SIGHUP reload not installed (event loop not in the main thread)")
