"""Where the service is in its life: the one start-up/ready/draining state machine (`Lifecycle`, in `Phase`s), the
only writer of the `rank_ready` gauge."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from prometheus_client import Gauge


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
        self._watchers: list[Callable[[Phase], object]] = []
        ready_gauge.set(0)

    def watch(self, callback: Callable[[Phase], object]) -> None:
        """Call `callback` with the new phase after every transition (the gRPC health service follows it so)."""
        self._watchers.append(callback)

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        self._ready_gauge.set(1 if phase is Phase.READY else 0)
        for callback in self._watchers:
            callback(phase)

    @property
    def phase(self) -> Phase:
        return self._phase

    def become_ready(self) -> bool:
        """STARTING -> READY; False (and no change) when a drain began first."""
        if self._phase is not Phase.STARTING:
            return False
        self._enter(Phase.READY)
        return True

    def begin_drain(self) -> bool:
        """-> DRAINING: readiness off, new requests refused with 503, in-flight ones still finish. True when this
        call began the drain, False when it was already draining."""
        if self._phase is Phase.DRAINING:
            return False
        self._enter(Phase.DRAINING)
        return True
