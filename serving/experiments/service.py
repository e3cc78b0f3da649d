"""Experiments in the recommender service: the sources, the wrapped recommender, the canary watcher.

    base = build_recommender(store, serving_root, grpc_target=...)          # serves `stable`
    wired = attach(base, experiments_config, serving_root, log_dir=..., metadata_path=...)
    app = create_app(wired.recommender, token, routers=[...])
    ...
    wired.close()

`attach` builds the sources an experiment can name --

  stable      the base recommender, pinned to the `stable` version label
  canary      a second Recommender on the same store and model server whose
              versions follow the `canary` label (two-tower + its own index, ranker)
  popularity  all-time counts before the request time from the store, seen and
              excluded items removed (the offline protocol's baseline)

-- and an `ExperimentalRecommender`: the base recommender with `recommend`
going through the ExperimentRouter and `store.record_event` also writing the
event log, so `create_app` needs no change. A request may name a source with
`"source": "popularity"` (offline replays of an A/B test do); the field is
removed before the base recommender sees the request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from towerflow.components.pusher import model_repository
from towerflow.models import features
from towerflow.serving.experiments.canary import CanaryWatcher
from towerflow.serving.experiments.config import CANARY, POPULARITY, STABLE, ExperimentsConfig
from towerflow.serving.experiments.event_log import ExperimentLog
from towerflow.serving.experiments.metrics import ExperimentMetrics
from towerflow.serving.experiments.router import ExperimentRouter, UnknownSourceError
from towerflow.serving.experiments.stats import ScoreReference
from towerflow.serving.recommender.config import ServiceConfig
from towerflow.serving.recommender.recommender import BadRequestError, Recommender
from towerflow.serving.recommender.served import RANKER, TWO_TOWER, VersionWatcher, read_evaluation

log = logging.getLogger(__name__)

SOURCE_FIELD = "source"


class LabelledVersionWatcher(VersionWatcher):
    """A VersionWatcher that follows a version label instead of the highest loaded version.

    `stable` falls back to the default version when the root has no labels (a
    hand-made config); `canary` falls back to the stable version for a model
    that has no canary (e.g. only the two-tower was pushed as canary).
    """

    def __init__(self, *args, label: str = STABLE, **kwargs):
        super().__init__(*args, **kwargs)
        self.label = label

    def _wanted(self, model: str) -> tuple[int | None, str | None]:
        try:
            state = model_repository.model_state(self.serving_root, model)
        except ValueError:
            return None, None
        version = state.labels.get(self.label)
        if version is None:
            version = state.labels.get(STABLE, state.default_version)
        return version, state.base_path


class PopularitySource:
    """Most events before the request's time (all time), minus the user's seen and excluded items."""

    def __init__(self, store, max_k: int = 1000):
        self.store, self.max_k = store, max_k

    def __call__(self, body: Mapping) -> dict:
        started = time.perf_counter()
        user_id = str(body.get("user_id", ""))
        k = body.get("k", 10)
        if not user_id or isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            raise BadRequestError(f"need a user_id and k in [1, {self.max_k}]")
        as_of = int((body.get("context") or {}).get("timestamp") or time.time())
        seen = {e.item_id for e in self.store.user_events(user_id, before=as_of)}
        banned = seen | {str(i) for i in body.get("exclude") or []}
        popular = [(i, n) for i, n in self.store.popular_items(as_of, k + len(banned)) if i not in banned][:k]
        details = self.store.items([i for i, _ in popular])
        items = [
            {
                "item_id": item_id,
                "title": (detail or {}).get(features.ITEM_TITLE),
                "score": count,
                "stage_scores": {"popularity": count},
                "explanation": "popular",
                "explored": False,
                "source": POPULARITY,
            }
            for (item_id, count), detail in zip(popular, details)
        ]
        return {
            "items": items,
            "user_state": "warm" if seen else "cold",
            "model_versions": {POPULARITY: self.store.feature_set_id},
            "fallback": None,
            "timings_ms": {"total": round((time.perf_counter() - started) * 1000, 3)},
            "request_id": str(body.get("request_id") or ""),
            "as_of": as_of,
        }


class _LoggingStore:
    """The base store, with accepted events also written to the experiments' event log."""

    def __init__(self, store, router: ExperimentRouter):
        self._store, self._router = store, router

    def record_event(self, user_id, item_id, event_type, rating=None, timestamp=None, event_id=None) -> dict:
        result = self._store.record_event(user_id, item_id, event_type, rating, timestamp, event_id)
        self._router.record_event(
            str(user_id), str(item_id), event_type, rating=rating, event_time=timestamp, event_id=event_id
        )
        return result

    def __getattr__(self, name):
        return getattr(self._store, name)


