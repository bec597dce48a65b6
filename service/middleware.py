"""The two ASGI middlewares: request metrics (and the access line, when on), and the request-body size limit.
Both are pure ASGI (no `BaseHTTPMiddleware`), which costs microseconds rather than a task per request."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLarge, error_response
from service.logs import AccessLine
from service.metrics import Metrics


class MetricsMiddleware:
    """Counts requests by route and status, times them, and tracks in-flight requests; with `access_log`, also
    gives each request its id and writes its access line (service.logs.AccessLine). The outermost middleware, so
    that the time covers the others and the 413s and 503s they answer."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.metrics.route_label(scope["path"])
        status = 500
        started = time.perf_counter()
        access = AccessLine.start(scope) if self.access_log else None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if access is not None:
                    message = access.on_response(message)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            elapsed = time.perf_counter() - started
            self.metrics.request_seconds.labels(route).observe(elapsed)
            if access is not None:
                access.write(scope["method"], scope["path"], route, status, elapsed)


# A refused body is read and dropped up to this many times the limit before the 413 goes out. A client that sends
# its whole body before it reads the answer (Python's urllib, for one) otherwise meets a connection reset instead of
# the 413: closing a socket with unread bytes makes the kernel answer with RST. Beyond it, the connection is closed
# unread, as nginx does, so that a huge upload costs the service no more than this.
DRAIN_FACTOR = 16


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes: by Content-Length before reading, or while streaming a chunked body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            # A client that waits for "100 Continue" has sent nothing yet: reading would only invite the upload.
            if (
                length.isdigit()
                and int(length) <= DRAIN_FACTOR * self.limit
                and b"100-continue" not in headers.get(b"expect", b"")
            ):
                await drain(receive, DRAIN_FACTOR * self.limit)
            await error_response(413, f"body: larger than the {self.limit}-byte limit")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                if message.get("more_body", False):
                    await drain(receive, DRAIN_FACTOR * self.limit - seen)
                # FastAPI turns this into an HTTPException caused by it; the error map answers 413
                raise BodyTooLarge(f"body: larger than the {self.limit}-byte limit")
            return message

        await self.app(scope, limited, send)


async def drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most about `budget` bytes of it."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return
