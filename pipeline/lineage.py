"""Lineage of served models and pipeline runs, read from ML Metadata (MLMD).

`trace` walks MLMD events backwards from one artifact -- output artifact <-
the execution that produced it <- that execution's input artifacts, and so on
-- and returns a `Lineage` graph. The walk is generic, so components added to
the pipeline later show up without changes here; types a recsys engineer asks
about get extra facts:

  PushedModel     served name, version, destination
  ModelBlessing   blessed or not, with the metrics recorded on it
  Model           the trainer's run_fn and custom_config hyper-parameters,
                  the effective config and final losses (training_summary.json)
  TransformGraph  preprocessing_fn and the analyse/transform splits
  Examples        split strategy, fractions, time cut-offs, rows per split,
                  quarantined rows, input path and fingerprint

Start points: `find_pushed_model(store, name, version)` (the PushedModel whose
properties name that served model and version) or `find_artifact(store, uri)`.
`list_runs` summarises pipeline runs. `open_store` connects to the local
runner's SQLite file, a MySQL database or an MLMD gRPC server (Kubeflow).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from towerflow.pipeline import mlmd
from towerflow.pipeline.mlmd import connection_config, open_store  # noqa: F401 - the store a lineage reads

# Bookkeeping TFX writes on every artifact; it says nothing about lineage.
_HIDDEN_PROPERTIES = {"tfx_version", "is_external", "stats_dashboard_link", "state"}
_SPLIT_ORDER = ["train", "eval", "test"]
# Properties TFX's Evaluator writes on a ModelBlessing to name what was compared, not how well it did.
_BLESSING_REFERENCES = ("current_model", "current_model_id", "baseline_model", "baseline_model_id")
PIPELINE_RUN_CONTEXT_TYPES = ("pipeline_run", "system.PipelineRun")  # TFX local/KFP v1; KFP v2 / Vertex


# --- the lineage graph ----------------------------------------------------------------------------------------------


@dataclass
class ArtifactNode:
    """One MLMD artifact in a lineage graph."""

    id: int
    type: str
    uri: str
    state: str
    properties: dict
    producer: StepNode | None = None
    output_key: str | None = None  # the producer's output name, e.g. "model"
    reused_by: list[str] = field(default_factory=list)  # runs whose cached executions re-published it
    facts: dict = field(default_factory=dict)  # type-specific: hyperparameters, training summary, ...

    @property
    def label(self) -> str:
        made_by = f"{self.producer.component}.{self.output_key}" if self.producer else "external"
        return f"{self.type} #{self.id} ({made_by})"


@dataclass
class StepNode:
    """One MLMD execution (a component run) in a lineage graph."""

    id: int
    component: str
    type: str
    state: str
    run: str | None
    started: float
    finished: float
    properties: dict
    inputs: list[tuple[str, ArtifactNode]] = field(default_factory=list)
    outputs: list[tuple[str, int, str, str]] = field(default_factory=list)  # (key, artifact id, type, uri)


@dataclass
class Lineage:
    """Everything upstream of `root`; artifacts and executions keyed by MLMD id."""

    root: ArtifactNode
    artifacts: dict[int, ArtifactNode]
    steps: dict[int, StepNode]

    def find(self, type_name: str | None = None, component: str | None = None, key: str | None = None):
        """Artifacts of this lineage matching every given filter, e.g. find("Examples", "Ingestion")."""
        return [
            a
            for a in self.artifacts.values()
            if (type_name is None or a.type == type_name)
            and (component is None or (a.producer and a.producer.component == component))
            and (key is None or a.output_key == key)
        ]

    def step(self, component: str) -> StepNode:
        """The execution of `component` in this lineage (KeyError if it is not upstream of root)."""
        for step in self.steps.values():
            if step.component == component:
                return step
        raise KeyError(f"{component} is not upstream of {self.root.label}")

    def to_dict(self) -> dict:
        return to_dict(self)


def _artifact_props(artifact: metadata_store_pb2.Artifact) -> dict:
    return {k: v for k, v in mlmd.property_values(artifact).items() if k not in _HIDDEN_PROPERTIES}


def _read_json(path: str):
    """A small JSON file local or on a remote filesystem (gs://, s3://, hdfs://); None if unreadable."""
    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path) as f:
                return json.loads(f.read())
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except Exception:  # a missing or foreign file only means fewer facts in the report
        return None