class ExperimentalRecommender:
    """The base Recommender, with `recommend` routed through the experiments (see the module docstring)."""

    def __init__(self, base: Recommender, router: ExperimentRouter):
        self.base, self.router = base, router
        self.store = _LoggingStore(base.store, router)

    def recommend(self, body) -> dict:
        source = None
        if isinstance(body, Mapping) and SOURCE_FIELD in body:
            body = dict(body)
            source = body.pop(SOURCE_FIELD)
            if not isinstance(source, str):
                raise BadRequestError(f"{SOURCE_FIELD} must be a string, one of {sorted(self.router.sources)}")
        try:
            return self.router.recommend(body, source)
        except UnknownSourceError as err:
            raise BadRequestError(str(err)) from None

    def __getattr__(self, name):
        return getattr(self.base, name)


class _CanaryPresence:
    """Whether a canary two-tower is labelled, loaded and warmed up (models.config read at most once a second).

    A freshly loaded version answers its first requests slowly (model warm-up, empty caches); routing users
    to it only after `warm_up` keeps that cost out of the canary's latency, which the watcher compares.
    """

    def __init__(self, serving_root: str | Path):
        self.serving_root = Path(serving_root)
        self.canary: Recommender | None = None
        self._checked, self._present = 0.0, False
        self._warmed: int | None = None
        self._lock = threading.Lock()

    def on_swap(self, served) -> None:
        """VersionWatcher callback: warm the new canary version up off the request path, then admit it."""

        def warm():
            try:
                self.canary.warm_up()
            except Exception:  # noqa: BLE001 - a version that cannot warm up is left out of rotation
                log.exception("canary v%s did not warm up; not routing users to it", served.two_tower)
                return
            self._warmed = served.two_tower
            self._checked = 0.0

        threading.Thread(target=warm, name="canary-warm-up", daemon=True).start()

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._checked > 1.0:
                self._checked = now
                try:
                    labels = model_repository.model_state(self.serving_root, TWO_TOWER).labels
                except ValueError:
                    labels = {}
                version = labels.get(CANARY)
                current = self.canary.watcher.current if self.canary and self.canary.watcher else None
                self._present = (
                    version is not None and current is not None and current.two_tower == version == self._warmed
                )
            return self._present


@dataclass
class Experiments:
    """What `attach` built; `recommender` goes to create_app, `close()` on shutdown."""

    recommender: ExperimentalRecommender
    router: ExperimentRouter
    watcher: CanaryWatcher | None
    canary: Recommender | None
    log: ExperimentLog | None

    def close(self) -> None:
        self.router.close()
        if self.canary is not None:
            self.canary.close()
        if self.log is not None:
            self.log.close()


