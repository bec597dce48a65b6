"""Log set-up for the service process: text lines for a terminal (the default), or one JSON object per event
(`RANK_LOG_FORMAT=json`) for a log collector.

JSON events carry `time` (UTC, ISO 8601), `level`, `logger` and `message`; a line logged while a request is served
carries its `request_id`, and an access line (`AccessLogMiddleware`, logger `service.access`) also carries `method`,
`route` (the route's template, as the metrics label it), `status`, `model_version` (of the engine that answered) and
`duration_ms`. A traceback goes into `error`, inside the same object, so that one event is always one line.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics
from service.settings import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The request a log line belongs to, for lines logged while it is served (set by AccessLogMiddleware).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# Fields a record may carry (logging's `extra=`) that a JSON event keeps, in this order.
EVENT_FIELDS = ("request_id", "method", "route", "status", "model_version", "duration_ms")
# A caller's own X-Request-ID is kept when it is short and printable (it goes into every log line); else a fresh one.
CALLER_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

access_log = logging.getLogger("service.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return orjson.dumps(event).decode()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """One handler on the root logger, writing `log_format` lines to `stream` (stderr by default). uvicorn's own
    loggers propagate to it when uvicorn is given `log_config=None`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogMiddleware:
    """One access line per HTTP request, after its response: the request id (the caller's X-Request-ID, or a fresh
    one, returned in the response's X-Request-ID), method, route, status, the answering model's version and the
    time. Outermost, so that the time covers the other middlewares and the 413s and 503s they answer."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        status, model_version = 500, None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, model_version
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                model_version = dict(headers).get(b"x-model-version", b"").decode("latin-1") or None
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            fields = {
                "method": scope["method"],
                "route": self.metrics.route_label(scope["path"]),
                "status": status,
                "model_version": model_version,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            access_log.info("%s %s %d", scope["method"], scope["path"], status, extra=fields)
            REQUEST_ID.reset(token)