def _event_key(event: metadata_store_pb2.Event) -> str:
    return event.path.steps[0].key if event.path.steps else ""


class _GraphBuilder:
    """Turns the upstream lineage query's answer into ArtifactNode / StepNode objects.

    The artifacts, executions and events upstream of the root come from one
    `get_lineage_subgraph` query; two more fetch every output of those
    executions (a Trainer's ModelRun sits beside the model, not upstream of it).
    """

    def __init__(self, store: metadata_store.MetadataStore, artifact_id: int):
        graph = mlmd.lineage_subgraph(store, artifact_id)
        self.raw_artifacts = {a.id: a for a in graph.artifacts}
        self.raw_executions = {e.id: e for e in graph.executions}
        self.producers: dict[int, list[tuple[int, str]]] = {}  # artifact -> (execution, output key)
        self.inputs: dict[int, list[metadata_store_pb2.Event]] = {}  # execution -> input events
        for event in graph.events:
            if event.type in mlmd.OUTPUT_EVENTS:
                self.producers.setdefault(event.artifact_id, []).append((event.execution_id, _event_key(event)))
            elif event.type in mlmd.INPUT_EVENTS:
                self.inputs.setdefault(event.execution_id, []).append(event)
        self.outputs: dict[int, list[tuple[str, int, str, str]]] = {}
        output_events = [
            e for e in store.get_events_by_execution_ids(list(self.raw_executions)) if e.type in mlmd.OUTPUT_EVENTS
        ]
        output_artifacts = {a.id: a for a in store.get_artifacts_by_id(list({e.artifact_id for e in output_events}))}
        for event in output_events:
            artifact = output_artifacts[event.artifact_id]
            self.outputs.setdefault(event.execution_id, []).append(
                (_event_key(event), artifact.id, artifact.type, artifact.uri)
            )
        self.nodes = mlmd.execution_nodes(store)
        self._runs: dict[int, str] = {}
        for type_name in PIPELINE_RUN_CONTEXT_TYPES:
            for context in store.get_contexts_by_type(type_name):
                for execution in store.get_executions_by_context(context.id):
                    self._runs[execution.id] = context.name
        self.artifacts: dict[int, ArtifactNode] = {}
        self.steps: dict[int, StepNode] = {}

    def component(self, execution: metadata_store_pb2.Execution) -> str:
        if execution.id in self.nodes:
            return self.nodes[execution.id]
        task = execution.custom_properties.get("task_name")  # KFP v2 launcher executions
        return task.string_value if task else (execution.name or execution.type)

    def artifact(self, artifact_id: int) -> ArtifactNode:
        if artifact_id in self.artifacts:
            return self.artifacts[artifact_id]
        artifact = self.raw_artifacts[artifact_id]
        node = ArtifactNode(
            id=artifact.id,
            type=artifact.type,
            uri=artifact.uri,
            state=mlmd.ARTIFACT_STATES.get(artifact.state, str(artifact.state)),
            properties=_artifact_props(artifact),
        )
        self.artifacts[artifact_id] = node
        keys = dict(self.producers.get(artifact_id, []))
        if keys:
            executions = [self.raw_executions[e] for e in keys]
            # A cached execution re-publishes the artifact it reused: the producer is the one that computed it.
            producer = min(
                executions, key=lambda e: (e.last_known_state != metadata_store_pb2.Execution.COMPLETE, e.id)
            )
            node.output_key = keys[producer.id]
            node.reused_by = sorted(
                {self._runs.get(e.id, str(e.id)) for e in executions if e.id != producer.id}, key=str
            )
            node.producer = self.step(producer)
        return node

    def step(self, execution: metadata_store_pb2.Execution) -> StepNode:
        if execution.id in self.steps:
            return self.steps[execution.id]
        step = StepNode(
            id=execution.id,
            component=self.component(execution),
            type=execution.type,
            state=mlmd.state_name(execution),
            run=self._runs.get(execution.id),
            started=execution.create_time_since_epoch / 1000.0,
            finished=execution.last_update_time_since_epoch / 1000.0,
            properties=mlmd.property_values(execution),
            outputs=sorted(self.outputs.get(execution.id, []), key=lambda o: o[1]),
        )
        self.steps[execution.id] = step
        # Newest input first: the main chain (model <- transformed examples <- examples) reads top-down.
        for event in sorted(self.inputs.get(execution.id, []), key=lambda e: -e.artifact_id):
            step.inputs.append((_event_key(event), self.artifact(event.artifact_id)))
        return step


