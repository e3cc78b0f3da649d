"""The recommender's HTTP API (FastAPI): recommend, events, users, rules, health and metrics.

    POST   /v1/recommend               {"user_id", "k", "context": {"timestamp", ...}, "exclude", "explore"}
    POST   /v1/events                  token: {"user_id", "item_id", "event_type", "rating"?, "timestamp"?, "event_id"?}
    DELETE /v1/users/{user_id}         token: the user's data, everywhere
    GET    /v1/users/{user_id}/features[?as_of=T]   token (personal data): raw query features as retrieval uses them
    POST   /v1/rules:reload            token: re-read the business rules file (400 and old rules kept if invalid)
    GET    /healthz  /readyz  /metrics

Security: endpoints that change state or return personal data need
`Authorization: Bearer <token>`, compared in constant time (hmac.compare_digest);
with no token configured they refuse (403) rather than open up. Bodies over
`limits.max_body_bytes` get 413, clients over `limits.rate_per_second` (token
bucket per client address) get 429 with Retry-After. Bad input gets 400 with a
message; a valid recommend request always gets 200 (fallbacks say what degraded).

`create_app(recommender, token=..., routers=[...])`: extra routers (experiments,
a web page) are mounted on the same app and find the recommender in
`request.app.state.recommender`.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Sequence

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from towerflow.serving.feature_store import FeatureStoreUnavailable, InvalidEvent
from towerflow.serving.recommender.recommender import BadRequestError, Recommender

log = logging.getLogger(__name__)


class EventBody(BaseModel):
    model_config = {"extra": "forbid"}

    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    event_type: str = Field(min_length=1, max_length=32)
    rating: float | None = None
    timestamp: int | None = None
    event_id: str | None = Field(default=None, max_length=128)


class RateLimiter:
    """Token bucket per client key: `rate` requests/s sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, float]:
        """(allowed, seconds until the next token)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[key] = (tokens, now)
            return False, (1.0 - tokens) / self.rate


class LimitsMiddleware:
    """Pure ASGI: the per-client rate limit and the body size limit, before any handler runs."""

    def __init__(self, app, max_body_bytes: int, limiter: RateLimiter):
        self.app, self.max_body_bytes, self.limiter = app, max_body_bytes, limiter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown", 0))[0]
        allowed, wait = self.limiter.allow(client)
        if not allowed:
            response = JSONResponse(
                {"error": f"rate limit exceeded for {client}; retry after {wait:.2f}s"},
                status_code=429,
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
            return await response(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # a streamed body: read it here, up to the limit, then hand it on whole
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.max_body_bytes:
                    return await self._too_large(scope, receive, send)
            body, sent = b"".join(chunks), False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        response = JSONResponse({"error": f"request body over {self.max_body_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


def bearer_guard(token: str | None):
    """A FastAPI dependency: 403 if no token is configured, 401 if missing, 403 if wrong."""

    def check(request: Request) -> None:
        if not token:
            raise HTTPException(
                403, "this endpoint is disabled: the service has no API token (--token-file or TOWERFLOW_API_TOKEN)"
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(403, "wrong bearer token")

    return check


def create_app(recommender: Recommender, token: str | None = None, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The service's FastAPI app over `recommender`; `routers` are mounted as they are."""
    config, metrics = recommender.config, recommender.metrics
    app = FastAPI(title="towerflow recommender", version="1")
    app.state.recommender = recommender
    app.add_middleware(
        LimitsMiddleware,
        max_body_bytes=config.limits.max_body_bytes,
        limiter=RateLimiter(config.limits.rate_per_second, config.limits.burst),
    )
    guarded = [Depends(bearer_guard(token))]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        endpoint = request.url.path.split("/")[2] if request.url.path.startswith("/v1/") else "other"
        metrics.http.labels(endpoint.split(":")[0], str(err.status_code)).inc()
        return JSONResponse({"error": err.detail}, status_code=err.status_code, headers=err.headers)

    @app.post("/v1/recommend")
    def recommend(body: dict) -> dict:
        try:
            response = recommender.recommend(body)
        except BadRequestError as err:
            metrics.http.labels("recommend", "400").inc()
            raise HTTPException(400, str(err)) from None
        metrics.http.labels("recommend", "200").inc()
        # serialised once by orjson: FastAPI's validate-then-encode of the annotated dict cost more
        return Response(orjson.dumps(response), media_type="application/json")

    @app.post("/v1/events", dependencies=guarded)
    def record_event(event: EventBody) -> dict:
        try:
            result = recommender.store.record_event(
                event.user_id, event.item_id, event.event_type, event.rating, event.timestamp, event.event_id
            )
        except InvalidEvent as err:
            raise HTTPException(400, f"event refused: {err}") from None
        except FeatureStoreUnavailable as err:
            metrics.errors.labels("events", "store_unavailable").inc()
            raise HTTPException(
                503, f"feature store unavailable, the event was NOT recorded; retry with the same event_id: {err}"
            ) from None
        recommender.counts_changed()
        metrics.http.labels("events", "200").inc()
        return result

    @app.delete("/v1/users/{user_id}", dependencies=guarded)
    def delete_user(user_id: str) -> dict:
        try:
            return recommender.store.delete_user(user_id)
        except FeatureStoreUnavailable as err:
            raise HTTPException(503, f"feature store unavailable, nothing was deleted; retry: {err}") from None
        finally:
            recommender.counts_changed()  # a delete lowers item counts (also one that stopped halfway)

    @app.get("/v1/users/{user_id}/features", dependencies=guarded)
    def user_features(user_id: str, as_of: int | None = Query(default=None, ge=0)) -> dict:
        when = int(time.time()) if as_of is None else as_of
        try:
            profile = recommender.store.user_profile(user_id)
            values = recommender.store.query_features(user_id, when)
        except FeatureStoreUnavailable as err:
            raise HTTPException(503, f"feature store unavailable: {err}") from None
        return {"user_id": user_id, "as_of": when, "known_user": profile is not None, "features": values}

    @app.post("/v1/rules:reload", dependencies=guarded)
    def reload_rules() -> dict:
        try:
            rules = recommender.rules.reload()
        except ValueError as err:
            metrics.rules_reloads.labels("invalid").inc()
            raise HTTPException(400, f"rules not reloaded, the previous rules stay in force: {err}") from None
        metrics.rules_reloads.labels("ok").inc()
        return {"reloaded": True, "rules": rules.summary()}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        state = recommender.ready()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        served = recommender.watcher.current if recommender.watcher else None
        if served is not None:
            metrics.model_version.labels("two_tower").set(served.two_tower)
            metrics.model_version.labels("ranker").set(served.ranker or 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app


def read_token(token_file: str | None = None, environ: dict | None = None) -> str | None:
    """The API token from `token_file` (first line) or TOWERFLOW_API_TOKEN; None if neither is set."""
    import os

    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    token = (environ if environ is not None else os.environ).get("TOWERFLOW_API_TOKEN", "").strip()
    return token or None
