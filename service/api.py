"""HTTP routes and the app factory. Routes are thin: validate, call one core function, shape.

Run: ``mrdib serve`` or ``uvicorn --factory service.api:create_app``. See service/README.md.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import faiss
import numpy as np
import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrdib.item_meta import select_fields
from service import meta, recommender
from service.auth import admin_dep, events_dep, log_access_rules, metrics_dep
from service.cache import LocalHistory, LocalUserState, RedisUserState, UserStateStore
from service.events import Event, EventSink, RateLimited
from service.items import ItemLogUnavailable, LocalItemLog, RedisItemLog
from service.logs import configure_logging
from service.metrics import Metrics, mark_worker_gone
from service.middleware import LatencyMetrics, RequestGuard
from service.model_store import (
    ItemChangeResult,
    ModelRequired,
    ModelStore,
    NoModelError,
    ServingModel,
    UnservableItemVector,
    cancel_quietly,
    no_model_reason,
)
from service.openapi import allowed_methods, json_body, model_openapi
from service.pages import DOCS_STATIC, add_ui
from service.ratelimit import retry_after_header
from service.recommender import UnservableOutput
from service.redis_link import REDIS_DOWN, RedisLink
from service.schemas import (
    MAX_K,
    ErrorOut,
    EventAccepted,
    EventIn,
    HealthOut,
    ItemChanged,
    ItemIn,
    ModelOut,
    ModelSummary,
    ReadyOut,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadOut,
    SimilarResponse,
)
from service.settings import Settings, get_settings

log = structlog.get_logger("mrdib.service.api")


def limit_faiss_threads(n: int) -> None:
    """Cap faiss searches made from the calling thread at `n` OpenMP threads.

    OpenMP keeps this count per thread (it is an ICV of the thread's implicit task): a call on one thread does
    not limit searches made from another, whose count stays the default (every core, or OMP_NUM_THREADS). So
    it is called in every thread that searches: each thread of the CPU pool (its initializer) and the event-loop
    thread (small searches run inline, see recommender.py), at startup."""
    faiss.omp_set_num_threads(n)


@dataclass
class AppContext:
    """Everything a request may need, built once per app (dependencies read it from app.state)."""

    settings: Settings
    metrics: Metrics
    store: ModelStore
    state: UserStateStore
    events: EventSink
    link: RedisLink | None
    pool: ThreadPoolExecutor
    tasks: list[asyncio.Task] = field(default_factory=list)
    start_error: str | None = None  # why start() refused to serve (require_model and no valid model)

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        metrics = Metrics()
        pool = ThreadPoolExecutor(max_workers=settings.cpu_threads, thread_name_prefix="mrdib-cpu",
                                  initializer=limit_faiss_threads, initargs=(settings.faiss_threads,))
        history = LocalHistory(settings.history_cap, settings.lru_size)
        link = RedisLink(settings, metrics) if settings.redis_url else None
        item_log = RedisItemLog(link, settings.item_wal_file) if link is not None else LocalItemLog()
        store = ModelStore(settings, metrics, item_log, pool)
        events_box: list[EventSink] = []
        if link is not None:
            state: UserStateStore = RedisUserState(link, history, settings.user_vector_ttl_s, settings.history_cap,
                                                   backlog=lambda: events_box[0].backlog,
                                                   near_size=settings.near_cache_size,
                                                   near_ttl_s=settings.near_cache_ttl_s)
        else:
            state = LocalUserState(settings.lru_size, history)
        events = EventSink(settings, metrics, link, history, state.forget_local)
        events_box.append(events)
        return cls(settings, metrics, store, state, events, link, pool)

    async def start(self) -> None:
        """Runs on the event-loop thread (lifespan): the place to set what OpenMP keeps per thread."""
        limit_faiss_threads(self.settings.faiss_threads)
        log_access_rules(self.settings)
        if self.link is not None and await self.link.probe():
            item_log = self.store.item_log
            if not self.link.cluster and isinstance(item_log, RedisItemLog):
                try:  # the item keys of the layout before hash tags, once
                    await item_log.migrate_legacy_keys()
                except REDIS_DOWN as e:
                    self.link.failed("migrate_item_keys", e)
            try:  # admin item changes made before this worker started: in the first overlay already
                await self.store.sync_items()
            except REDIS_DOWN as e:
                self.link.failed("sync_items", e)
        result = await self.store.refresh()
        if self.store.current is None:
            log.warning("no_model", status=result.status, error=result.error, artifacts=str(self.settings.artifacts))
            if self.settings.require_model:
                self.start_error = no_model_reason(self.settings.artifacts, result)
                raise ModelRequired(self.start_error)
        else:
            m = self.store.current
            log.info("serving", model_version=m.version, onnx_providers=m.providers, faiss_device=m.faiss_device,
                     redis="disabled" if self.link is None else self.link.status,
                     redis_mode=self.settings.redis_mode if self.link is not None else None)
        self.tasks = [asyncio.create_task(self.store.poll_forever(), name="model-poll"),
                      asyncio.create_task(self.events.monitor(), name="event-monitor")]
        if self.link is not None:
            self.tasks.append(asyncio.create_task(
                self.store.sync_items_forever(self.settings.item_sync_interval_s, self._sync_failed),
                name="item-sync"))
        if isinstance(self.state, RedisUserState):
            self.tasks.append(asyncio.create_task(self.state.follow_invalidations(), name="near-cache"))

    def _sync_failed(self, e: BaseException) -> None:
        if isinstance(e, REDIS_DOWN):
            if self.link is not None:
                self.link.failed("sync_items", e)
        else:
            log.error("item_sync_failed", error=f"{type(e).__name__}: {e}")

    async def stop(self) -> None:
        for t in self.tasks:
            await cancel_quietly(t)
        if self.link is not None:
            await self.link.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


# --- dependencies ------------------------------------------------------------------------------
# All `async def`: FastAPI runs a plain `def` dependency in its thread pool, i.e. two thread switches per
# dependency per request -- for reading an attribute. /recommend does not use them at all (see there).

NO_MODEL = "no model loaded yet (nothing published under the artifacts root, or refused)"


async def ctx_dep(request: Request) -> AppContext:
    return request.app.state.ctx


def current_model(ctx: AppContext) -> ServingModel:
    """The model version a request uses from start to end (read once); 503 when none is loaded."""
    model = ctx.store.current
    if model is None:
        raise HTTPException(503, NO_MODEL)
    return model


async def model_dep(ctx: AppContext = Depends(ctx_dep)) -> ServingModel:
    return current_model(ctx)


def _errors(**codes: str) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for error statuses, all with the ErrorOut body."""
    return {int(c[1:]): {"model": ErrorOut, "description": d} for c, d in codes.items()}


# Statuses any route may answer (middleware and exception handlers), documented so that the schema is true.
COMMON_ERRORS = _errors(s400="malformed JSON body or invalid Content-Length", s413="request body too large",
                        s415="body is not application/json", s422="invalid field (the message names it)",
                        s500="unexpected error (no details leak)",
                        s503="no model loaded yet, or the served model cannot answer this request (a faulty model)")
ADMIN_ERRORS = _errors(s401="no bearer token", s403="wrong token, or admin routes disabled")
TOKEN_ERRORS = _errors(s401="a token is configured for this route and none was sent", s403="wrong token")


ITEM_PENDING = {
    202: {"model": ItemChanged, "description": "Redis down: applied here and kept in the local item WAL "
                                               "(`pending_sync: true`), replayed into Redis when it is back"},
    **_errors(s503="neither Redis nor the local item WAL could record the change (disk failure)"),
}


def _item_changed(done: ItemChangeResult, item_id: str, status: Literal["indexed", "deleted"]) -> JSONResponse:
    """200 when the change is in Redis (every worker applies it), 202 while it waits in the local item WAL."""
    out = ItemChanged(model_version=done.model.version, item_id=item_id, status=status,
                      side_index_size=len(done.model.overlay.side_ids), pending_sync=done.pending_sync)
    return JSONResponse(out.model_dump(), status_code=202 if done.pending_sync else 200)


def _items(items: list[recommender.Scored]) -> list[dict]:
    return [{"item_id": s.item_id, "score": s.score} if s.explain is None and s.because is None
            else _explained(s) for s in items]


def _explained(s: recommender.Scored) -> dict:
    out: dict = {"item_id": s.item_id, "score": s.score}
    if s.explain is not None:
        out["explain"] = s.explain
    if s.because is not None:
        out["because"] = [{"item_id": i, "share": share} for i, share in s.because]
    return out


def _fields(model: ServingModel, fields: list[str]) -> None:
    """422 for display fields no item of the served version has (see service/meta.py)."""
    try:
        meta.check_fields(model, fields)
    except meta.FieldsError as e:
        raise HTTPException(422, str(e)) from None


def _json(body: dict) -> Response:
    """The response bytes of plain dicts, encoded by pydantic-core's JSON writer (Rust; already installed with
    pydantic). These values come from our own code with the right types, so validating them is wasted work:
    returning a model made FastAPI dump it, validate the dump and encode it again. The stdlib's `json.dumps` of
    a 20-item answer cost ~20 us, `pydantic_core.to_json` ~3.5 us (profile in docs/BENCHMARKS.md). The bodies are
    the routes' `response_model` shapes (checked by tests/test_service_api.py against the pydantic models).

    A non-finite score never gets here (the recommender answers 503 first, see recommender.UnservableOutput), but
    invalid JSON must not leave regardless: pydantic-core writes NaN/Infinity as bare tokens, so when either
    spelling appears anywhere in the output (almost always inside an id, i.e. harmless) the body is encoded again
    by the stdlib with `allow_nan=False`, which refuses a non-finite number as it always did."""
    raw = to_json(body)
    if b"NaN" in raw or b"Infinity" in raw:
        raw = json.dumps(body, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    return Response(raw, media_type="application/json")


M = TypeVar("M", bound=BaseModel)


async def _body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, read and validated as FastAPI does for a `body: Model` parameter -- the same reader
    (`json.loads` of the bytes), the same validation (python mode) and the same errors (RequestValidationError with
    the locations under "body", so the 400/422 answers are unchanged) -- without FastAPI's per-request dependency
    machinery (with the DirectRoute ~25-30 us of the ~200 us a warm /recommend cost before; docs/BENCHMARKS.md,
    issue 14). RequestGuard has already answered 415 to a body that is not JSON and 413 to one too large. The
    route documents the body with `openapi_extra=json_body(model)` (service/openapi.py)."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": e.msg}}]) from None
    except Exception:  # as FastAPI answers: not UTF-8/16/32, an integer of 5,000 digits, nesting too deep
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return model.model_validate(data, from_attributes=True)  # as FastAPI calls it (the same error messages)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                      for err in e.errors(include_url=False)]) from None