def _describe(node: ArtifactNode) -> None:
    """Adds the type-specific facts a reader of a lineage report looks for."""
    step, props = node.producer, node.properties
    if node.type == "Model" and step:
        node.facts["run_fn"] = step.properties.get("run_fn")
        node.facts["hyperparameters"] = step.properties.get("custom_config") or {}
        for _, _, type_name, uri in step.outputs:
            if type_name == "ModelRun":
                summary = _read_json(os.path.join(uri, "training_summary.json"))
                if summary:
                    node.facts["effective_config"] = summary.get("config", {})
                    history = summary.get("history", {})
                    node.facts["final_losses"] = {
                        k: v[-1] for k, v in history.items() if v and "loss" in k and "regularization" not in k
                    }
                    node.facts["epochs_run"] = max((len(v) for v in history.values()), default=0)
    elif node.type == "TransformGraph" and step:
        node.facts["preprocessing_fn"] = step.properties.get("preprocessing_fn") or step.properties.get("module_file")
        node.facts["splits_config"] = step.properties.get("splits_config")
    elif node.type == "PushedModel":
        destination = props.get("pushed_destination", "")
        node.facts["model_name"] = _pushed_name(props)
        node.facts["version"] = _pushed_version(props)
        node.facts["destination"] = destination
        if props.get("pushed_by"):
            node.facts["pushed_by"] = props["pushed_by"]
        if props.get("blessing_ignored"):
            node.facts["blessing_ignored"] = props.get("not_blessed_reason") or True
    elif node.type == "ModelBlessing":
        node.facts["blessed"] = bool(props.get("blessed"))
        node.facts["compared"] = {k: props[k] for k in _BLESSING_REFERENCES if k in props}
        metrics = dict(props.get("metrics") or {}) if isinstance(props.get("metrics"), dict) else {}
        metrics.update(
            (k, v)
            for k, v in props.items()
            if k not in ("blessed", "metrics", *_BLESSING_REFERENCES)
            and not isinstance(v, bool)
            and isinstance(v, int | float | dict)
        )
        node.facts["metrics"] = metrics
        node.facts["notes"] = {
            k: v for k, v in props.items() if isinstance(v, str | list) and k not in ("metrics", *_BLESSING_REFERENCES)
        }
    elif node.type == "Examples" and "split_strategy" in props:
        node.facts["split"] = {
            "strategy": props.get("split_strategy"),
            "fractions": props.get("split_fractions"),
            "cutoffs": props.get("split_cutoffs"),
            "leave_last_n": props.get("leave_last_n"),
        }
        node.facts["split_counts"] = props.get("split_counts", {})
        node.facts["quarantined_rows"] = props.get("malformed_by_table", {})
        node.facts["input_path"] = props.get("input_path")
        node.facts["input_fingerprint"] = props.get("input_fingerprint")


def trace(store: metadata_store.MetadataStore, artifact_id: int) -> Lineage:
    """The lineage graph upstream of one artifact."""
    builder = _GraphBuilder(store, artifact_id)
    if artifact_id not in builder.raw_artifacts:
        raise ValueError(f"no artifact #{artifact_id} in this ML Metadata store")
    root = builder.artifact(artifact_id)
    for node in builder.artifacts.values():
        _describe(node)
    return Lineage(root=root, artifacts=builder.artifacts, steps=builder.steps)


