"""Runs the pipeline with TFX's LocalDagRunner and an ML Metadata SQLite store.

`run_local` also watches the store while the run goes, printing each
component as it starts and finishes, and returns a `RunSummary` read back from
MLMD (splits, counts, quarantined rows, artifact locations).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from towerflow.components.ingestion.splits import SPLITS
from towerflow.pipeline.config import PipelineConfig
from towerflow.pipeline.mlmd import (  # noqa: F401 - re-exported for callers of the runner
    artifact_properties,
    execution_nodes,
    latest_artifacts,
    read_anomalies,
    sqlite_connection,
)
from towerflow.pipeline.pipeline import create_pipeline

_STATE_NAMES = {
    metadata_store_pb2.Execution.NEW: "new",
    metadata_store_pb2.Execution.RUNNING: "running",
    metadata_store_pb2.Execution.COMPLETE: "done",
    metadata_store_pb2.Execution.FAILED: "FAILED",
    metadata_store_pb2.Execution.CACHED: "cached",
    metadata_store_pb2.Execution.CANCELED: "canceled",
}


@dataclass
class RunSummary:
    """What a run produced, read back from MLMD."""

    pipeline_root: str
    metadata_path: str
    seconds: float
    executions: list[tuple[str, str]] = field(default_factory=list)  # (component, state)
    artifacts: dict[str, str] = field(default_factory=dict)  # "Component.output" -> uri
    examples_properties: dict = field(default_factory=dict)
    anomalies: dict[str, list[str]] = field(default_factory=dict)  # split -> "feature: description"

    def format(self) -> str:
        lines = [f"Pipeline run finished in {self.seconds:.1f}s"]
        lines += [f"  {name:<20} {state}" for name, state in self.executions]
        props = self.examples_properties
        if props:
            counts = props.get("split_counts", {})
            lines.append(
                "Splits ({}): {}".format(
                    props.get("split_strategy"), ", ".join(f"{k} {counts[k]:,}" for k in SPLITS if k in counts)
                )
            )
            if props.get("split_cutoffs"):
                lines.append(f"  time cut-offs: {props['split_cutoffs']}")
            bad = props.get("malformed_by_table", {})
            lines.append(
                f"Users {props.get('num_users', 0):,}, items {props.get('num_items', 0):,}, "
                f"quarantined rows {sum(bad.values()):,} {dict(bad) if bad else ''}".rstrip()
            )
        if "ExampleValidator.anomalies" in self.artifacts:
            found = {split: issues for split, issues in self.anomalies.items() if issues}
            lines.append(f"Schema anomalies: {found}" if found else "Schema anomalies: none")
        lines.append("Artifacts:")
        lines += [f"  {key:<32} {uri}" for key, uri in sorted(self.artifacts.items())]
        lines.append(f"ML Metadata store: {self.metadata_path}")
        return "\n".join(lines)


def _executions_since(store: metadata_store.MetadataStore, started: float):
    """(node, execution) of every execution created since `started`, oldest first."""
    nodes = execution_nodes(store)
    executions = [e for e in store.get_executions() if e.create_time_since_epoch / 1000.0 >= started - 1]
    return [(nodes.get(e.id, e.name or str(e.id)), e) for e in sorted(executions, key=lambda e: e.id)]


def _latest_executions(store: metadata_store.MetadataStore, started: float) -> dict[str, int]:
    """Component id -> state of its newest execution created since the run started."""
    return {node: execution.last_known_state for node, execution in _executions_since(store, started)}


class _ProgressWatcher(threading.Thread):
    """Polls MLMD and reports component state changes; read-only, so it never blocks the run."""

    def __init__(self, metadata_path: str, started: float, report: Callable[[str], None], interval: float = 1.0):
        super().__init__(daemon=True)
        self._path, self._run_started, self._report, self._interval = metadata_path, started, report, interval
        self._halt = threading.Event()
        self._seen: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def poll(self) -> None:
        try:
            store = metadata_store.MetadataStore(sqlite_connection(self._path))
            states = _latest_executions(store, self._run_started)
        except Exception:  # the store may not exist yet or be mid-write; try again next tick
            return
        for name, state in states.items():
            if self._seen.get(name) == state:
                continue
            now = time.time()
            self._since.setdefault(name, now)
            took = f" ({now - self._since[name]:.1f}s)" if state != metadata_store_pb2.Execution.RUNNING else ""
            self._report(f"[{now - self._run_started:7.1f}s] {name:<20} {_STATE_NAMES.get(state, state)}{took}")
            self._seen[name] = state

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.poll()


def read_run_summary(config: PipelineConfig, started: float) -> RunSummary:
    store = metadata_store.MetadataStore(sqlite_connection(config.metadata_path))
    summary = RunSummary(config.pipeline_root, config.metadata_path, time.time() - started)
    states = _latest_executions(store, started)
    summary.executions = [(name, _STATE_NAMES.get(state, str(state))) for name, state in states.items()]
    for node, execution in _executions_since(store, started):
        for event in store.get_events_by_execution_ids([execution.id]):
            if event.type != metadata_store_pb2.Event.OUTPUT:
                continue
            [artifact] = store.get_artifacts_by_id([event.artifact_id])
            key = event.path.steps[0].key if event.path.steps else str(artifact.id)
            summary.artifacts[f"{node}.{key}"] = artifact.uri
            if node == "Ingestion" and key == "examples":
                summary.examples_properties = artifact_properties(artifact)
            if node == "ExampleValidator" and key == "anomalies":
                summary.anomalies = read_anomalies(artifact.uri)
    return summary


def run_local(config: PipelineConfig, report: Callable[[str], None] | None = print) -> RunSummary:
    """Runs the whole pipeline locally; raises if a component fails."""
    pipeline = create_pipeline(config, metadata_connection_config=sqlite_connection(config.metadata_path))
    started = time.time()
    watcher = _ProgressWatcher(config.metadata_path, started, report) if report else None
    if watcher:
        watcher.start()
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        if watcher:
            watcher.stop()
    return read_run_summary(config, started)
