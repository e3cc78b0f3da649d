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

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from towerflow.components.ingestion.splits import SPLITS
from towerflow.pipeline import mlmd
from towerflow.pipeline.config import PipelineConfig
from towerflow.pipeline.pipeline import create_pipeline

_RUNNING = metadata_store_pb2.Execution.RUNNING


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


class _ProgressWatcher(threading.Thread):
    """Polls MLMD and reports component state changes; read-only, so it never blocks the run."""

    def __init__(self, metadata_path: str, started: float, report: Callable[[str], None], interval: float = 1.0):
        super().__init__(daemon=True)
        self._path, self._run_started, self._report, self._interval = metadata_path, started, report, interval
        self._halt = threading.Event()
        self._seen: dict[str, str] = {}
        self._since: dict[str, float] = {}

    def poll(self) -> None:
        try:
            executions = mlmd.newest_executions(mlmd.open_store(self._path), since=self._run_started)
        except Exception:  # the store may not exist yet or be mid-write; try again next tick
            return
        for name, execution in executions.items():
            state = mlmd.state_name(execution)
            if self._seen.get(name) == state:
                continue
            now = time.time()
            self._since.setdefault(name, now)
            took = f" ({now - self._since[name]:.1f}s)" if execution.last_known_state != _RUNNING else ""
            self._report(f"[{now - self._run_started:7.1f}s] {name:<20} {state}{took}")
            self._seen[name] = state

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.poll()


def read_run_summary(config: PipelineConfig, started: float) -> RunSummary:
    store = mlmd.open_store(config.metadata_path)
    summary = RunSummary(config.pipeline_root, config.metadata_path, time.time() - started)
    executions = mlmd.newest_executions(store, since=started)
    summary.executions = [(name, mlmd.state_name(execution)) for name, execution in executions.items()]
    outputs = mlmd.newest_outputs(store, since=started - 1)
    summary.artifacts = {key: artifact.uri for key, artifact in outputs.items()}
    if "Ingestion.examples" in outputs:
        summary.examples_properties = mlmd.property_values(outputs["Ingestion.examples"])
    if "ExampleValidator.anomalies" in outputs:
        summary.anomalies = mlmd.read_anomalies(outputs["ExampleValidator.anomalies"].uri)
    return summary


def run_local(config: PipelineConfig, report: Callable[[str], None] | None = print) -> RunSummary:
    """Runs the whole pipeline locally; raises if a component fails."""
    pipeline = create_pipeline(config, metadata_connection_config=mlmd.connection_config(config.metadata_path))
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