# --- finding the start point ----------------------------------------------------------------------------------------


def _pushed_name(props: dict) -> str:
    for key in ("model_name", "served_model_name", "serving_model_name"):
        if props.get(key):
            return str(props[key])
    # TF Serving layout: <serving_root>/<model_name>/<version>
    return os.path.basename(os.path.dirname(str(props.get("pushed_destination", "")).rstrip("/")))


def _pushed_version(props: dict) -> str:
    if props.get("pushed_version") not in (None, ""):
        return str(props["pushed_version"])
    return os.path.basename(str(props.get("pushed_destination", "")).rstrip("/"))


@dataclass
class PushedModel:
    name: str
    version: str
    destination: str
    artifact_id: int
    pushed_at: float


def pushed_models(store: metadata_store.MetadataStore) -> list[PushedModel]:
    """Every model version a Pusher has pushed, oldest first."""
    found = []
    for artifact in store.get_artifacts_by_type("PushedModel"):
        props = mlmd.property_values(artifact)
        if props.get("pushed", 1) in (0, False):  # the Pusher records not-blessed models as not pushed
            continue
        found.append(
            PushedModel(
                name=_pushed_name(props),
                version=_pushed_version(props),
                destination=str(props.get("pushed_destination", "")),
                artifact_id=artifact.id,
                pushed_at=artifact.create_time_since_epoch / 1000.0,
            )
        )
    return sorted(found, key=lambda p: p.artifact_id)


def find_pushed_model(store: metadata_store.MetadataStore, model_name: str, version: str | int | None = None) -> int:
    """Artifact id of the PushedModel for served model `model_name` at `version` (None: the newest)."""
    pushed = pushed_models(store)
    by_name = [p for p in pushed if p.name == model_name]
    if not by_name:
        names = sorted({p.name for p in pushed})
        known = f"served models in this store: {', '.join(names)}" if names else "this store has no pushed models"
        raise ValueError(f"no pushed model named {model_name!r}; {known}")
    if version is None:
        return by_name[-1].artifact_id
    matches = [p for p in by_name if p.version == str(version)]
    if not matches:
        versions = ", ".join(sorted({p.version for p in by_name}, key=lambda v: (len(v), v)))
        raise ValueError(f"model {model_name!r} has no pushed version {version}; pushed versions: {versions}")
    return matches[-1].artifact_id


def find_artifact(store: metadata_store.MetadataStore, uri: str) -> int:
    """Artifact id for a URI: an artifact's own URI, a path inside one, or a pushed destination."""
    wanted = uri.rstrip("/")
    if "://" not in wanted:
        wanted = os.path.abspath(wanted)
    exact = [a for a in store.get_artifacts_by_uri(wanted)] + [a for a in store.get_artifacts_by_uri(wanted + "/")]
    if exact:
        return max(exact, key=lambda a: a.id).id
    best = None
    for artifact in store.get_artifacts():
        own = artifact.uri.rstrip("/")
        if artifact.type == "PushedModel":
            destination = str(mlmd.property_values(artifact).get("pushed_destination", "")).rstrip("/")
            if destination and (wanted == destination or wanted.startswith(destination + "/")):
                return artifact.id
        if own and wanted.startswith(own + "/") and (best is None or len(own) > len(best.uri.rstrip("/"))):
            best = artifact  # e.g. <model uri>/Format-Serving
    if best is None:
        raise ValueError(f"no artifact in this ML Metadata store has URI {uri!r} (or contains it)")
    return best.id


# --- rendering ------------------------------------------------------------------------------------------------------