def _over_limits(body: RecommendRequest, settings: Settings) -> str | None:
    """Why a /recommend body exceeds the configured input bounds (a 422 message), or None."""
    if len(body.history) > settings.max_request_history:
        return f"history has {len(body.history)} items; at most {settings.max_request_history} are accepted"
    if len(body.exclude) > settings.max_exclude:
        return f"exclude has {len(body.exclude)} items; at most {settings.max_exclude}"
    return None


def _query(body: RecommendRequest) -> recommender.Query:
    return recommender.Query(body.user_id, body.history, body.k, body.exclude_seen, body.exclude, body.explain)


def _answer(r: recommender.Result, model: ServingModel, fields: list[str]) -> dict:
    """RecommendResponse's fields but model_version; display `fields` as each item's `meta` when asked."""
    items = _items(r.items)
    if fields:
        meta.add_meta(items, model, model.overlay, fields)
    return {"items": items, "source": r.source, "cached": r.cached, "unknown_items": r.unknown_items}


def _batch_error(status: int, detail: str, errors: list[str] | None = None) -> dict:
    err: dict = {"status": status, "detail": detail}
    if errors is not None:
        err["errors"] = errors
    return {"error": err}


async def _answer_batch(ctx: AppContext, model: ServingModel, reqs: list[RecommendRequest]) -> list[dict]:
    """The batched answers; if the batched computation fails, each request alone, so that only the one that fails
    gets its error in its place (503 for a model output that cannot be served, else 500; logged, no details
    leak)."""
    if not reqs:
        return []
    try:
        answers = await recommender.recommend_batch([_query(r) for r in reqs], model, ctx.state, ctx.pool,
                                                    ctx.metrics)
        return [_unservable(ctx, a) if isinstance(a, UnservableOutput) else _answer(a, model, r.fields)
                for a, r in zip(answers, reqs, strict=True)]
    except Exception as e:
        log.error("batch_failed", error=f"{type(e).__name__}: {e}", size=len(reqs), exc_info=e,
                  fallback="each request alone")
    out = []
    for r in reqs:
        try:
            out.append(_answer(await recommender.recommend(_query(r), model, ctx.state, ctx.pool, ctx.metrics),
                               model, r.fields))
        except UnservableOutput as e:
            out.append(_unservable(ctx, e))
        except Exception as e:
            log.error("batch_item_failed", error=f"{type(e).__name__}: {e}", user_id=r.user_id, exc_info=e)
            out.append(_batch_error(500, "internal server error"))
    return out