def score_reference(config: ExperimentsConfig, serving_root: str | Path) -> ScoreReference | None:
    """The canary's PSI reference: `canary.score_reference`, else a `score_distribution` in the evaluation
    pushed with the stable ranker or two-tower; None (PSI not checked) when neither exists."""
    if config.canary is None:
        return None
    if config.canary.score_reference:
        path = Path(config.canary.score_reference)
        if not path.is_file():
            raise FileNotFoundError(
                f"canary.score_reference {path} does not exist (`towerflow abtest --score-reference`)"
            )
        return ScoreReference.from_dict(json.loads(path.read_text(encoding="utf-8")))
    for model in (RANKER, TWO_TOWER):
        try:
            state = model_repository.model_state(serving_root, model)
        except ValueError:
            continue
        version = state.labels.get(STABLE, state.default_version)
        evaluation = read_evaluation(Path(state.base_path) / str(version)) if version else {}
        if evaluation.get("score_distribution"):
            return ScoreReference.from_dict(evaluation["score_distribution"])
    log.warning("no score reference for the canary watcher: the score-distribution (PSI) check is off")
    return None


def _merged(settings: dict, overrides: dict) -> dict:
    out = dict(settings)
    for key, value in overrides.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def variant(base: Recommender, name: str, overrides: dict) -> Recommender:
    """A Recommender with the base's store, served models and metrics, and its config with `overrides`."""
    try:
        config = ServiceConfig.from_dict(_merged(base.config.to_dict(), overrides))
    except (TypeError, ValueError) as err:
        raise ValueError(f"experiments.variants.{name}: {err}") from None
    recommender = Recommender(base.store, base.watcher, config, base.metrics)
    recommender.point_in_time = base.point_in_time  # one store, one cache: the base's events invalidate it
    recommender.refresh_popular()
    return recommender


def attach(
    base: Recommender,
    config: ExperimentsConfig,
    serving_root: str | Path,
    log_dir: str | Path | None = None,
    metadata_path: str | None = None,
    reference: ScoreReference | None = None,
    start: bool = True,
) -> Experiments:
    """Wraps `base` (see the module docstring). `log_dir` defaults to config.log.dir (None: no logs)."""
    sources = {STABLE: base.recommend, POPULARITY: PopularitySource(base.store, base.config.limits.max_k)}
    for name, overrides in config.variants.items():
        sources[name] = variant(base, name, overrides).recommend
    canary = None
    presence = None
    if base.watcher is not None:
        presence = _CanaryPresence(serving_root)
        watcher = LabelledVersionWatcher(
            serving_root,
            base.watcher.client,
            base.config.ranking.default_weight,
            catalog=base.watcher._catalog,
            on_swap=presence.on_swap,
            label=CANARY,
        )
        canary = Recommender(base.store, watcher, base.config, base.metrics)
        canary.point_in_time = base.point_in_time
        presence.canary = canary
        sources[CANARY] = canary.recommend
        if start:
            watcher.refresh()
            watcher.start(base.config.retrieval.version_poll_seconds)
            canary.refresh_popular()
    directory = log_dir or config.log.dir
    sink = ExperimentLog(directory, config.log) if directory else None
    registry = getattr(base.metrics, "registry", None)  # the app's registry: /metrics shows these too
    metrics = ExperimentMetrics(registry) if registry is not None else None
    canary_watcher = None
    if config.canary is not None:
        reference = reference or score_reference(config, serving_root)
        canary_watcher = CanaryWatcher(
            config.canary, serving_root, reference, metadata_path, on_verdict=metrics.verdict if metrics else None
        )
        if start:
            canary_watcher.start()
    router = ExperimentRouter(
        config,
        sources,
        sink,
        canary_watcher,
        canary_available=presence or (lambda: False),
        client_errors=(BadRequestError,),
        metrics=metrics,
    )
    return Experiments(ExperimentalRecommender(base, router), router, canary_watcher, canary, sink)


def stable_watcher(serving_root, client, default_weight: float, catalog=None) -> LabelledVersionWatcher:
    """The base recommender's watcher pinned to `stable` (what build_recommender should use with a canary)."""
    return LabelledVersionWatcher(serving_root, client, default_weight, catalog=catalog, label=STABLE)
