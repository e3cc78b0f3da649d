"""Runs the pipeline with TFX's LocalDagRunner and an ML Metadata SQLite store.

`run_local` also watches the store while the run goes, printing each
component as it starts and finishes, and returns a `RunSummary` read back from
MLMD (splits, counts, quarantined rows, artifact locations).

`ParallelLocalDagRunner` is TFX's LocalDagRunner (same launcher, same MLMD
records) except that components whose inputs are ready run side by side.
TFX's own local runner runs one component at a time (its TODO b/171319478),
which leaves a core idle while a Trainer runs. The nodes in
`CHILD_PROCESS_NODES` -- those off the critical path: StatisticsGen, the
two-tower Trainer and the index, the ModelEvaluator's baselines
(BaselineEvaluator) -- run in child processes (`python -m
towerflow.pipeline.local_runner --node ...`: a fresh TensorFlow, its output on
this process's stdout), so StatisticsGen runs next to Transform and the
two-tower, the index and the baselines next to the ranker. The two-tower, the
index and its evaluation share one child process (`CHILD_CHAINS`), each of
the others has its own. Every other node
runs in this process, one at a time, in the pipeline's (topological) order,
as before. `TOWERFLOW_PARALLEL_NODES=0` in the environment restores TFX's
sequential runner.

Large data (more raw interactions than `PipelineConfig.memory_saving_above_rows`):
the nodes whose memory grows with the data (`MEMORY_HEAVY_NODES`: Ingestion,
Transform, the ranking Trainer, the ModelEvaluator) run in child processes of
their own as well, so what each one allocated goes back to the system when it
ends instead of staying in this process's heap under the next one; each pays a
child's start-up (imports) instead.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.compiler import constants
from tfx.orchestration import metadata
from tfx.orchestration.local import runner_utils
from tfx.orchestration.portable import launcher, runtime_parameter_utils
from tfx.proto.orchestration import pipeline_pb2

from towerflow.components.ingestion.splits import SPLITS
from towerflow.pipeline import mlmd
from towerflow.pipeline.config import PipelineConfig
from towerflow.pipeline.pipeline import create_pipeline

_RUNNING = metadata_store_pb2.Execution.RUNNING
# Nodes off the run's critical path (Ingestion -> Transform -> RankingTrainer -> ModelEvaluator), each run in
# a child process of its own next to it. The critical path stays in this process, which has TensorFlow
# imported already (a child pays 10+ s of imports).
CHILD_PROCESS_NODES = frozenset(
    {"StatisticsGen", "TwoTowerTrainer", "IndexBuilder", "IndexEvaluator", "BaselineEvaluator"}
)
# Priorities of the children. From Transform to the ModelEvaluator the 2 cores are busy, so priorities change
# less how much work there is than which node is left running alone at the end, leaving a core idle (a
# child's imports, the index, the baselines' Python). The ModelEvaluator needs the ranker, the two-tower ->
# index -> IndexEvaluator chain and the baselines: the chain runs at the ranker's priority (at 5 it finished
# after the ranker in a 1M run and the ModelEvaluator waited ~100 s for the index), the baselines a little
# below (at 19 they were starved and the ModelEvaluator waited 215 s for them). StatisticsGen feeds only
# ExampleValidator, nothing the models need: the lowest priority but one (at 15 it still finished before the
# ModelEvaluator started).
CHILD_NICENESS = {
    "StatisticsGen": 15,
    "BaselineEvaluator": 5,
    "TwoTowerTrainer": 0,
    "IndexBuilder": 0,
    "IndexEvaluator": 0,
}
# Child nodes that run one after another in the child process of the first (`--node` once for each): the
# two-tower, its index and the index's evaluation. One process pays TensorFlow's and TFX's imports once, and
# each node starts the moment the one before it finished (1M run r4: the index started 30 s after the
# two-tower finished and its evaluator 36 s after the index, each a child's start-up).
CHILD_CHAINS = {"TwoTowerTrainer": ("IndexBuilder", "IndexEvaluator")}
# The critical path's nodes whose memory grows with the data: on large data each runs in a child process of
# its own (not counted against `max_children`, which bounds the nodes off the critical path).
MEMORY_HEAVY_NODES = frozenset({"Ingestion", "Transform", "RankingTrainer", "ModelEvaluator"})
PARALLEL_ENV = "TOWERFLOW_PARALLEL_NODES"


def _launch(pipeline: pipeline_pb2.Pipeline, node_id: str) -> None:
    """Runs one node of a compiled pipeline with TFX's launcher (LocalDagRunner's loop body)."""
    deployment_config = runner_utils.extract_local_deployment_config(pipeline)
    connection = deployment_config.metadata_connection_config
    connection_config = getattr(connection, connection.WhichOneof("connection_config"))
    [node] = [n.pipeline_node for n in pipeline.nodes if n.pipeline_node.node_info.id == node_id]
    launcher.Launcher(
        pipeline_node=node,
        mlmd_connection=metadata.Metadata(connection_config),
        pipeline_info=pipeline.pipeline_info,
        pipeline_runtime_spec=pipeline.runtime_spec,
        executor_spec=runner_utils.extract_executor_spec(deployment_config, node_id),
        custom_driver_spec=runner_utils.extract_custom_driver_spec(deployment_config, node_id),
    ).launch()


class ParallelLocalDagRunner(tfx.orchestration.LocalDagRunner):
    """LocalDagRunner that starts every node as soon as its upstream nodes finished.

    `child_nodes` run in child processes (at most `max_children` at once; `niceness` lowers some of
    their priorities); `isolated_nodes` each in a child process of its own too, whenever ready (not
    counted against `max_children`); the rest in this process, one at a time. `chains` maps a child node
    to the child nodes that run after it in its process (each only if everything else it needs is done
    by then). A failed node stops the run once the nodes already started have finished.
    """

    def __init__(
        self, child_nodes=CHILD_PROCESS_NODES, max_children: int = 3, niceness=None, chains=None, isolated_nodes=()
    ):
        super().__init__()
        self._isolated = frozenset(isolated_nodes)
        self._child_nodes, self._max_children = frozenset(child_nodes) | self._isolated, max_children
        self._niceness = dict(CHILD_NICENESS if niceness is None else niceness)
        self._chains = dict(CHILD_CHAINS if chains is None else chains)

    def _chain(self, head: str, pending: list[str], upstream: dict[str, set[str]], done: set[str]) -> list[str]:
        """`head` and the pending child nodes chained after it whose other upstream nodes are done."""
        chain = [head]
        for node_id in self._chains.get(head, ()):
            if node_id in pending and node_id in self._child_nodes and upstream[node_id] <= done | set(chain):
                chain.append(node_id)
        return chain

    def run_with_ir(self, pipeline: pipeline_pb2.Pipeline, run_options=None) -> None:
        if run_options is not None:
            raise ValueError("ParallelLocalDagRunner runs whole pipelines only")
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: datetime.datetime.now().isoformat()}
        )
        nodes = [n.pipeline_node for n in pipeline.nodes if not n.pipeline_node.execution_options.HasField("skip")]
        order = [n.node_info.id for n in nodes]
        # upstream nodes come first in the (topological) node list; anything else is not waited for
        upstream = {
            n.node_info.id: {u for u in n.upstream_nodes if u in order[: order.index(n.node_info.id)]} for n in nodes
        }
        with tempfile.TemporaryDirectory(prefix="towerflow-ir-") as tmp:
            ir_path = os.path.join(tmp, "pipeline.pb")
            with open(ir_path, "wb") as f:
                f.write(pipeline.SerializeToString())
            self._schedule(pipeline, order, upstream, ir_path)

    def _schedule(self, pipeline, order: list[str], upstream: dict[str, set[str]], ir_path: str) -> None:
        done: set[str] = set()
        failed: dict[str, str | BaseException] = {}
        children: dict[tuple[str, ...], subprocess.Popen] = {}  # the nodes a child process runs -> it
        pending = list(order)
        try:
            self._loop(pipeline, pending, upstream, ir_path, done, failed, children)
        finally:
            for proc in children.values():  # only after an interrupt: the loop waits for its children
                proc.terminate()
                proc.wait()
        for error in failed.values():
            if isinstance(error, BaseException):
                raise error  # a node of this process: its own exception, as LocalDagRunner raises it
        if failed:
            raise RuntimeError(f"pipeline nodes failed: {failed}")

    def _loop(self, pipeline, pending, upstream, ir_path, done, failed, children) -> None:
        lock = threading.Lock()

        def tend_children() -> None:
            """Collects finished children and starts the child nodes that became ready (holding `lock`)."""
            for nodes, proc in list(children.items()):
                if proc.poll() is not None:
                    del children[nodes]
                    if proc.returncode == 0:
                        done.update(nodes)
                    else:
                        failed["+".join(nodes)] = f"exit status {proc.returncode}"
            if failed:
                pending.clear()  # start nothing new; let the running nodes finish
            ready = [n for n in pending if n in self._child_nodes and upstream[n] <= done]
            slots = self._max_children - sum(1 for nodes in children if nodes[0] not in self._isolated)
            for node_id in ready:
                if node_id not in pending:  # chained after a node started in this round
                    continue
                if node_id not in self._isolated:
                    if slots <= 0:
                        continue
                    slots -= 1
                chain = self._chain(node_id, pending, upstream, done)
                command = [sys.executable, "-m", "towerflow.pipeline.local_runner", "--ir", ir_path]
                for chained in chain:
                    command += ["--node", chained]
                    pending.remove(chained)
                increment = self._niceness.get(node_id, 0)
                children[tuple(chain)] = subprocess.Popen(
                    command, preexec_fn=functools.partial(os.nice, increment) if increment else None
                )

        while True:
            with lock:
                tend_children()
                if not (pending or children):
                    return
                local = [n for n in pending if n not in self._child_nodes and upstream[n] <= done]
                if local:
                    pending.remove(local[0])
                elif pending and not children and not failed:
                    raise RuntimeError(f"nodes {pending} wait for upstream nodes that never ran")
            if not local:
                time.sleep(0.2)
                continue
            # In this process and its main thread, as LocalDagRunner runs every node; meanwhile a thread
            # keeps starting the child nodes whose inputs become ready (e.g. the index after the two-tower).
            halt = threading.Event()

            def tend_in_background(halt=halt) -> None:
                while not halt.wait(0.5):
                    with lock:
                        tend_children()

            helper = threading.Thread(target=tend_in_background, name="tend-children", daemon=True)
            helper.start()
            try:
                _launch(pipeline, local[0])
            except Exception as error:  # re-raised by _schedule once the children finished
                outcome = error
            else:
                outcome = None
            finally:
                halt.set()
                helper.join()
            with lock:
                if outcome is None:
                    done.add(local[0])
                else:
                    failed[local[0]] = outcome


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
        if os.environ.get(PARALLEL_ENV, "1") == "0":
            runner = tfx.orchestration.LocalDagRunner()
        else:
            runner = ParallelLocalDagRunner(isolated_nodes=MEMORY_HEAVY_NODES if config.memory_saving else ())
        runner.run(pipeline)
    finally:
        if watcher:
            watcher.stop()
    return read_run_summary(config, started)


def _main(argv=None) -> int:
    """A child process of ParallelLocalDagRunner: runs nodes of a compiled pipeline, one after another."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ir", required=True, help="the compiled pipeline (pipeline_pb2.Pipeline, binary)")
    parser.add_argument("--node", required=True, action="append", help="a node to run; repeated: in this order")
    args = parser.parse_args(argv)
    pipeline = pipeline_pb2.Pipeline()
    with open(args.ir, "rb") as f:
        pipeline.ParseFromString(f.read())
    for node_id in args.node:
        _launch(pipeline, node_id)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
