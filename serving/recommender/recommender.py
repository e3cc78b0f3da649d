"""`Recommender`: one recommendation request through features -> retrieval -> ranking -> re-ranking -> exploration.

    recommender = Recommender(store, watcher, config, metrics)
    recommender.recommend({"user_id": "42", "k": 10, "context": {"timestamp": 893286638}})
    # -> {"items": [...], "user_state": "warm", "model_versions": {...}, "fallback": None, "timings_ms": {...}, ...}

A plain class (no HTTP): the app, the replay check and experiments call it
directly. Stages:

1 features   the store's query features as of `context.timestamp` (the one time every
             point-in-time feature uses) and the user's earlier events (seen items);
             an unknown user or one with fewer than `cold_start.min_events` events is cold
2 retrieval  query embedding from the served two-tower (cached per user, model version
             and request hour; an event drops it), ScaNN top-N over that version's items,
             seen + excluded + blocked items left out of the search; cold users also get
             the recent favourites of their demographic segment as candidates; with a
             popularity weight, every user also gets the most recently popular unseen items
             (recent count, ties by id, then all-time count: the offline evaluation's order)
3 ranking    the served DCN scores all candidates in ONE call with their point-in-time
             item features; score = retrieval logit (dot / temperature) + w x interaction
             score + beta x log(1 + the item's recent count), w and beta from the evaluation
             pushed with the ranker (the ModelEvaluator's two_tower+dcn+pop; beta 0 without it)
4 re-ranking seen/excluded/rules, boosts, freshness, MMR (reranking.py)
5 explore    epsilon-greedy slots, then explanations

Every stage runs under its latency budget. A stage that fails or runs over it
falls back -- store down: the in-process popularity list; model server down or
no served version: recent popularity from the store; ranking down: retrieval
order; re-ranking or exploration failing: the list without them -- and the
response's `fallback` says which stage and why. A valid request never fails.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from towerflow.models import features
from towerflow.serving.recommender import reranking
from towerflow.serving.recommender.config import FALLBACK_TOP_N, ServiceConfig
from towerflow.serving.recommender.metrics import ServiceMetrics
from towerflow.serving.recommender.pit_cache import PointInTimeCache
from towerflow.serving.recommender.request import BadRequestError, Request
from towerflow.serving.recommender.reranking import POPULARITY, Candidate
from towerflow.serving.recommender.rules import RulesHolder
from towerflow.serving.recommender.search import search_top_n
from towerflow.serving.recommender.served import ModelUnavailableError, ServedVersion, VersionWatcher

__all__ = ["BadRequestError", "Recommender", "Request"]  # BadRequestError re-exported: callers catch it here

log = logging.getLogger(__name__)

WARM, COLD = "warm", "cold"
STAGES = ("features", "retrieval", "ranking", "reranking", "exploration")
SECONDS_PER_DAY = 86400
# Retrieval logit = dot product / the two-tower's softmax temperature (TwoTowerConfig's default, as the
# offline evaluation uses it); read once so the service does not import the model code.
_TEMPERATURE: float | None = None


def two_tower_temperature() -> float:
    global _TEMPERATURE
    if _TEMPERATURE is None:
        from towerflow.models.two_tower import TwoTowerConfig

        _TEMPERATURE = TwoTowerConfig().temperature
    return _TEMPERATURE


class StageTimeoutError(RuntimeError):
    pass


@dataclass
class _State:
    """What one request accumulates on its way through the stages."""

    request: Request
    as_of: int
    timings: dict = field(default_factory=dict)
    fallback: dict | None = None
    user_state: str = COLD
    query: dict = field(default_factory=dict)
    seen: set = field(default_factory=set)
    history: list = field(default_factory=list)
    events: int = 0
    served: ServedVersion | None = None
    candidates: list = field(default_factory=list)
    epsilon: float = 0.0


class Recommender:
    """The recommend pipeline over a feature store and the served models (see the module docstring)."""

    def __init__(self, store, watcher: VersionWatcher | None, config: ServiceConfig, metrics: ServiceMetrics):
        self.store, self.watcher, self.config, self.metrics = store, watcher, config, metrics
        self.rules = RulesHolder(config.reranking.rules_file)
        self.temperature = two_tower_temperature()  # imported here, not on the first request
        self._popular: list[tuple[str, float]] = []  # in-process fallback list (all-time counts)
        self._popular_items: dict[str, dict] = {}  # their titles and genres, for when the store is down
        # (as_of or "live", k, window, segment) -> (expiry, list): popularity is a sum over days of events,
        # too costly per request at scale, and it barely moves within a minute
        self._popularity_cache: dict[tuple, tuple[float, list]] = {}
        self._popularity_lock = threading.Lock()
        # item id -> its ITEM_FEATURES (None: not in the catalog). Catalog data, read from the store once
        # per item and dropped with every refresh of the popularity list: a request then reads only the
        # point-in-time popularity of its candidates (2.5 ms for 300, against 5.6 ms with the features)
        self._catalog: dict[str, dict | None] = {}
        self.point_in_time = PointInTimeCache(config.ranking.item_popularity_cache_seconds, on_lookup=self._count_items)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="stage")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def refresh_popular(self) -> bool:
        """Refreshes the in-process popularity list from the store (kept for when the store is down)."""
        try:
            popular = self.store.popular_items(int(time.time()), self.config.limits.fallback_list_size)
        except Exception as err:  # noqa: BLE001 - the store being down is exactly when we keep the old list
            log.warning("popularity list not refreshed: %s", err)
            return False
        if popular:
            try:
                details = self.store.items([item for item, _ in popular])
            except Exception:  # noqa: BLE001 - titles are nice to have
                details = []
            self._popular_items = {d[features.ITEM_ID]: d for d in details if d}
            self._popular = list(popular)
        self._catalog = {}
        return True

    def start(self) -> None:
        """Background upkeep: the popularity list, the rules file and the served versions."""
        self.refresh_popular()

        def upkeep():
            last_popular = time.monotonic()
            while not self._stop.wait(self.config.reranking.rules_poll_seconds):
                if self.rules.maybe_reload():
                    self.metrics.rules_reloads.labels("ok").inc()
                if time.monotonic() - last_popular > self.config.limits.fallback_refresh_seconds:
                    self.refresh_popular()
                    last_popular = time.monotonic()

        thread = threading.Thread(target=upkeep, name="recommender-upkeep", daemon=True)
        thread.start()
        self._threads.append(thread)
        if self.watcher is not None:
            self.watcher.start(self.config.retrieval.version_poll_seconds)

    def popular_items(self, as_of: int, k: int, window_days: float | None = None, segment: dict | None = None):
        """The store's popular_items, cached for `limits.popularity_cache_seconds` (replays: per as_of)."""
        live = abs(time.time() - as_of) < 60
        # k varies with the user's seen items: fetch a multiple of the fallback list size so requests share
        # an entry (an all-time count over a long log takes hundreds of ms; a miss per request was a tail)
        size = self.config.limits.fallback_list_size
        fetch = -(-k // size) * size
        key = ("live" if live else as_of, fetch, window_days, tuple(sorted((segment or {}).items())))
        now = time.monotonic()
        with self._popularity_lock:
            hit = self._popularity_cache.get(key)
            if hit and hit[0] > now:
                return hit[1][:k]
        popular = self.store.popular_items(as_of, fetch, window_days, segment)
        with self._popularity_lock:
            if len(self._popularity_cache) > 10_000:
                self._popularity_cache.clear()
            self._popularity_cache[key] = (now + self.config.limits.popularity_cache_seconds, list(popular))
        return popular[:k]

    def _count_items(self, hits: int, misses: int) -> None:
        self.metrics.item_popularity_cache.labels("hit").inc(hits)
        self.metrics.item_popularity_cache.labels("miss").inc(misses)

    def counts_changed(self) -> None:
        """An event or a delete went through this service: cached point-in-time popularity is stale."""
        self.point_in_time.invalidate()

    def warm_up(self, requests: int = 3) -> None:
        """A few throw-away requests so the first real one does not pay for lazy set-up (threads, ScaNN)."""
        for n in range(requests):
            self.recommend({"user_id": f"warm-up-{n}", "k": 10, "explore": False})

    def close(self) -> None:
        self._stop.set()
        if self.watcher is not None:
            self.watcher.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> dict:
        """What /readyz reports: models loaded and the model server and the store reachable."""
        served = self.watcher.current if self.watcher else None
        try:
            store_ok = bool(self.store.ping())
        except Exception:  # noqa: BLE001 - readiness reports, never raises
            store_ok = False
        model_error = self.watcher.last_error if self.watcher else "no model server configured"
        models_ok = False
        if served is not None:
            try:
                models_ok = served.two_tower in self.watcher.client.available_versions("two_tower", timeout=1.0)
            except Exception as err:  # noqa: BLE001
                model_error = str(err)
        return {
            "ready": models_ok and store_ok,
            "models": served.versions if served else None,
            "model_server": models_ok,
            "store": store_ok,
            "model_error": None if models_ok else model_error,
        }

    # ------------------------------------------------------------------ the request

    def _stage(self, state: _State, name: str, fn, *args, inline: bool = False):
        """Runs one stage under its budget, records its time; exceptions propagate to the caller's fallback.

        A stage that waits on the store or the model server runs in the stage pool, so the request stops
        waiting at the budget. `inline` stages (re-ranking, exploration: CPU work in this process, which a
        timeout could not stop anyway) run in the request's thread and are over budget when they return
        late: the hand-off to a pool thread and back cost more than they do (two thread wake-ups, under
        load ~1/6 of the service's CPU for five stages).
        """
        budget = getattr(self.config.budgets_ms, name) / 1000.0
        start = time.perf_counter()
        try:
            if inline:
                result = fn(*args)
                if time.perf_counter() - start > budget:
                    raise StageTimeoutError(f"{name} over its {budget * 1000:.0f} ms budget")
                return result
            future = self._pool.submit(fn, *args)
            try:
                return future.result(timeout=budget)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise StageTimeoutError(f"{name} over its {budget * 1000:.0f} ms budget") from None
        finally:
            elapsed = time.perf_counter() - start
            state.timings[name] = state.timings.get(name, 0.0) + elapsed * 1000
            self.metrics.stage_latency.labels(name).observe(elapsed)

    def _fall_back(self, state: _State, stage: str, err: Exception) -> None:
        reason = _reason(err)
        if state.fallback is None:
            state.fallback = {"stage": stage, "reason": reason}
        self.metrics.fallbacks.labels(stage, type(err).__name__).inc()
        log.info("request %s: %s fallback: %s", state.request.request_id, stage, reason)

    def recommend(self, body) -> dict:
        """The response dict for one request (BadRequestError for an invalid one; never anything else)."""
        limits = self.config.limits
        request = body if isinstance(body, Request) else Request.parse(body, limits.max_k, limits.max_exclude)
        start = time.perf_counter()
        ts = request.context.get("timestamp")
        state = _State(request, int(ts) if ts is not None else int(time.time()))
        try:
            self._run(state)
        except Exception as err:  # noqa: BLE001 - the last line of defence: a valid request never fails
            log.exception("request %s failed; serving popularity", request.request_id)
            self._fall_back(state, "pipeline", err)
            self.metrics.errors.labels("recommend", type(err).__name__).inc()
            state.candidates = self._popularity(state, store_ok=False)[: request.k]
        total = (time.perf_counter() - start) * 1000
        self.metrics.request_latency.observe(total / 1000)
        return self._response(state, total)

    def ranked(self, body) -> tuple[list[Candidate], set[str], Request]:
        """(candidates in ranking order, seen items, the request): what re-ranking gets for `body`, through
        the same features, retrieval and ranking stages, without budgets or fallbacks (errors raise).

        For evaluating re-ranking settings offline on many lists (rerank_selection.py).
        """
        limits = self.config.limits
        request = body if isinstance(body, Request) else Request.parse(body, limits.max_k, limits.max_exclude)
        ts = request.context.get("timestamp")
        state = _State(request, int(ts) if ts is not None else int(time.time()))
        self._features(state)
        state.served = self.watcher.current
        if state.served is None:
            raise ModelUnavailableError(self.watcher.last_error or "no served model version")
        self._retrieve(state)
        self._rank(state)
        return state.candidates, state.seen, request

    def _run(self, state: _State) -> None:
        request = state.request
        try:
            self._stage(state, "features", self._features, state)
        except Exception as err:  # noqa: BLE001 - store down / over budget
            self._fall_back(state, "features", err)
            state.candidates = self._popularity(state, store_ok=False)[: request.k]
            return
        state.served = self.watcher.current if self.watcher else None
        try:
            if state.served is None:
                raise ModelUnavailableError(
                    "no served model version yet" + (f" ({self.watcher.last_error})" if self.watcher else "")
                )
            self._stage(state, "retrieval", self._retrieve, state)
        except Exception as err:  # noqa: BLE001 - model server down / over budget
            self._fall_back(state, "retrieval", err)
            state.candidates = self._popularity(state, store_ok=True)
        else:
            try:
                self._stage(state, "ranking", self._rank, state)
            except Exception as err:  # noqa: BLE001 - keep the retrieval order
                self._fall_back(state, "ranking", err)
        try:
            state.candidates = self._stage(state, "reranking", self._rerank, state, inline=True)
        except Exception as err:  # noqa: BLE001
            self._fall_back(state, "reranking", err)
            # the ranking order: final scores (retrieval + popularity + w x ranker), best first
            state.candidates.sort(key=lambda c: -c.stage_scores.get("final", c.score))
        try:
            state.candidates = self._stage(state, "exploration", self._explore, state, inline=True)
        except Exception as err:  # noqa: BLE001
            self._fall_back(state, "exploration", err)
            state.candidates = state.candidates[: request.k]

    # ------------------------------------------------------------------ stages

    def _features(self, state: _State) -> None:
        state.query, known, events = self.store.query_state(state.request.user_id, state.as_of)  # one round trip
        state.seen = {e.item_id for e in events}
        state.events = len(events)
        state.history = [e.item_id for e in events][-features.DEFAULT_HISTORY_LENGTH :]
        cold = not known or len(events) < self.config.cold_start.min_events
        state.user_state = COLD if cold else WARM
        for key in features.USER_FEATURES[1:]:
            value = state.query.get(key)
            self.metrics.feature_checks.labels(key).inc()
            if value in (None, "", -1):
                self.metrics.feature_nulls.labels(key).inc()

    def _query_embedding(self, state: _State) -> np.ndarray:
        served, request = state.served, state.request
        budget = self.config.budgets_ms.retrieval / 1000.0
        context = features.context_features(state.as_of)
        # The cached vector is only right for the same model version and request hour/day (context
        # features) and the same history (an event invalidates); replays of the past skip the cache.
        live = abs(time.time() - state.as_of) < self.config.retrieval.cache_ttl_seconds
        slot = served.two_tower * 1000 + context[features.CTX_HOUR] * 7 + context[features.CTX_DAY_OF_WEEK]
        if live:
            try:
                cached = self.store.get_cached_embedding("query", request.user_id, slot)
            except Exception:  # noqa: BLE001 - a cache miss, not an error
                cached = None
            self.metrics.cache.labels("hit" if cached is not None else "miss").inc()
            if cached is not None and cached.shape == (served.index.dim,):
                return cached
        embedding = self.watcher.client.query_embedding(state.query, served.two_tower, budget)
        if live:
            try:
                self.store.set_cached_embedding(
                    "query", request.user_id, slot, embedding, self.config.retrieval.cache_ttl_seconds
                )
            except Exception:  # noqa: BLE001 - caching is best effort
                pass
        return embedding

    def popularity_blend(self, served: ServedVersion) -> tuple[float, int]:
        """(beta, how many recently popular items join the candidates): the config's, else the pushed evaluation's."""
        ranking, evaluation = self.config.ranking, served.evaluation
        beta = ranking.popularity_weight
        if beta is None:
            beta = float(evaluation.get("popularity_weight") or 0.0)
        count = ranking.popularity_candidates
        if count is None:
            count = int(evaluation.get("rerank_depth") or 100)
        return beta, (count if beta > 0 else 0)

    def retrieval_depth(self, served: ServedVersion, k: int) -> int:
        """How many candidates ScaNN returns: the config's top_n as set; else the depth the pushed evaluation
        scored, raised to k so a request for more items than that depth still gets k when the catalog has them."""
        top_n = self.config.retrieval.top_n
        if top_n is not None:
            return top_n
        return max(int(served.evaluation.get("rerank_depth") or FALLBACK_TOP_N), k)

    def recent_then_all_time(self, as_of: int, want: int, window_days: float) -> list[tuple[str, float]]:
        """At least `want` items (if the store has them): by their count in the last `window_days`, ties by
        item id; when fewer items had events in the window (the list is then complete), followed by the
        others by all-time count, ties by id."""
        recent = self.popular_items(as_of, want, window_days)
        if len(recent) >= want:
            return recent
        have = {item for item, _ in recent}
        return recent + [p for p in self.popular_items(as_of, want + len(have)) if p[0] not in have]

    def recently_popular(self, as_of: int, count: int, banned: set) -> list[str]:
        """The `count` most recently popular items not in `banned`, in the offline evaluation's order:
        `recent_then_all_time` over RECENT_WINDOW_DAYS (the ranker's ITEM_RECENT_COUNT window)."""
        ranked = self.recent_then_all_time(as_of, count + len(banned), features.RECENT_WINDOW_DAYS)
        return [item for item, _ in ranked if item not in banned][:count]

    def _retrieve(self, state: _State) -> None:
        served, request = state.served, state.request
        index = served.index
        query = self._query_embedding(state)
        rules = self.rules.rules
        banned = state.seen | set(request.exclude) | set(rules.blocked)
        rows = [r for r in (index.row_of(i) for i in banned) if r is not None]
        top_n = min(self.retrieval_depth(served, request.k), index.num_items)
        idx, scores = search_top_n(index, query, top_n, rows, self.config.retrieval.realtime_search)
        # the same doubles as float(score) / temperature per item, in one numpy step
        logits = (scores.astype(np.float64) / self.temperature).tolist()
        out = [
            Candidate(item, logit, stage_scores={"retrieval": logit})
            for item, logit in zip(index.ids[idx].tolist(), logits)
        ]
        temperature = self.temperature
        if state.user_state == COLD and self.config.cold_start.popularity_candidates:
            have = {c.item_id for c in out}
            segment = self._segment(state.query)
            popular = self.popular_items(
                state.as_of,
                self.config.cold_start.popularity_candidates + len(banned),
                self.config.cold_start.popularity_window_days,
                segment,
            )
            for item, _count in popular:
                row = index.row_of(item)
                if item in have or item in banned or row is None:
                    continue
                logit = float(index.embeddings[row] @ query) / temperature
                out.append(Candidate(item, logit, source=POPULARITY, stage_scores={"retrieval": logit}))
        _, count = self.popularity_blend(served)
        if count:
            have = {c.item_id for c in out}
            extra = [
                (item, row)
                for item in self.recently_popular(state.as_of, count, banned)
                if item not in have and (row := index.row_of(item)) is not None
            ]
            if extra:
                dots = index.embeddings[[row for _, row in extra]] @ query
                for (item, _), dot in zip(extra, dots.astype(np.float64).tolist()):
                    logit = dot / temperature
                    out.append(Candidate(item, logit, source=POPULARITY, stage_scores={"retrieval": logit}))
        state.candidates = out

    @staticmethod
    def _segment(query: Mapping) -> dict | None:
        from towerflow.serving.feature_store.keys import age_bucket

        segment = {}
        age = query.get(features.USER_AGE)
        if isinstance(age, int) and age > 0:
            segment["age_bucket"] = age_bucket(age)
        if query.get(features.USER_GENDER):
            segment["gender"] = query[features.USER_GENDER]
        return segment or None

    def _catalog_items(self, item_ids: list[str]) -> list[dict | None]:
        """ITEM_FEATURES per id from the in-process catalog cache (the store for ids not cached yet).

        Entries keep their genres as a tuple: a dict of strings, ints and tuples of strings holds no object
        the garbage collector must follow, so after one collection it is untracked. With genre lists, every
        full collection walks the whole cache (at 1M items up to 200,000 entries: ~150 ms against ~7 ms
        with tuples, in process), and every request in flight waits it out.
        """
        catalog = self._catalog
        missing = [item for item in item_ids if item not in catalog]
        if missing:
            if len(catalog) + len(missing) > 200_000:
                catalog = self._catalog = {}
            catalog.update(zip(missing, map(_immutable, self.store.items(missing))))
        return [catalog.get(item) for item in item_ids]

    def _item_details(self, state: _State) -> None:
        """Item features (cached catalog data) and point-in-time popularity (one store read) per candidate."""
        ids = [c.item_id for c in state.candidates]
        items = self._catalog_items(ids)
        popularity = self.point_in_time.get(ids, state.as_of, self.store.item_features_at)
        for c, item, pit in zip(state.candidates, items, popularity):
            c.item, c.pit = (item, pit) if item is not None else ({features.ITEM_ID: c.item_id}, {})

    def _rank(self, state: _State) -> None:
        self._item_details(state)
        served = state.served
        beta, _ = self.popularity_blend(served)
        if beta > 0:  # the popularity term needs no model: it is in the score even if the ranker fails
            for c in state.candidates:
                term = beta * math.log1p(float(c.pit.get(features.ITEM_RECENT_COUNT) or 0))
                c.stage_scores["popularity"] = term
                c.score = c.stage_scores["retrieval"] + term
                c.stage_scores["final"] = c.score
        if not self.config.ranking.enabled or served.ranker is None or not state.candidates:
            return
        budget = self.config.budgets_ms.ranking / 1000.0
        rows = [{**c.item, **c.pit} for c in state.candidates]
        out = self.watcher.client.rank(state.query, rows, served.ranker, budget)
        interaction = np.asarray(out["interaction_score"], dtype=np.float64).reshape(-1)
        weight = served.rerank_weight
        for c, s in zip(state.candidates, interaction):
            c.stage_scores["ranking"] = float(s)
            # (retrieval + popularity) + w x interaction: the offline evaluation's order of additions
            c.score = c.stage_scores["retrieval"] + c.stage_scores.get("popularity", 0.0) + weight * float(s)
            c.stage_scores["final"] = c.score
        version = str(served.ranker)
        self.metrics.scores.labels("ranker", version).observe(float(np.mean(interaction)))

    def _rerank(self, state: _State) -> list[Candidate]:
        if state.candidates and not state.candidates[0].item:
            self._item_details(state)  # ranking fell back before fetching item features
        request = state.request
        return reranking.rerank(
            state.candidates,
            request.k,
            seen=state.seen,
            exclude=set(request.exclude),
            rules=self.rules.rules,
            context=request.context,
            config=self.config.reranking,
        )

    def _explore(self, state: _State) -> list[Candidate]:
        request = state.request
        if request.explore and state.fallback is None:
            top, state.epsilon = reranking.explore(
                state.candidates, request.k, state.events, request.request_id, self.config.exploration
            )
        else:
            top = list(state.candidates[: request.k])
        if state.served is not None:
            reranking.explain(top, state.history, state.served.index, self._history_titles(state.history))
        else:
            reranking.explain(top, [], None, {})
        return top

    def _history_titles(self, history: list[str]) -> dict[str, str | None]:
        return {item: row.get(features.ITEM_TITLE) for item, row in zip(history, self._catalog_items(history)) if row}

    # ------------------------------------------------------------------ fallbacks

    def _popularity(self, state: _State, store_ok: bool) -> list[Candidate]:
        """Recent popularity from the store (all-time if the recent window is thin), else the in-process list."""
        request = state.request
        banned = state.seen | set(request.exclude) | set(self.rules.rules.blocked)
        want = request.k + len(banned)
        popular: list[tuple[str, float]] = []
        if store_ok:
            try:
                popular = self.recent_then_all_time(state.as_of, want, self.config.cold_start.popularity_window_days)
            except Exception as err:  # noqa: BLE001 - the store failed too: use the in-process list
                self._fall_back(state, "popularity", err)
                popular = []
        if not popular:
            popular = self._popular
        out = []
        for item, count in popular:
            if item in banned or not self.rules.rules.allowed(item, request.context):
                continue
            c = Candidate(item, float(count), source=POPULARITY, stage_scores={"popularity": float(count)})
            c.item = self._popular_items.get(item, {}) if not store_ok else {}
            c.explanation = "popular this week"
            out.append(c)
        return out

    # ------------------------------------------------------------------ the response

    def _response(self, state: _State, total_ms: float) -> dict:
        items = []
        for c in state.candidates:
            if not c.explanation:
                c.explanation = "popular this week" if c.source == POPULARITY else "recommended for you"
            items.append(
                {
                    "item_id": c.item_id,
                    "title": c.item.get(features.ITEM_TITLE),
                    "score": round(float(c.score), 6),
                    "stage_scores": {k: round(v, 6) for k, v in c.stage_scores.items()},
                    "explanation": c.explanation,
                    "explored": c.explored,
                    "source": c.source,
                }
            )
        timings = {stage: round(state.timings.get(stage, 0.0), 3) for stage in STAGES}
        timings["total"] = round(total_ms, 3)
        if state.fallback:
            self.metrics.responses.labels("fallback").inc()
        else:
            self.metrics.responses.labels("ok").inc()
        return {
            "items": items,
            "user_state": state.user_state,
            "model_versions": state.served.versions if state.served else {"two_tower": None, "ranker": None},
            "fallback": state.fallback,
            "timings_ms": timings,
            "request_id": state.request.request_id,
            "as_of": state.as_of,
            "epsilon": round(state.epsilon, 6),
        }


def _immutable(item: dict | None) -> dict | None:
    """The item with its list values (genres) as tuples (see `Recommender._catalog_items`)."""
    if item is None:
        return None
    return {key: tuple(value) if isinstance(value, list) else value for key, value in item.items()}


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:300]