def _short(value, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cutoff(value) -> str:
    if isinstance(value, int | float) and 1e8 < value < 1e11:  # epoch seconds
        return f"{value} ({datetime.fromtimestamp(value, tz=UTC).strftime('%Y-%m-%d %H:%M:%S')})"
    return str(value)


def fact_lines(node: ArtifactNode) -> list[str]:
    """Readable lines of what matters about one artifact."""
    f, lines = node.facts, []
    if node.type == "PushedModel":
        lines.append(f"served as {f['model_name']!r} version {f['version']} at {f['destination']}")
        if f.get("pushed_by"):
            lines.append(f"pushed by {f['pushed_by']}")
        if f.get("blessing_ignored"):
            lines.append(f"PUSHED WITHOUT BLESSING: {f['blessing_ignored']}")
    elif node.type == "ModelBlessing":
        lines.append("BLESSED" if f["blessed"] else "NOT BLESSED")
        lines += [f"{k}: {_short(v)}" for k, v in sorted(f["metrics"].items())]
        lines += [f"{k}: {_short(v)}" for k, v in sorted({**f["notes"], **f["compared"]}.items())]
    elif node.type == "Model" and "hyperparameters" in f:
        lines.append(f"run_fn: {f['run_fn']}")
        lines.append(f"custom_config: {_short(f['hyperparameters'])}")
        if f.get("effective_config"):
            lines.append(f"effective config: {_short(f['effective_config'], 400)}")
        if f.get("final_losses"):
            losses = ", ".join(f"{k} {v:.4g}" for k, v in sorted(f["final_losses"].items()))
            lines.append(f"after {f['epochs_run']} epochs: {losses}")
    elif node.type == "TransformGraph" and f:
        lines.append(f"preprocessing_fn: {f['preprocessing_fn']}")
        if f.get("splits_config"):
            lines.append(f"splits: {_short(f['splits_config'])}")
    elif node.type == "Examples" and "split" in f:
        split = f["split"]
        lines.append(f"split: {split['strategy']}, fractions {split['fractions']}")
        if split.get("cutoffs"):
            lines.append("time cut-offs: " + ", ".join(_cutoff(c) for c in split["cutoffs"]))
        counts = f["split_counts"]
        order = sorted(counts, key=lambda k: (_SPLIT_ORDER.index(k) if k in _SPLIT_ORDER else len(_SPLIT_ORDER), k))
        lines.append("rows: " + ", ".join(f"{k} {counts[k]:,}" for k in order))
        bad = f["quarantined_rows"]
        lines.append(f"quarantined rows: {sum(bad.values()):,}" + (f" {bad}" if any(bad.values()) else ""))
        lines.append(f"input: {f['input_path']} (fingerprint {f['input_fingerprint']})")
    elif node.type == "Examples" and node.properties.get("split_names"):
        lines.append(f"splits: {node.properties['split_names']}")
    if node.reused_by:
        runs = node.reused_by
        lines.append(f"reused from cache by {len(runs)} later run(s), the last {runs[-1]}")
    return lines


def _step_lines(step: StepNode) -> list[str]:
    when = f"{_when(step.started)}, {step.finished - step.started:.0f}s"
    return [f"made by {step.component} (execution #{step.id}, {step.state}, {when}, run {step.run or '?'})"]


def format_tree(lineage: Lineage) -> str:
    """The lineage as an indented tree, root first; an artifact reached twice is shown once."""
    lines: list[str] = []
    seen_artifacts: set[int] = set()
    seen_steps: set[int] = set()

    def artifact(node: ArtifactNode, prefix: str, connector: str, child_prefix: str, key: str | None) -> None:
        head = f"{key}: " if key else ""
        if node.id in seen_artifacts:
            lines.append(f"{prefix}{connector}{head}{node.label} (shown above)")
            return
        seen_artifacts.add(node.id)
        lines.append(f"{prefix}{connector}{head}{node.label}  {node.uri}")
        bar = "│ " if node.producer else "  "
        lines.extend(f"{child_prefix}{bar}   {line}" for line in fact_lines(node))
        if node.producer:
            step(node.producer, child_prefix)

    def step(node: StepNode, prefix: str) -> None:
        if node.id in seen_steps:
            lines.append(f"{prefix}└─ made by {node.component} (execution #{node.id}, shown above)")
            return
        seen_steps.add(node.id)
        lines.append(f"{prefix}└─ {_step_lines(node)[0]}")
        inner = prefix + "   "
        for i, (key, child) in enumerate(node.inputs):
            last = i == len(node.inputs) - 1
            artifact(child, inner, "└─ " if last else "├─ ", inner + ("   " if last else "│  "), key)

    artifact(lineage.root, "", "", "", None)
    return "\n".join(lines)


def to_dict(lineage: Lineage) -> dict:
    """JSON-ready graph: artifacts and executions as nodes, events as edges."""
    artifacts = [
        {
            "id": a.id,
            "type": a.type,
            "uri": a.uri,
            "state": a.state,
            "producer": a.producer.id if a.producer else None,
            "output_key": a.output_key,
            "properties": a.properties,
            "facts": a.facts,
            "reused_by_runs": a.reused_by,
        }
        for a in sorted(lineage.artifacts.values(), key=lambda a: a.id)
    ]
    executions = [
        {
            "id": s.id,
            "component": s.component,
            "type": s.type,
            "state": s.state,
            "run": s.run,
            "started": s.started,
            "finished": s.finished,
            "properties": s.properties,
            "inputs": {key: a.id for key, a in s.inputs},
        }
        for s in sorted(lineage.steps.values(), key=lambda s: s.id)
    ]
    edges = [
        {"from": f"artifact:{a.id}", "to": f"execution:{s.id}", "key": k}
        for s in lineage.steps.values()
        for k, a in s.inputs
    ]
    edges += [
        {"from": f"execution:{a.producer.id}", "to": f"artifact:{a.id}", "key": a.output_key}
        for a in lineage.artifacts.values()
        if a.producer
    ]
    return {"root": lineage.root.id, "artifacts": artifacts, "executions": executions, "edges": edges}


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def format_dot(lineage: Lineage) -> str:
    """Graphviz DOT: artifacts as notes, executions as boxes, data flowing top to bottom."""
    out = ["digraph lineage {", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];']
    for a in sorted(lineage.artifacts.values(), key=lambda a: a.id):
        label = "\\n".join(_dot_escape(x) for x in [a.label, *fact_lines(a)[:6]])
        style = ', style="filled,bold", fillcolor="#fff2cc"' if a.id == lineage.root.id else ""
        out.append(f'  "artifact:{a.id}" [shape=note, label="{label}"{style}];')
    for s in sorted(lineage.steps.values(), key=lambda s: s.id):
        label = _dot_escape(f"{s.component}\\nexecution #{s.id} ({s.state})")
        color = "#f4cccc" if s.state == "failed" else "#d9ead3"
        out.append(f'  "execution:{s.id}" [shape=box, style="rounded,filled", fillcolor="{color}", label="{label}"];')
    for edge in to_dict(lineage)["edges"]:
        # rankdir=BT with edges pointing downstream draws upstream data at the bottom, like the tree.
        out.append(f'  "{edge["to"]}" -> "{edge["from"]}" [dir=back, label="{_dot_escape(edge["key"] or "")}"];')
    out.append("}")
    return "\n".join(out)


def format_html(lineage: Lineage) -> str:
    """A self-contained page: the lineage as nested collapsible sections with every property."""

    def table(values: dict) -> str:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(_short(v, 2000))}</code></td></tr>"
            for k, v in sorted(values.items())
        )
        return f"<table>{rows}</table>" if rows else ""

    seen: set[int] = set()

    def artifact(node: ArtifactNode, key: str | None) -> str:
        head = html.escape(f"{key}: " if key else "") + f"<b>{html.escape(node.label)}</b>"
        if node.id in seen:
            return f"<li>{head} <i>(shown above)</i></li>"
        seen.add(node.id)
        facts = "".join(f"<li>{html.escape(line)}</li>" for line in fact_lines(node))
        body = f"<div class=uri>{html.escape(node.uri)}</div><ul class=facts>{facts}</ul>"
        body += f"<details><summary>all properties</summary>{table(node.properties)}</details>"
        if node.producer:
            s = node.producer
            inputs = "".join(artifact(child, k) for k, child in s.inputs)
            body += (
                f"<details open><summary class=step>{html.escape(_step_lines(s)[0])}</summary>"
                f"<details><summary>execution properties</summary>{table(s.properties)}</details>"
                f"<ul>{inputs}</ul></details>"
            )
        return f"<li><details open><summary>{head}</summary>{body}</details></li>"

    style = (
        "body{font-family:sans-serif;font-size:14px} ul{list-style:none;border-left:1px solid #ccc;padding-left:1.2em}"
        " .uri{color:#666;font-family:monospace} .step{color:#274e13} .facts li{margin:2px 0}"
        " table{border-collapse:collapse;margin:4px 0} th,td{border:1px solid #ddd;padding:2px 6px;text-align:left}"
    )
    title = html.escape(f"Lineage of {lineage.root.label}")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
        f"<body><h1>{title}</h1><ul>{artifact(lineage.root, None)}</ul></body></html>\n"
    )


