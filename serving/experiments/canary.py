"""The canary watcher: compares the canary with the stable version on live traffic and rolls it back.

Every served request is observed under the label that served it (`stable` or
`canary`): its latency, whether it failed (an exception or a response with
`fallback` set: the user did not get what the version would have given), and
the scores of the listed items. Every `check_interval_seconds` the watcher
looks at the last `window_seconds` and, once both versions have
`min_requests`, rolls the canary back when any of these passes its threshold:

  canary error rate - stable error rate        > max_error_rate_increase
  canary latency p99 / stable latency p99      > max_p99_ratio
  PSI(canary scores vs the offline reference)  > max_psi

Rolling back is `model_repository.rollback(serving_root, model, to=<stable>)`
for every configured model that has a canary label: the stable version becomes
the only one served and the canary label goes. The decision -- which
versions, why, the window's numbers -- is recorded in ML Metadata as a
`towerflow.CanaryRollback` execution whose inputs are the canary's
PushedModel artifacts (when the store has them), so `towerflow lineage` of
that version shows why it left.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from towerflow.components.pusher import model_repository
from towerflow.serving.experiments.config import CANARY, STABLE, CanaryConfig
from towerflow.serving.experiments.stats import ScoreReference

log = logging.getLogger(__name__)

ROLLBACK_EXECUTION_TYPE = "towerflow.CanaryRollback"


@dataclass
class WindowStats:
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    scores: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass
class Verdict:
    """One check: each version's window, the compared numbers and the reasons to roll back (if any)."""

    stable: WindowStats
    canary: WindowStats
    error_rate_increase: float | None = None
    p99_ratio: float | None = None
    psi: float | None = None
    stable_psi: float | None = None  # the same PSI for stable: how far a good version drifts, for the reader
    reasons: list[str] = field(default_factory=list)
    enough_data: bool = False

    @property
    def rollback(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        return asdict(self)


class _Window:
    """Observations of one label over the last `seconds` (pruned on every read and write)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.items: collections.deque = collections.deque()

    def add(self, now: float, latency_ms: float, error: bool, scores) -> None:
        self.items.append((now, float(latency_ms), bool(error), np.asarray(scores, dtype=float)))
        self.prune(now)

    def prune(self, now: float) -> None:
        while self.items and self.items[0][0] < now - self.seconds:
            self.items.popleft()

    def stats(self) -> tuple[WindowStats, np.ndarray]:
        if not self.items:
            return WindowStats(), np.zeros(0)
        latencies = np.array([i[1] for i in self.items])
        scores = np.concatenate([i[3] for i in self.items])
        return (
            WindowStats(
                len(self.items), sum(i[2] for i in self.items), float(np.percentile(latencies, 99)), scores.size
            ),
            scores,
        )

    def clear(self) -> None:
        self.items.clear()


class CanaryWatcher:
    """See the module docstring. `observe` is cheap and thread-safe; `check` decides; `start` runs checks."""

    def __init__(
        self,
        config: CanaryConfig,
        serving_root: str | Path,
        reference: ScoreReference | None = None,
        metadata_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_rollback: Callable[[dict], None] | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
    ):
        self.config, self.serving_root = config, Path(serving_root)
        self.reference, self.metadata_path = reference, metadata_path
        self._clock, self._on_rollback, self._on_verdict = clock, on_rollback, on_verdict
        self._windows = {STABLE: _Window(config.window_seconds), CANARY: _Window(config.window_seconds)}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rollbacks: list[dict] = []
        self.last_verdict: Verdict | None = None

    def observe(self, label: str, latency_ms: float, error: bool, scores=()) -> None:
        if label not in self._windows:
            return
        with self._lock:
            self._windows[label].add(self._clock(), latency_ms, error, scores)

    def canary_versions(self) -> dict[str, int]:
        """Model name -> canary version, for the configured models that have one now."""
        out = {}
        for model in self.config.models:
            try:
                labels = model_repository.model_state(self.serving_root, model).labels
            except ValueError:
                continue
            if CANARY in labels:
                out[model] = labels[CANARY]
        return out

    def verdict(self) -> Verdict:
        cfg = self.config
        with self._lock:
            now = self._clock()
            for window in self._windows.values():
                window.prune(now)
            stable, stable_scores = self._windows[STABLE].stats()
            canary, canary_scores = self._windows[CANARY].stats()
        result = Verdict(stable, canary)
        result.enough_data = min(stable.requests, canary.requests) >= cfg.min_requests
        if not result.enough_data:
            return result
        result.error_rate_increase = canary.error_rate - stable.error_rate
        if result.error_rate_increase > cfg.max_error_rate_increase:
            result.reasons.append(
                f"error rate {canary.error_rate:.3f} vs stable {stable.error_rate:.3f} "
                f"(+{result.error_rate_increase:.3f} > {cfg.max_error_rate_increase})"
            )
        if stable.p99_ms and canary.p99_ms is not None:
            result.p99_ratio = canary.p99_ms / stable.p99_ms
            if result.p99_ratio > cfg.max_p99_ratio:
                result.reasons.append(
                    f"latency p99 {canary.p99_ms:.1f} ms vs stable {stable.p99_ms:.1f} ms "
                    f"(x{result.p99_ratio:.2f} > x{cfg.max_p99_ratio})"
                )
        if self.reference is not None and canary_scores.size:
            result.psi = self.reference.psi(canary_scores)
            result.stable_psi = self.reference.psi(stable_scores) if stable_scores.size else None
            if result.psi > cfg.max_psi:
                result.reasons.append(
                    f"score distribution PSI {result.psi:.3f} > {cfg.max_psi} vs the offline reference"
                )
        return result

    def check(self) -> Verdict:
        """One verdict; rolls the canary back if it says so. Returns the verdict."""
        verdict = self.verdict()
        self.last_verdict = verdict
        if self._on_verdict:
            self._on_verdict(verdict)
        if verdict.rollback:
            canaries = self.canary_versions()
            if canaries:
                self._roll_back(canaries, verdict)
        return verdict

    def _roll_back(self, canaries: dict[str, int], verdict: Verdict) -> None:
        stable_versions = {}
        for model, canary_version in canaries.items():
            state = model_repository.model_state(self.serving_root, model)
            stable = state.labels.get(STABLE)
            if stable is None:
                log.error("canary %s v%s has no stable version to return to; not rolled back", model, canary_version)
                continue
            model_repository.rollback(self.serving_root, model, to=stable)
            stable_versions[model] = stable
        record = {
            "time": time.time(),
            "canary_versions": canaries,
            "stable_versions": stable_versions,
            "reasons": list(verdict.reasons),
            "verdict": verdict.to_dict(),
            "thresholds": asdict(self.config),
        }
        log.warning("canary rolled back: %s (%s)", canaries, "; ".join(verdict.reasons))
        if self.metadata_path:
            try:
                record["mlmd_execution_id"] = record_rollback(self.metadata_path, record)
            except Exception as err:  # noqa: BLE001 - the rollback has happened; a lineage write must not undo it
                log.exception("could not record the canary rollback in ML Metadata")
                record["mlmd_error"] = str(err)
        with self._lock:
            self._windows[CANARY].clear()
        self.rollbacks.append(record)
        if self._on_rollback:
            self._on_rollback(record)

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.config.check_interval_seconds):
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - the watcher must outlive any one failed check
                    log.exception("canary check failed")

        self._thread = threading.Thread(target=loop, name="canary-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)


def _connection(metadata_path: str):
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def record_rollback(metadata_path: str, record: dict) -> int:
    """Writes a `towerflow.CanaryRollback` execution (inputs: the canary's PushedModel artifacts); its id."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store.MetadataStore(_connection(metadata_path))
    execution_type = metadata_store_pb2.ExecutionType(name=ROLLBACK_EXECUTION_TYPE)
    type_id = store.put_execution_type(execution_type, can_add_fields=True)
    execution = metadata_store_pb2.Execution(type_id=type_id, last_known_state=metadata_store_pb2.Execution.COMPLETE)
    props = execution.custom_properties
    props["reason"].string_value = "; ".join(record["reasons"])
    props["canary_versions"].string_value = json.dumps(record["canary_versions"], sort_keys=True)
    props["stable_versions"].string_value = json.dumps(record["stable_versions"], sort_keys=True)
    props["verdict"].string_value = json.dumps(record["verdict"], sort_keys=True, default=str)
    props["thresholds"].string_value = json.dumps(record["thresholds"], sort_keys=True, default=str)
    props["rolled_back_at"].double_value = float(record["time"])
    pairs = []
    for artifact in _pushed_artifacts(store, record["canary_versions"]):
        event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT)
        step = event.path.steps.add()
        step.key = "canary"
        pairs.append((artifact, event))
    execution_id, _, _ = store.put_execution(execution, pairs, [])
    return int(execution_id)


def _pushed_artifacts(store, versions: dict[str, int]) -> list:
    """The PushedModel artifacts whose (model_name, pushed_version) is a rolled-back canary."""
    wanted = {(name, str(version)) for name, version in versions.items()}
    found = []
    try:
        artifacts = store.get_artifacts_by_type("PushedModel")
    except Exception:  # noqa: BLE001 - a store without pushes simply has nothing to link
        return []
    for artifact in artifacts:
        props = artifact.custom_properties
        name = props["model_name"].string_value if "model_name" in props else ""
        version = props["pushed_version"].string_value if "pushed_version" in props else ""
        if (name, version) in wanted:
            found.append(artifact)
    return found


def read_rollbacks(metadata_path: str) -> list[dict]:
    """Every recorded canary rollback, oldest first (for reports and tests)."""
    from ml_metadata import metadata_store

    store = metadata_store.MetadataStore(_connection(metadata_path))
    try:
        executions = store.get_executions_by_type(ROLLBACK_EXECUTION_TYPE)
    except Exception:  # noqa: BLE001 - no such type yet: no rollbacks
        return []
    out = []
    for execution in executions:
        props = execution.custom_properties
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids([execution.id])]
        out.append(
            {
                "id": execution.id,
                "reason": props["reason"].string_value,
                "canary_versions": json.loads(props["canary_versions"].string_value),
                "stable_versions": json.loads(props["stable_versions"].string_value),
                "verdict": json.loads(props["verdict"].string_value),
                "input_artifact_ids": inputs,
            }
        )
    return out
