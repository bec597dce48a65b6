"""The relevance workbench: `GET /ui`, a page (plain static files in service/ui/, no build step) that searches the
served model with explanations, compares it with zero-shot search or the shadow or canary model, and takes graded
judgments; and the few routes it needs besides `/rank`: item pictures, the comparison, the grades.

Served when `Settings.ui_on` (by default only on a loopback host). Grades are taken from loopback callers, or with
the admin token, and written by `service.judgments.JudgmentLog` to the file `RANK_JUDGMENTS_FILE` names.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException

from service.agreement import overlap_at_k, rank_biased_overlap
from service.auth import is_bearer
from service.engine import RankingEngine
from service.errors import AdminDenied, NoCanary, NoShadow, error_response
from service.jobs import normalize_query
from service.judgments import JudgmentLog
from service.lifecycle import AppState
from service.protocol import FilterValue, JSONBytes, RankRequest
from service.routes import rank_body
from service.settings import LOOPBACK_HOSTS

UI_DIR = Path(__file__).with_name("ui")
router = APIRouter(prefix="/ui", include_in_schema=False)


class CompareRequest(BaseModel):
    """The same /rank request, served by another engine."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    top_k: StrictInt = Field(10, ge=1)
    filters: dict[StrictStr, FilterValue] | None = None
    against: Literal["shadow", "canary", "zero-shot"]


class GradeRequest(BaseModel):
    """A grade for one hit of one query."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    item_id: StrictStr
    grade: StrictInt = Field(ge=0, le=3)


async def _workbench(request: Request) -> AppState:
    state: AppState = request.app.state.rank
    if not state.settings.ui_on:
        raise HTTPException(404, "Not Found")  # off: as any unknown path
    return state


UiDep = Annotated[AppState, Depends(_workbench)]


@router.get("")
async def page(state: UiDep) -> Response:
    return FileResponse(UI_DIR / "index.html", headers={"cache-control": "no-cache"})


@router.get("/static/{name}")
async def static(name: str, state: UiDep) -> Response:
    path = UI_DIR / name
    if name not in {"app.js", "style.css"} or not path.is_file():
        return error_response(404, f"{name}: no such file")
    return FileResponse(path, headers={"cache-control": "no-cache"})


@router.get("/images/{item_id}")
async def image(item_id: str, state: UiDep) -> Response:
    """The item's picture, when its catalog gave one (the bundle records the path)."""
    bundle = state.engines.current().bundle
    row = bundle.row_of.get(item_id)
    path = bundle.images[row] if row is not None else None
    if path is None or not Path(path).is_file():
        return error_response(404, f"item {item_id!r} has no picture")
    return FileResponse(path, headers={"cache-control": "max-age=3600"})


@router.get("/api/status")
async def status(state: UiDep) -> Response:
    """What the page can offer: the models to compare with, whether grades are taken, how many are there."""
    engines = state.engines
    serving = engines.current()
    log = _judgments(state)
    counts = log.counts() if log is not None else None
    body: dict[str, Any] = {
        "model_version": serving.model_version,
        "items": serving.bundle.size,
        "compare": ["zero-shot"]
        + [name for name, other in (("shadow", engines.shadow), ("canary", engines.canary)) if other],
        "judging": log is not None,
        "judged_queries": counts.queries if counts else 0,
        "judgments": counts.judgments if counts else 0,
        "filters": {c.name: list(c.values) for c in serving.bundle.schema.categorical},
    }
    return JSONBytes(body)


@router.post("/api/compare")
async def compare(body: CompareRequest, state: UiDep) -> Response:
    """The request ranked by the shadow or canary model, or by zero-shot search over the same catalog, with
    overlap@10 and RBO against the serving model's list."""
    engines = state.engines
    serving = engines.current()
    if body.against == "zero-shot":
        other = _zero_shot(state, serving)
    else:
        found = engines.shadow if body.against == "shadow" else engines.canary
        if found is None:
            raise NoShadow("no shadow is loaded") if body.against == "shadow" else NoCanary("no canary runs")
        other = found.engine
    request = RankRequest(query=body.query, top_k=body.top_k, filters=body.filters)
    served, _ = await state.serve(serving, serving.prepare_rank(request), None, "/ui/compare")
    compared, timing = await state.serve(other, other.prepare_rank(request), None, "/ui/compare")
    answer = rank_body(compared, timing, uuid.uuid4().hex)
    figures = {
        "overlap_at_10": overlap_at_k(served.ids, compared.ids),
        "rbo": rank_biased_overlap(served.ids, compared.ids),
    }
    return JSONBytes({**answer, "against": body.against, "agreement": figures})


@router.post("/api/judgments")
async def judge(body: GradeRequest, request: Request, state: UiDep) -> Response:
    """Record a grade: from a loopback caller, or with the admin token."""
    _check_grader(request, state)
    log = _judgments(state)
    if log is None:
        return error_response(409, "grades are not taken: set RANK_JUDGMENTS_FILE to the judgments file to write")
    bundle = state.engines.current().bundle
    if body.item_id not in bundle.row_of:
        return error_response(422, f"item_id: unknown catalog id {body.item_id!r}", field="item_id")
    # The query as /rank serves it (normalised), so that the same query typed twice is one query in the file.
    counts = log.grade(normalize_query(body.query, state.settings.max_query_chars), body.item_id, body.grade)
    return JSONBytes({"judged_queries": counts.queries, "judgments": counts.judgments})


def _zero_shot(state: AppState, serving: RankingEngine) -> RankingEngine:
    """Zero-shot search over the serving engine's catalog (dense and BM25, the RRF prior; no model), made on first
    use and kept while that engine serves."""
    made = state.zero_shot
    if made is None or made.bundle.version != serving.bundle.version or made.encoder is not serving.encoder:
        bundle = serving.bundle.zero_shot()
        made = RankingEngine(bundle, None, serving.encoder, state.settings, state.metrics, serving.document_encoder)
        state.zero_shot = made
    return made


def _check_grader(request: Request, state: AppState) -> None:
    host = request.client.host if request.client is not None else ""
    if host in LOOPBACK_HOSTS:
        return
    token = state.settings.admin_token
    if not is_bearer(request.headers.get("authorization", ""), token.get_secret_value() if token else None):
        raise AdminDenied(403, "grades are taken from this machine, or with 'Authorization: Bearer <RANK_ADMIN_TOKEN>'")


def _judgments(state: AppState) -> JudgmentLog | None:
    """The judgments file's log (opened on first use), or None when no file is set."""
    path = state.settings.judgments_file
    if path is None:
        return None
    if state.judgments is None:
        state.judgments = JudgmentLog(path)
    return state.judgments