def _unservable(ctx: AppContext, e: UnservableOutput) -> dict:
    log.error("unservable_output", path="/recommend/batch", model_version=e.version, error=str(e))
    ctx.metrics.unservable.inc()
    return _batch_error(503, str(e))


# --- routes ------------------------------------------------------------------------------------

class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself: FastAPI documents it like any other
    (response_model, responses, openapi_extra) and its errors go through the app's exception handlers as before,
    but FastAPI's per-request handler (dependency resolution, body reading, response validation and encoding:
    ~25-30 us of a warm /recommend, profile in docs/BENCHMARKS.md) does not run. For the hot route only; the endpoint
    reads its body with `_body` and answers with `_json`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.dependant
        if (d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params
                or d.dependencies or d.request_param_name is None):
            # anything else declared would be documented but never resolved
            raise TypeError(f"{self.path}: a DirectRoute endpoint takes exactly one parameter, the Request")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


def add_routes(app: FastAPI) -> None:
    async def recommend(request: Request) -> Response:
        """Top-k items for a user and/or a history (see service/README.md for the rules)."""
        # The hot route: a DirectRoute (no FastAPI dependency resolution, body parameter or response model work per
        # request); `_body` reads and validates the body as FastAPI would, `_json` encodes the answer.
        body = await _body(request, RecommendRequest)
        ctx: AppContext = request.app.state.ctx
        model = current_model(ctx)
        problem = _over_limits(body, ctx.settings)
        if problem:
            raise HTTPException(422, problem)
        if body.fields:
            _fields(model, body.fields)
        r = await recommender.recommend(_query(body), model, ctx.state, ctx.pool, ctx.metrics,
                                        ctx.settings.inline_search_max_items)
        return _json({"model_version": r.model_version, **_answer(r, model, body.fields)})

    app.router.add_api_route("/recommend", recommend, methods=["POST"], response_model=RecommendResponse,
                             response_model_exclude_none=True, openapi_extra=json_body(RecommendRequest),
                             route_class_override=DirectRoute)

    @app.post("/recommend/batch", response_model=RecommendBatchResponse, response_model_exclude_none=True,
              responses=_errors(s422="invalid body, or more requests than MRDIB_MAX_BATCH (an invalid request "
                                     "inside a valid batch gets its error in its place instead)"))
    async def recommend_batch(body: RecommendBatchRequest, request: Request) -> Response:
        """Up to MRDIB_MAX_BATCH /recommend requests answered in one call, from one model version: the users'
        states in one Redis round trip, one batched user-tower run, one batched index search. Each request is
        validated on its own (same rules and options as /recommend: explain, fields); one that is invalid (or
        fails) gets `{"error": {status, detail}}` in its place and the others are answered."""
        ctx: AppContext = request.app.state.ctx
        model = current_model(ctx)
        if len(body.requests) > ctx.settings.max_batch:
            raise HTTPException(422, f"requests has {len(body.requests)} elements; at most {ctx.settings.max_batch} "
                                     "per batch (MRDIB_MAX_BATCH)")
        results: list[dict | None] = [None] * len(body.requests)
        todo: list[tuple[int, RecommendRequest]] = []
        for i, raw in enumerate(body.requests):
            try:
                req = RecommendRequest.model_validate(raw)
            except ValidationError as e:
                msgs = [_validation_message(err) for err in e.errors()]
                results[i] = _batch_error(422, "; ".join(msgs[:5]), msgs[:50])
                continue
            problem = _over_limits(req, ctx.settings)
            if not problem and req.fields:
                try:
                    meta.check_fields(model, req.fields)
                except meta.FieldsError as e:
                    problem = str(e)
            if problem:
                results[i] = _batch_error(422, problem)
            else:
                todo.append((i, req))
        for (i, _), answer in zip(todo, await _answer_batch(ctx, model, [r for _, r in todo]), strict=True):
            results[i] = answer
        return _json({"model_version": model.version, "results": results})

    @app.get("/items/{item_id}/similar", response_model=SimilarResponse, response_model_exclude_none=True,
             responses=_errors(s404="unknown or deleted item id"))
    async def similar_items(item_id: str = Path(min_length=1, max_length=256),
                            k: int = Query(default=20, ge=1, le=MAX_K),
                            fields: str | None = Query(
                                default=None, max_length=2048,
                                description="comma-separated display fields to return per item as `meta`, "
                                            "e.g. `title,genres` (GET /model lists them: `item_meta_fields`)"),
                            ctx: AppContext = Depends(ctx_dep),
                            model: ServingModel = Depends(model_dep)) -> Response:
        """Nearest items by cosine of item vectors, the item itself excluded; `score` is the cosine."""
        try:
            names = meta.parse_fields(fields)
        except meta.FieldsError as e:
            raise HTTPException(422, str(e)) from None
        if names:
            _fields(model, names)
        overlay = model.overlay
        try:
            found = await recommender.similar(model, item_id, k, ctx.pool, ctx.settings.inline_search_max_items)
        except KeyError:
            raise HTTPException(404, f"unknown item id {item_id!r} in model {model.version}") from None
        items = _items(found)
        body: dict = {"model_version": model.version, "item_id": item_id, "items": items}
        if names:
            meta.add_meta(items, model, overlay, names)
            body["meta"] = select_fields(model.item_meta(overlay, item_id), names)
        return _json(body)

    @app.post("/events", status_code=202, response_model=EventAccepted, dependencies=[Depends(events_dep)],
              responses={**TOKEN_ERRORS, **_errors(
                  s429="too many events for this user (per-user rate limit); retry after `Retry-After` seconds",
                  s503="neither Redis nor the local WAL could store the event")})
    async def post_event(body: EventIn, ctx: AppContext = Depends(ctx_dep)) -> EventAccepted:
        """Record an interaction durably (202 only after Redis or the fsync'ed WAL has it).

        Needs `Authorization: Bearer <MRDIB_EVENTS_TOKEN>` when that is set. A retry of an event this user sent
        before (same `event_id`) is answered 202 with `duplicate: true` and recorded once."""
        event = Event.new(body.user_id, body.item_id, body.type, body.timestamp, body.event_id)
        try:
            done = await ctx.events.record(event)
        except RateLimited as e:
            raise HTTPException(429, str(e), headers={"Retry-After": retry_after_header(e.retry_after_s)}) from None
        except OSError as e:
            log.error("event_not_durable", error=str(e), event_id=event.event_id)
            raise HTTPException(503, "event could not be stored durably (Redis and local WAL failed); retry") from e
        return EventAccepted(event_id=event.event_id, durable_in=done.sink, duplicate=done.duplicate)

    @app.put("/items/{item_id}", response_model=ItemChanged, dependencies=[Depends(admin_dep)],
             responses={**ADMIN_ERRORS, **ITEM_PENDING})
    async def put_item(body: ItemIn, item_id: str = Path(min_length=1, max_length=256),
                       ctx: AppContext = Depends(ctx_dep), model: ServingModel = Depends(model_dep)) -> JSONResponse:
        """Add or change an item from its modality features; searchable at once (side index).

        `features` holds exactly the served model's modalities, each as long as its dim (named in this schema once
        a model is loaded); values finite, |x| <= 1e6. 422 when the item tower's output fails the check every
        loaded vector passes.

        200 when shared through Redis; 202 with `pending_sync: true` when Redis is down (see ItemChanged)."""
        dims = model.modality_dims()
        missing, extra = sorted(set(dims) - set(body.features)), sorted(set(body.features) - set(dims))
        if missing or extra:
            raise HTTPException(422, f"features must hold exactly the modalities {sorted(dims)}; "
                                     f"missing {missing}, unknown {extra}")
        wrong = {m: (len(v), dims[m]) for m, v in body.features.items() if len(v) != dims[m]}
        if wrong:
            raise HTTPException(422, "wrong feature dims: " + ", ".join(
                f"{m} has {got}, expected {want}" for m, (got, want) in sorted(wrong.items())))
        feats = {m: np.asarray(v, dtype=np.float32) for m, v in body.features.items()}
        try:
            done = await ctx.store.put_item(item_id, feats, body.meta)
        except UnservableItemVector as e:
            raise HTTPException(422, f"features: {e}") from None
        except ItemLogUnavailable as e:
            raise HTTPException(503, str(e)) from None
        log.info("item_put", item_id=item_id, model_version=done.model.version, pending_sync=done.pending_sync)
        return _item_changed(done, item_id, "indexed")

    @app.delete("/items/{item_id}", response_model=ItemChanged, dependencies=[Depends(admin_dep)],
                responses={**ADMIN_ERRORS, **_errors(s404="unknown item id"), **ITEM_PENDING})
    async def delete_item(item_id: str = Path(min_length=1, max_length=256), ctx: AppContext = Depends(ctx_dep),
                          _model: ServingModel = Depends(model_dep)) -> JSONResponse:
        """Hide an item from every result (kept across model versions until it is PUT again).

        200 when shared through Redis; 202 with `pending_sync: true` when Redis is down (see ItemChanged)."""
        try:
            done = await ctx.store.delete_item(item_id)
        except ItemLogUnavailable as e:
            raise HTTPException(503, str(e)) from None
        if not done.known:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        log.info("item_deleted", item_id=item_id, model_version=done.model.version, pending_sync=done.pending_sync)
        return _item_changed(done, item_id, "deleted")

    @app.post("/admin/reload", response_model=ReloadOut, dependencies=[Depends(admin_dep)],
              responses={**ADMIN_ERRORS, 409: {"model": ReloadOut, "description": "the candidate was refused"}})
    async def reload(ctx: AppContext = Depends(ctx_dep)) -> JSONResponse:
        """Load the version `current` points to now (verified); 409 when it is refused."""
        r = await ctx.store.refresh(force=True)
        out = ReloadOut(status=r.status, model_version=r.model_version, candidate=r.candidate, error=r.error)
        return JSONResponse(out.model_dump(), status_code=409 if r.status == "refused" else 200)

    @app.get("/healthz", response_model=HealthOut)
    async def healthz() -> dict:
        """Alive (the event loop answers)."""
        return {"status": "alive"}

    @app.get("/readyz", response_model=ReadyOut,
             responses={503: {"model": ReadyOut, "description": "no model loaded yet (same body, status no_model)"}})
    async def readyz(ctx: AppContext = Depends(ctx_dep)) -> JSONResponse:
        """Ready when a model is loaded; Redis state reported (ok, degraded = unreachable, error = answering errors,
        with the message), never a reason to be unready."""
        model = ctx.store.current
        link = ctx.link
        redis = "disabled" if link is None else link.status
        body = {"status": "ready" if model else "no_model", "model_version": model.version if model else None,
                "redis": redis, "event_backlog": ctx.events.backlog}
        if link is not None and redis != "ok":
            body["redis_error"] = link.error_message()
        return JSONResponse(body, status_code=200 if model else 503)

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(metrics_dep)],
             responses=TOKEN_ERRORS)
    async def metrics(ctx: AppContext = Depends(ctx_dep)) -> Response:
        ctx.metrics.event_backlog.set(ctx.events.backlog)
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/model", response_model=ModelSummary)
    async def model_info(model: ServingModel = Depends(model_dep)) -> dict:
        """The served version: id, sizes and offline metrics (public; details in GET /admin/model)."""
        m = model.manifest
        return {"model_version": m.model_version, "created_at": m.created_at.isoformat(), "n_users": m.n_users,
                "n_items": m.n_items, "side_index_size": len(model.overlay.side_ids),
                "hidden_items": len(model.overlay.deleted), "metrics": m.metrics, "components": m.components,
                "item_meta_fields": sorted(model.overlay.meta_fields)}

    @app.get("/admin/model", response_model=ModelOut, dependencies=[Depends(admin_dep)], responses=ADMIN_ERRORS)
    async def model_details(ctx: AppContext = Depends(ctx_dep), model: ServingModel = Depends(model_dep)) -> dict:
        """Manifest summary, the devices really in use, and the versions refused with their reasons (which name
        files under the artifacts root: admin only)."""
        m = model.manifest
        return {
            "model_version": m.model_version, "created_at": m.created_at.isoformat(), "backbone": m.backbone,
            "mrdib": m.mrdib is not None, "modalities": {x.name: x.dim for x in m.modalities},
            "embedding_dim": m.embedding_dim, "n_users": m.n_users, "n_items": m.n_items,
            "max_history": m.max_history, "components": m.components,
            "item_meta_fields": sorted(model.overlay.meta_fields), "metrics": m.metrics,
            "indexes": {k: v.model_dump() for k, v in m.indexes.items()},
            "onnx_providers": {"user_tower": model.user_tower.providers, "item_tower": model.item_tower.providers},
            "faiss_device": model.faiss_device, "gpus_visible_to_faiss": ctx.store.gpu_count(),
            "side_index_size": len(model.overlay.side_ids), "hidden_items": len(model.overlay.deleted),
            "refused_versions": ctx.store.refused,
        }


