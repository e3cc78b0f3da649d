"""Which source serves a request, and what gets logged: experiments, shadow mode and the canary split.

`ExperimentRouter.recommend(request)` wraps the service's recommenders. Each
source (`stable`, `canary`, `popularity`, or a variant the service registers)
is a callable `request dict -> response dict` with the response shape of
`POST /v1/recommend`. For a request it

1. picks the serving source: the user's arm in the serving experiment (or its
   holdout source); else `canary` for the canary share of users while a canary
   version exists; else `stable`. A caller may force a source (offline replays
   of an A/B test do: `source=`), which is logged as experiment "forced".
2. calls it, observes latency / failure / scores for the canary watcher and
   logs the impression (experiment, arm, source, model versions, request id).
   A failing canary is observed as an error and the request is answered by
   `stable` instead, so a bad canary costs the user nothing but time.
3. for each shadow experiment whose arm for this user is not the control,
   computes that arm's list on a background thread and logs it with
   `"served": false`. The response is exactly the served source's response:
   shadow work never touches it, and when the shadow queue is full the shadow
   list is skipped (counted), never waited for.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait

from towerflow.serving.experiments import bucketing
from towerflow.serving.experiments.canary import CanaryWatcher
from towerflow.serving.experiments.config import CANARY, STABLE, ExperimentsConfig
from towerflow.serving.experiments.event_log import ExperimentLog
from towerflow.serving.experiments.metrics import ExperimentMetrics
from towerflow.serving.experiments.stats import model_scores

log = logging.getLogger(__name__)

Recommend = Callable[[dict], dict]
FORCED = "forced"
CANARY_SPLIT = "canary"


class UnknownSourceError(ValueError):
    """A request forced a source the service does not have."""


class ExperimentRouter:
    """See the module docstring."""

    def __init__(
        self,
        config: ExperimentsConfig,
        sources: Mapping[str, Recommend],
        log_sink: ExperimentLog | None = None,
        watcher: CanaryWatcher | None = None,
        canary_available: Callable[[], bool] | None = None,
        shadow_workers: int = 1,
        shadow_queue: int = 64,
        client_errors: tuple[type[BaseException], ...] = (),
        metrics: ExperimentMetrics | None = None,
    ):
        missing = sorted(config.sources() - set(sources))
        if missing:
            raise ValueError(
                f"the experiments config names source(s) {missing} the service does not provide; "
                f"it provides {sorted(sources)}"
            )
        self.config, self.sources = config, dict(sources)
        self._client_errors = client_errors  # the request's fault (a 400): re-raised, not held against a source
        self.log, self.watcher, self.metrics = log_sink, watcher, metrics
        self._canary_available = canary_available or (lambda: CANARY in self.sources)
        self._shadow_pool = ThreadPoolExecutor(max_workers=shadow_workers, thread_name_prefix="shadow")
        self._shadow_slots = threading.BoundedSemaphore(shadow_queue)
        self._pending: set = set()
        self.shadow_skipped = 0
        self.shadow_failed = 0

    # --- routing -----------------------------------------------------------------------------------------------

    def assignments(self, user_id: str) -> dict[str, bucketing.Assignment]:
        """The user's arm in every configured experiment."""
        return {t.name: bucketing.assign(t, user_id) for t in self.config.tests}

    def route(self, user_id: str, forced: str | None = None) -> tuple[str, str | None, str | None]:
        """(source, experiment, arm) that serves this user now."""
        if forced is not None:
            if forced not in self.sources:
                raise UnknownSourceError(f"unknown source {forced!r}; this service has {sorted(self.sources)}")
            if forced == CANARY and not self._canary_available():
                raise UnknownSourceError("no canary version is served now (none pushed, not warmed up, or rolled back)")
            return forced, FORCED, forced
        test = self.config.serving_test
        if test is not None:
            a = bucketing.assign(test, user_id)
            source = a.source
            if source == CANARY and not self._canary_available():
                source = STABLE
            return source, test.name, a.arm
        canary = self.config.canary
        if canary is not None and canary.share > 0 and self._canary_available():
            if bucketing.in_share(canary.salt, user_id, canary.share):
                return CANARY, CANARY_SPLIT, CANARY
            return STABLE, CANARY_SPLIT, STABLE
        return STABLE, None, None

    # --- serving -----------------------------------------------------------------------------------------------

    def _call(self, source: str, request: dict) -> tuple[dict | None, float, BaseException | None]:
        started = time.perf_counter()
        try:
            response = self.sources[source](request)
            error = None
        except self._client_errors:
            raise
        except Exception as err:  # noqa: BLE001 - a failing source is observed, then answered by stable
            response, error = None, err
        latency = (time.perf_counter() - started) * 1000.0
        if self.watcher is not None and source in (STABLE, CANARY):
            failed = error is not None or bool(response and response.get("fallback"))
            scores = model_scores((response or {}).get("items", []))
            self.watcher.observe(source, latency, failed, scores)
        return response, latency, error

    def recommend(self, request: Mapping, source: str | None = None) -> dict:
        """The served response (see the module docstring); `source` forces one."""
        request = dict(request)
        user_id = str(request.get("user_id", ""))
        chosen, experiment, arm = self.route(user_id, source)
        response, latency, error = self._call(chosen, request)
        if error is not None:
            if chosen == STABLE or source is not None:
                raise error
            log.warning("source %s failed (%s); answering from stable", chosen, error)
            chosen, arm_note = STABLE, arm
            response, latency, error = self._call(STABLE, request)
            if error is not None:
                raise error
            arm = f"{arm_note}->stable"
        self._count(experiment, arm, chosen, True)
        if self.log is not None:
            self.log.impression(
                request_id=str(response.get("request_id", "")),
                user_id=user_id,
                experiment=experiment,
                arm=arm,
                source=chosen,
                served=True,
                response=response,
                latency_ms=latency,
            )
        if source is None:  # a forced source is a replay tool's request, not a user's: no shadow work
            self._shadows(user_id, request, response)
        return response

    def _shadows(self, user_id: str, request: dict, served: dict) -> None:
        for test in self.config.tests:
            if not test.shadow:
                continue
            a = bucketing.assign(test, user_id)
            if a.in_holdout or a.arm == test.control.name:
                continue
            if not self._shadow_slots.acquire(blocking=False):
                self.shadow_skipped += 1
                if self.metrics is not None:
                    self.metrics.shadow_skipped.inc()
                continue
            # the shadow gets its own copy: nothing it does can reach the served request or response
            shadow_request = copy.deepcopy(request)
            request_id = str(served.get("request_id", ""))
            future = self._shadow_pool.submit(self._shadow_one, test.name, a, user_id, shadow_request, request_id)
            self._pending.add(future)
            future.add_done_callback(self._shadow_done)

    def _shadow_done(self, future) -> None:
        self._pending.discard(future)
        self._shadow_slots.release()

    def _shadow_one(self, experiment: str, a: bucketing.Assignment, user_id: str, request: dict, request_id: str):
        response, latency, error = self._call(a.source, request)
        if error is not None:
            self.shadow_failed += 1
            log.warning("shadow %s/%s failed: %s", experiment, a.arm, error)
            return
        self._count(experiment, a.arm, a.source, False)
        if self.log is not None:
            self.log.impression(
                request_id=request_id,
                user_id=user_id,
                experiment=experiment,
                arm=a.arm,
                source=a.source,
                served=False,
                response=response,
                latency_ms=latency,
            )

    def _count(self, experiment: str | None, arm: str | None, source: str, served: bool) -> None:
        if self.metrics is not None:
            self.metrics.impressions.labels(experiment or "", arm or "", source, str(served).lower()).inc()

    def record_event(self, user_id: str, item_id: str, event_type: str, **extra) -> None:
        """Logs an accepted event with the user's arms, so outcomes join to what was shown."""
        if self.log is not None:
            arms = {name: a.arm for name, a in self.assignments(str(user_id)).items()}
            self.log.event(user_id=str(user_id), item_id=str(item_id), event_type=event_type, assignments=arms, **extra)

    def drain(self, timeout: float = 10.0) -> None:
        """Waits for the queued shadow work (tests and shutdown)."""
        wait(list(self._pending), timeout=timeout)

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=True)
        if self.watcher is not None:
            self.watcher.stop()
