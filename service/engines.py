"""The engines a service holds and the swaps between them (`Engines`): the serving engine, the one the last swap
replaced (kept in memory for `rollback`), a canary serving a share of requests, and a shadow that ranks a share of
/rank requests after their responses (service/shadow.py).

A hot swap (`POST /admin/reload`, SIGHUP, a promotion or a rollback) loads and validates a new engine beside the
serving one and replaces it in one assignment; work already queued finishes on the engine that validated it
(`service.engine.Work`). Swaps take one lock, so two never interleave.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from service.engine import RankingEngine
from service.errors import NoCanary, NoShadow, NothingToRollBack, NotReady
from service.loading import load_engine
from service.metrics import Metrics
from service.phase import Lifecycle, Phase
from service.settings import Settings
from service.shadow import Shadow
from service.split import in_share

log = logging.getLogger("service")


@dataclass(frozen=True)
class Canary:
    """A candidate engine serving `share` percent of requests, picked by a stable hash of each request's key (the
    X-Request-Key header, else the query text), so that one user keeps meeting one model."""

    engine: RankingEngine
    share: float  # 0..100

    def takes(self, key: str) -> bool:
        return in_share(key, self.share)


class Engines:
    """The serving engine, the previous one, the canary and the shadow, and every change between them. Each change
    answers the status body the admin API returns; NotReady unless the service is READY (`lifecycle`)."""

    def __init__(self, settings: Settings, metrics: Metrics, lifecycle: Lifecycle) -> None:
        self.settings, self.metrics, self.lifecycle = settings, metrics, lifecycle
        self.serving: RankingEngine | None = None
        self.previous: RankingEngine | None = None  # the engine the last swap replaced, kept for `rollback`
        self.canary: Canary | None = None
        self.shadow: Shadow | None = None
        self.lock = asyncio.Lock()

    def publish(self, engine: RankingEngine) -> None:
        """Make `engine` the one that serves new requests (one assignment: atomic for the handlers)."""
        self.serving = engine
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
        if phase is not Phase.READY or self.serving is None:
            raise NotReady("the service is not ready")
        canary = self.canary  # read once: a promotion or rollback replaces it in one assignment
        if canary is not None and key is not None and canary.takes(key):
            return canary.engine
        return self.serving

    async def _load(self, model_dir: Path | None, bundle_dir: Path | None) -> RankingEngine:
        """A new engine, loaded and validated as at start-up, off the event loop; raises when the artifacts are
        wrong (the serving engine is untouched)."""
        return await asyncio.to_thread(
            load_engine, self.settings, self.metrics, model_dir=model_dir, bundle_dir=bundle_dir
        )

    # -- swaps of the serving engine ---------------------------------------------------------------------------

    async def reload(self, model_dir: Path | None = None, bundle_dir: Path | None = None) -> dict[str, str]:
        """Load and validate new artifacts beside the serving ones, then switch. Raises (keeping the old engine
        serving) when anything about the new artifacts is wrong."""
        async with self.lock:
            old = self.current()
            new = await self._load(model_dir, bundle_dir)
            return self._swap(old, new, "reloaded")

    async def start_canary(
        self, share: float, model_dir: Path | None = None, bundle_dir: Path | None = None
    ) -> dict[str, object]:
        """Serve `share` percent of requests with new artifacts (loaded and validated as for a reload), or, without
        paths, change the share of the running canary, or start one with the loaded shadow (which then ends);
        NoCanary, a 409, when there is neither."""
        async with self.lock:
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
        """The serving and canary versions and the canary's share."""
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
        async with self.lock:
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
        async with self.lock:
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

    # -- the shadow -------------------------------------------------------------------------------------------

    async def start_shadow(
        self, share: float, model_dir: Path | None = None, bundle_dir: Path | None = None
    ) -> dict[str, object]:
        """Load new artifacts (validated as for a reload) as a shadow that ranks `share` percent of /rank requests
        after their responses are sent, or, without paths, change the loaded shadow's share (NoShadow, a 409, when
        none is loaded). A new shadow starts its figures from zero."""
        async with self.lock:
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
        """The shadow's figures so far, or that there is none."""
        shadow = self.shadow
        return shadow.summary(self.current()) if shadow else {"status": "no shadow"}

    async def stop_shadow(self) -> dict[str, object]:
        """Unload the shadow; answers its final figures. NoShadow when none is loaded."""
        async with self.lock:
            shadow, self.shadow = self.shadow, None
            if shadow is None:
                raise NoShadow("no shadow is loaded: nothing to stop")
            return {**shadow.summary(self.current()), "status": "shadow stopped"}