def render(lineage: Lineage, fmt: str = "tree") -> str:
    formats = {"tree": format_tree, "dot": format_dot, "html": format_html}
    if fmt == "json":
        return json.dumps(to_dict(lineage), indent=2, sort_keys=True, default=str)
    if fmt not in formats:
        raise ValueError(f"format must be one of tree, dot, html, json; got {fmt!r}")
    return formats[fmt](lineage)


# --- runs -----------------------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """One pipeline run and what became of each of its component executions."""

    name: str
    pipeline: str
    started: float
    finished: float
    executions: list[tuple[str, str, int]]  # (component, state, execution id)

    @property
    def outcome(self) -> str:
        states = {state for _, state, _ in self.executions}
        for bad in ("failed", "canceled", "running", "new"):
            if bad in states:
                return bad
        return "succeeded" if self.executions else "empty"


def list_runs(store: metadata_store.MetadataStore, pipeline_name: str | None = None) -> list[RunInfo]:
    """Pipeline runs, oldest first, with each execution's component and state."""
    walker_nodes = mlmd.execution_nodes(store)
    pipelines = {}
    for context in store.get_contexts_by_type("pipeline"):
        for execution in store.get_executions_by_context(context.id):
            pipelines[execution.id] = context.name
    runs = []
    for type_name in PIPELINE_RUN_CONTEXT_TYPES:
        for context in store.get_contexts_by_type(type_name):
            executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
            names = {pipelines.get(e.id) for e in executions} - {None}
            pipeline = ", ".join(sorted(names)) or context.name.split(".")[0]
            if pipeline_name and pipeline_name not in names:
                continue
            rows = []
            for e in executions:
                task = e.custom_properties.get("task_name")
                component = walker_nodes.get(e.id) or (task.string_value if task else e.name or e.type)
                rows.append((component, mlmd.state_name(e), e.id))
            started = min((e.create_time_since_epoch for e in executions), default=context.create_time_since_epoch)
            finished = max((e.last_update_time_since_epoch for e in executions), default=started)
            runs.append(RunInfo(context.name, pipeline, started / 1000.0, finished / 1000.0, rows))
    return sorted(runs, key=lambda r: r.started)


def format_runs(runs: Iterable[RunInfo], verbose: bool = True) -> str:
    runs = list(runs)
    if not runs:
        return "No pipeline runs in this store."
    lines = []
    for run in runs:
        counts: dict[str, int] = {}
        for _, state, _ in run.executions:
            counts[state] = counts.get(state, 0) + 1
        tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        lines.append(
            f"{run.name}  {run.pipeline}  {run.outcome.upper():<9} {_when(run.started)}  "
            f"{run.finished - run.started:6.0f}s  ({tally})"
        )
        if verbose:
            lines += [f"    {component:<20} {state:<9} execution #{eid}" for component, state, eid in run.executions]
    return "\n".join(lines)
