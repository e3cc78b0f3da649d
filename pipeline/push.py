"""Pushing a pipeline run's model by hand (`towerflow push --from-run`), through the pipeline's own gate.

The pipeline's pushers only push a model that every evaluator downstream of it
blessed; a push from the command line is held to the same blessings
(`REQUIRED_BLESSINGS`, which `pipeline.py` wires into the pushers too) and
carries the same extras (the ScaNN index and the evaluation's re-ranking
settings). `ignore_blessing=True` pushes anyway and says so on the record.

Either way the push is written to ML Metadata as the pipeline's pushers write
theirs: an execution that read the model and its blessings and produced a
`PushedModel`, so `towerflow lineage --model NAME --version V` traces a
hand-pushed version back to its data like any other.
"""

from __future__ import annotations

import getpass
import tempfile
import time
from dataclasses import dataclass

from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils

from towerflow.components.pusher import model_repository
from towerflow.components.pusher.executor import serving_extras, serving_model_dir, unblessed
from towerflow.pipeline import mlmd

# Served model name -> (the Trainer node and output that produce it, the evaluators whose blessing it needs).
REQUIRED_BLESSINGS = {
    "two_tower": ("TwoTowerTrainer", "model", ("IndexEvaluator", "ModelEvaluator")),
    "ranker": ("RankingTrainer", "model", ("ModelEvaluator",)),
}
PUSH_EXECUTION_TYPE = "towerflow.CommandLinePush"
PUSHED_MODEL_TYPE = "PushedModel"


@dataclass
class GatedPush:
    model_uri: str
    blessings: dict[str, str]  # evaluator -> blessing URI
    ignored: list[str]  # what was missing or not blessed, when the gate was overridden
    result: model_repository.PushResult
    pushed_model_id: int

    def format(self) -> str:
        lines = [f"Pushed {self.model_uri} as version {self.result.version} -> {self.result.path}"]
        lines += [f"  blessed by {name}: {uri}" for name, uri in sorted(self.blessings.items())]
        if self.ignored:
            lines.append(f"  PUSHED WITHOUT BLESSING (--ignore-blessing): {'; '.join(self.ignored)}")
        lines.append(f"  recorded in ML Metadata as PushedModel #{self.pushed_model_id}")
        return "\n".join(lines)


def _tfx_artifact(store, artifact: metadata_store_pb2.Artifact):
    [artifact_type] = store.get_artifact_types_by_id([artifact.type_id])
    return artifact_utils.deserialize_artifact(artifact_type, artifact)


def _downstream_blessings(store, model_id: int, evaluators) -> dict[str, metadata_store_pb2.Artifact]:
    """Evaluator node -> the newest ModelBlessing it produced from (a descendant of) the model."""
    # model -> IndexBuilder -> index -> IndexEvaluator -> blessing: four hops at most
    graph = mlmd.lineage_subgraph(store, model_id, downstream=True, max_hops=4)
    nodes = mlmd.execution_nodes(store)
    artifacts = {a.id: a for a in graph.artifacts}
    found: dict[str, metadata_store_pb2.Artifact] = {}
    for event in graph.events:
        artifact = artifacts.get(event.artifact_id)
        node = nodes.get(event.execution_id)
        if event.type not in mlmd.OUTPUT_EVENTS or node not in evaluators or artifact is None:
            continue
        if artifact.type == "ModelBlessing" and (node not in found or artifact.id > found[node].id):
            found[node] = artifact
    return found


def _record(store, model, blessings, pushed_props: dict) -> int:
    """The push as an MLMD execution: INPUT model + blessings, OUTPUT a PushedModel."""
    execution_type = store.put_execution_type(
        metadata_store_pb2.ExecutionType(name=PUSH_EXECUTION_TYPE), can_omit_fields=True
    )
    artifact_type = store.put_artifact_type(
        metadata_store_pb2.ArtifactType(name=PUSHED_MODEL_TYPE), can_omit_fields=True
    )
    execution = metadata_store_pb2.Execution(
        type_id=execution_type,
        name=f"towerflow push {pushed_props['model_name']} {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        last_known_state=metadata_store_pb2.Execution.COMPLETE,
    )
    execution.custom_properties["user"].string_value = getpass.getuser()
    pushed = metadata_store_pb2.Artifact(
        type_id=artifact_type, uri=pushed_props["pushed_destination"], state=metadata_store_pb2.Artifact.LIVE
    )
    for key, value in pushed_props.items():
        if isinstance(value, int):
            pushed.custom_properties[key].int_value = value
        else:
            pushed.custom_properties[key].string_value = str(value)

    def event(kind, key):
        out = metadata_store_pb2.Event(type=kind)
        out.path.steps.add().key = key
        return out

    pairs = [(model, event(metadata_store_pb2.Event.INPUT, "model"))]
    pairs += [(b, event(metadata_store_pb2.Event.INPUT, "blessings")) for b in blessings]
    pairs.append((pushed, event(metadata_store_pb2.Event.OUTPUT, "pushed_model")))
    _, artifact_ids, _ = store.put_execution(execution, pairs, [])
    return artifact_ids[-1]


def push_from_run(
    metadata_path: str,
    model_name: str,
    serving_root: str,
    *,
    ignore_blessing: bool = False,
    canary: bool = False,
    keep_versions: int = 2,
) -> GatedPush:
    """Pushes the newest model of `model_name`'s Trainer in a run if its evaluators blessed it."""
    if model_name not in REQUIRED_BLESSINGS:
        raise ValueError(f"no pipeline model named {model_name!r}; known: {', '.join(REQUIRED_BLESSINGS)}")
    trainer, output, evaluators = REQUIRED_BLESSINGS[model_name]
    store = mlmd.open_store(metadata_path, read_only=False)
    outputs = mlmd.newest_outputs(store)
    model = outputs.get(f"{trainer}.{output}")
    if model is None:
        raise ValueError(f"the run in {metadata_path} has no {trainer}.{output}; run the pipeline with training first")
    found = _downstream_blessings(store, model.id, evaluators)
    problems = [f"no {name} blessing of model #{model.id}" for name in evaluators if name not in found]
    problems += [
        f"{name} did not bless it ({blessing.uri})"
        for name, blessing in found.items()
        if unblessed([_tfx_artifact(store, blessing)])
    ]
    if problems and not ignore_blessing:
        raise ValueError(
            f"{model_name} model {model.uri} is not blessed ({'; '.join(problems)}); "
            "the pipeline's pusher would refuse it too. Pass --ignore-blessing to push anyway (recorded as such)."
        )
    with tempfile.TemporaryDirectory() as workdir:
        result = model_repository.push(
            serving_root,
            model_name,
            serving_model_dir(model.uri, "Format-Serving"),
            canary=canary,
            keep_versions=keep_versions,
            extras=serving_extras([_tfx_artifact(store, b) for b in found.values()], workdir),
        )
    props = {
        "pushed": 1,
        "pushed_destination": result.path,
        "pushed_version": str(result.version),
        "model_name": model_name,
        "serving_root": str(serving_root),
        "pushed_by": "towerflow push --from-run",
    }
    if problems:
        props["blessing_ignored"] = 1
        props["not_blessed_reason"] = "; ".join(problems)
    pushed_id = _record(store, model, list(found.values()), props)
    return GatedPush(
        model.uri, {k: v.uri for k, v in found.items()}, problems if ignore_blessing else [], result, pushed_id
    )
