"""The service's domain exceptions, and `install_error_handlers`: the one place that maps every error (ours, the
batcher's and FastAPI's own) to an HTTP status and a JSON body `{"error": "<field>: <what is wrong>", ...}`."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from service.auth import KeyDenied, QuotaExceeded, retry_after_header
from service.batcher import DeadlineExceeded, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.protocol import SHAPE_TAGS, JSONBytes

log = logging.getLogger("service")


class RequestError(ValueError):
    """A request that cannot be served as asked; `field` names the offending part of the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[RequestError], tuple[str, str]]:
        # Pickled with both arguments (Exception pickles its one formatted message), so that it reaches a Ray
        # DeploymentHandle caller as itself, not as an undeserializable error.
        return type(self), (self.field, self.message)

    status = 422  # the HTTP status it is answered with; a subclass may say otherwise


class UnknownModel(LookupError):
    """A request names a model this service does not serve (404, as the Cohere API answers)."""


class NothingToRollBack(RuntimeError):
    """A rollback was asked for before any reload replaced the serving model (409)."""


class NoCanary(RuntimeError):
    """A canary change or promotion was asked for while no canary runs (409)."""


class NoShadow(RuntimeError):
    """A shadow change or stop was asked for while no shadow is loaded (409)."""


class NotReady(RuntimeError):
    """The service is starting (or draining) and cannot answer ranking requests."""


class BodyTooLarge(ValueError):
    """The request body exceeds `max_body_bytes`."""


class AdminDenied(PermissionError):
    """The admin API is off, or the bearer token is missing or wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_response(code: int, message: str, **extra: Any) -> JSONBytes:
    """The body every error answer has: `{"error": message, "message": message, **extra}`. The sentence is under
    both keys: `error` is TEI's and this service's, `message` is Cohere's and Jina's, so each client's error
    handling finds it where it looks."""
    return JSONBytes({"error": message, "message": message, **extra}, status_code=code)


def field_of(loc: tuple[Any, ...]) -> str:
    """The body field a pydantic error location names (`documents.0.text`), or `body`."""
    parts = [str(p) for p in loc if p != "body" and p not in SHAPE_TAGS]
    return ".".join(parts) or "body"


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], data: Any) -> M:
    """`data` validated as `model`, outside FastAPI (gRPC, Ray's handle calls); RequestError names the first wrong
    field as the HTTP 422 does."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RequestError(field_of(tuple(first.get("loc", ()))), first["msg"]) from None


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map every exception a request can end in to its HTTP answer (and count the refusals `metrics` tracks)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        details = []
        for err in exc.errors():
            bad_json = err.get("type") == "json_invalid"
            field_name = "body" if bad_json else field_of(tuple(err.get("loc", ())))
            details.append({"field": field_name, "message": "is not valid JSON" if bad_json else err.get("msg")})
        first = details[0] if details else {"field": "body", "message": "is invalid"}
        return error_response(422, f"{first['field']}: {first['message']}", field=first["field"], errors=details)

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> Response:
        return error_response(
            exc.status, str(exc), field=exc.field, errors=[{"field": exc.field, "message": exc.message}]
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        if isinstance(exc.__cause__, BodyTooLarge):  # raised while FastAPI streamed the body in
            return error_response(413, str(exc.__cause__))
        detail = "body: could not be parsed" if exc.status_code == 400 else str(exc.detail)
        return error_response(exc.status_code, detail)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> Response:
        return error_response(413, str(exc))

    @app.exception_handler(KeyDenied)
    async def _key_denied(_: Request, exc: KeyDenied) -> Response:
        response = error_response(exc.status, str(exc), field="authorization")
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(QuotaExceeded)
    async def _over_quota(_: Request, exc: QuotaExceeded) -> Response:
        response = error_response(429, str(exc), field="authorization")
        response.headers["Retry-After"] = retry_after_header(exc.retry_after_s)
        return response

    @app.exception_handler(UnknownModel)
    async def _unknown_model(_: Request, exc: UnknownModel) -> Response:
        return error_response(404, str(exc), field="model")

    @app.exception_handler(NothingToRollBack)
    @app.exception_handler(NoCanary)
    @app.exception_handler(NoShadow)
    async def _conflict(_: Request, exc: Exception) -> Response:
        return error_response(409, str(exc))

    @app.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> Response:
        return error_response(503, str(exc))

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(_: Request, exc: ShuttingDown) -> Response:
        return error_response(503, str(exc))

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, exc: QueueFull) -> Response:
        metrics.rejections.labels("queue_full").inc()
        response = error_response(429, f"{exc}; retry shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(_: Request, exc: DeadlineExceeded) -> Response:
        metrics.deadline_drops.inc()
        return error_response(504, f"timeout_ms: {exc}")

    @app.exception_handler(AdminDenied)
    async def _denied(_: Request, exc: AdminDenied) -> Response:
        return error_response(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error; see the service log")