# --- errors ------------------------------------------------------------------------------------

def _validation_message(err: dict) -> str:
    parts = [str(x) for x in err.get("loc", ())]
    loc = ".".join(parts[1:] if parts[:1] == ["body"] and len(parts) > 1 else parts) or "request"
    return f"{loc}: {err.get('msg')}"


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            e = bad_json[0]
            where = e.get("loc", ("body", "?"))[-1]
            reason = (e.get("ctx") or {}).get("error", e.get("msg"))
            return JSONResponse({"detail": f"malformed JSON body at character {where}: {reason}"}, status_code=400)
        msgs = [_validation_message(e) for e in errors]
        detail = "; ".join(msgs[:5]) + (f"; and {len(msgs) - 5} more" if len(msgs) > 5 else "")
        return JSONResponse({"detail": detail, "errors": msgs[:50]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = exc.headers
        if exc.status_code == 405:  # every method of the path, not only those of the first route that matched
            allow = allowed_methods(request.app, request.scope)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            headers = {**(headers or {}), "Allow": allow}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(UnservableOutput)
    async def on_unservable(request: Request, exc: UnservableOutput) -> JSONResponse:
        log.error("unservable_output", path=request.url.path, model_version=exc.version, error=str(exc))
        request.app.state.ctx.metrics.unservable.inc()
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NoModelError)
    async def on_no_model(_: Request, exc: NoModelError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)


# --- factory -----------------------------------------------------------------------------------

def hot_routes_first(app: FastAPI, paths: tuple[str, ...]) -> None:
    """Move the routes of `paths` to the front of the router. The router tries its routes in order, one regex match
    each, and FastAPIOffline registers its five documentation routes first: the hot route paid for five misses per
    request. Safe because no other route's path can match these (they are literal paths); the OpenAPI document
    lists the same paths in the same order (the documentation routes are not in it)."""
    routes = app.router.routes
    hot = [r for r in routes if getattr(r, "path", None) in paths]
    routes[:] = hot + [r for r in routes if not any(r is h for h in hot)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Without `settings` they are read from the environment (uvicorn --factory)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.access_log, settings.secret_values())
    ctx = AppContext.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await ctx.start()
        except BaseException:  # e.g. ModelRequired: the server does not start; release what start() opened
            await ctx.stop()
            raise
        try:
            yield
        finally:
            await ctx.stop()
            mark_worker_gone()

    app = FastAPIOffline(title="MRdIB recommender", version="1", lifespan=lifespan, responses=COMMON_ERRORS,
                         static_url=DOCS_STATIC)  # /docs and /redoc with their assets served here (service/pages.py)
    app.state.ctx = ctx
    add_routes(app)
    add_ui(app)
    add_error_handlers(app)
    hot_routes_first(app, ("/recommend",))
    app.openapi = model_openapi(app, ctx.store, (RecommendRequest,))  # type: ignore[method-assign]
    app.add_middleware(RequestGuard, max_body=settings.max_body_bytes)
    app.add_middleware(LatencyMetrics, metrics=ctx.metrics)
    return app
