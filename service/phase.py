"""Where the service is in its life: the one start-up/ready/draining state machine (`Lifecycle`, in `Phase`s), the
only writer of the `rank_ready` gauge."""

from __future__ import annotations

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
