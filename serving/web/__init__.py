"""The page at `/`: what the recommender does for one user, served by the recommender service itself.

`create_router(lineage_summary, token=...)` returns a FastAPI APIRouter for
`create_app(..., routers=[...])`:

    GET /                      the page (server-rendered with jinja2; a little JS calls the JSON API)
    GET /ui/lineage            lineage_summary(): the served model versions' data window, split
                               cut-offs and blessing metrics (serving/web/lineage.py builds it from MLMD)
    GET /ui/users/{user_id}    token (personal data): profile + recent history with titles
    GET /ui/examples           a few user ids to try (warm, cold, unknown)

The page itself calls the service's own endpoints -- `POST /v1/recommend`
for the list (explanations, stage scores, per-stage timings, cold/fallback
state) and `POST /v1/events` (token) for the "I watched this" button -- so
what it shows is exactly what any client gets. Endpoints that need the token
take it from a field on the page (kept in the tab's sessionStorage only).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from towerflow.models import features
from towerflow.serving.feature_store import FeatureStoreUnavailable
from towerflow.serving.recommender.app import bearer_guard

log = logging.getLogger(__name__)

HISTORY_SHOWN = 10
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
)


def user_view(store, user_id: str, history: int = HISTORY_SHOWN) -> dict:
    """Profile and the last `history` events (newest first, with titles) of one user, from the feature store."""
    profile = store.user_profile(user_id)
    events = store.user_events(user_id)
    recent = list(reversed(events[-history:]))
    titles = store.items([e.item_id for e in recent]) if recent else []
    return {
        "user_id": user_id,
        "known": profile is not None,
        "profile": {k: v for k, v in (profile or {}).items() if k != features.USER_ID},
        "events": len(events),
        "history": [
            {
                "item_id": e.item_id,
                "title": (item or {}).get(features.ITEM_TITLE) or f"item {e.item_id}",
                "rating": e.rating,
                "time": datetime.datetime.fromtimestamp(e.timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M"),
            }
            for e, item in zip(recent, titles)
        ],
    }


def example_users(store, candidates: Sequence[str], warm_events: int = 5, per_kind: int = 3) -> list[dict]:
    """A few ids to try: warm users (>= warm_events events), cold ones (known, fewer), and an unknown one."""
    warm, cold = [], []
    for user_id in candidates:
        if len(warm) >= per_kind and len(cold) >= per_kind:
            break
        try:
            if store.user_profile(user_id) is None:
                continue
            n = len(store.user_events(user_id))
        except FeatureStoreUnavailable:
            break
        bucket = warm if n >= warm_events else cold
        if len(bucket) < per_kind:
            bucket.append({"user_id": user_id, "note": f"{'warm' if bucket is warm else 'cold'}, {n} events"})
    return warm + cold + [{"user_id": "new-visitor", "note": "unknown user"}]


def create_router(
    lineage_summary: Callable[[], dict],
    token: str | None = None,
    examples: Sequence[dict] | Callable[[], Sequence[dict]] = (),
    title: str = "towerflow",
) -> APIRouter:
    """The page and its helper endpoints (see the module docstring); the store is the app's recommender's."""
    router = APIRouter()
    guarded = [Depends(bearer_guard(token))]

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> HTMLResponse:
        html = _TEMPLATES.get_template("index.html").render(title=title, token_configured=bool(token))
        return HTMLResponse(html)

    @router.get("/ui/lineage")
    def lineage() -> dict:
        try:
            return lineage_summary()
        except Exception as err:  # noqa: BLE001 - the page shows what it can; lineage is not worth a 500
            log.exception("lineage summary failed")
            return {"models": [], "error": f"{type(err).__name__}: {err}"}

    @router.get("/ui/examples")
    def example_list() -> dict:
        return {"users": list(examples() if callable(examples) else examples)}

    @router.get("/ui/users/{user_id}", dependencies=guarded)
    def user(user_id: str, request: Request) -> dict:
        if not user_id or len(user_id) > 128:
            raise HTTPException(400, "user_id must be 1 to 128 characters")
        try:
            return user_view(request.app.state.recommender.store, user_id)
        except FeatureStoreUnavailable as err:
            raise HTTPException(503, f"feature store unavailable: {err}") from None

    return router
