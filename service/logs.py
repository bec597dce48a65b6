"""Log set-up for the service process: text lines for a terminal (the default), or one JSON object per event
(`RANK_LOG_FORMAT=json`) for a log collector.

JSON events carry `time` (UTC, ISO 8601), `level`, `logger` and `message`; a line logged while a request is served
carries its `request_id`. An access line (`AccessLine`, written by service.middleware.MetricsMiddleware; logger
`service.access`) also carries `method`, `route` (the route's template, as the metrics label it), `status`,
`model_version` (of the engine that answered) and `duration_ms`. A traceback goes into `error`, inside the same
object, so that one event is always one line.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import orjson
from starlette.types import Message, Scope

from service.settings import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The request a log line belongs to, for lines logged while it is served (set by AccessLine).
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


def request_id_of(headers: Mapping[str, str]) -> tuple[str, bool]:
    """A request's id: the one its access line gave it, else the caller's X-Request-ID (one printable token), else
    a fresh one; and whether it was made here (then the response must carry it in X-Request-ID itself)."""
    current = REQUEST_ID.get()
    if current is not None:
        return current, False
    given = headers.get("x-request-id", "")
    return (given if CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex), True


@dataclass
class AccessLine:
    """One request's access line, for `MetricsMiddleware` when access logging is on: the request id (the caller's
    X-Request-ID, or a fresh one, returned in the response's X-Request-ID) is set for every line logged while the
    request is served, the answering model's version read from the response, and the line written at the end."""

    request_id: str
    token: Token[str | None]
    model_version: str | None = None

    @classmethod
    def start(cls, scope: Scope) -> AccessLine:
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        return cls(request_id, REQUEST_ID.set(request_id))

    def on_response(self, message: Message) -> Message:
        """The response's start message with X-Request-ID added; notes its X-Model-Version."""
        headers = list(message.get("headers", []))
        self.model_version = dict(headers).get(b"x-model-version", b"").decode("latin-1") or None
        return {**message, "headers": [*headers, (b"x-request-id", self.request_id.encode())]}

    def write(self, method: str, path: str, route: str, status: int, seconds: float) -> None:
        fields = {
            "method": method,
            "route": route,
            "status": status,
            "model_version": self.model_version,
            "duration_ms": round(seconds * 1000, 3),
        }
        access_log.info("%s %s %d", method, path, status, extra=fields)
        REQUEST_ID.reset(self.token)
