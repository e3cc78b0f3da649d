"""Reading a towerflow ML Metadata store: which node ran what, what each output is, what its properties say.

Only ml-metadata and protobuf are imported here (no TFX), so commands that
just read the store (lineage, runs, report, evaluate) start quickly.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2


def sqlite_connection(metadata_path: str) -> metadata_store_pb2.ConnectionConfig:
    """Connection config of a local SQLite MLMD store (created when missing), as the local runner uses."""
    Path(metadata_path).parent.mkdir(parents=True, exist_ok=True)
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def execution_nodes(store: metadata_store.MetadataStore, pipeline_name: str | None = None) -> dict[int, str]:
    """Execution id -> the pipeline node (component id) it ran, from MLMD's node contexts."""
    nodes = {}
    for context in store.get_contexts_by_type("node"):
        pipeline, _, node = context.name.partition(".")
        if pipeline_name and pipeline != pipeline_name:
            continue
        for execution in store.get_executions_by_context(context.id):
            nodes[execution.id] = node
    return nodes


def latest_artifacts(metadata_path: str) -> dict[str, str]:
    """ "Node.output" -> URI of the newest artifact each node output has published."""
    if not Path(metadata_path).is_file():
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}; run `towerflow run` first")
    store = metadata_store.MetadataStore(sqlite_connection(metadata_path))
    nodes = execution_nodes(store)
    latest: dict[str, tuple[int, str]] = {}
    for event in store.get_events_by_execution_ids(list(nodes)):
        if event.type != metadata_store_pb2.Event.OUTPUT or not event.path.steps:
            continue
        key = f"{nodes[event.execution_id]}.{event.path.steps[0].key}"
        if key not in latest or event.artifact_id > latest[key][0]:
            latest[key] = (event.artifact_id, "")
    artifacts = store.get_artifacts_by_id([a for a, _ in latest.values()])
    uris = {a.id: a.uri for a in artifacts if a.state == metadata_store_pb2.Artifact.LIVE}
    return {key: uris[a] for key, (a, _) in latest.items() if a in uris}


def read_anomalies(uri: str) -> dict[str, list[str]]:
    """Split -> ["feature: description", ...] from ExampleValidator's SchemaDiff files."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for path in sorted(Path(uri).glob("Split-*/SchemaDiff.pb")):
        anomalies = anomalies_pb2.Anomalies.FromString(path.read_bytes())
        found[path.parent.name.removeprefix("Split-")] = [
            f"{feature}: {info.short_description}" for feature, info in sorted(anomalies.anomaly_info.items())
        ]
    return found


def _plain(value):
    """Struct numbers come back as floats; give integral ones back as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def artifact_properties(artifact: metadata_store_pb2.Artifact) -> dict:
    """Custom properties of an MLMD artifact as plain Python values (JSON ones decoded)."""
    out = {}
    for key, value in artifact.custom_properties.items():
        kind = value.WhichOneof("value")
        if kind == "struct_value":
            decoded = json_format.MessageToDict(value.struct_value)
            # TFX wraps non-dict JSON values as {"__value__": value}
            out[key] = _plain(decoded["__value__"] if set(decoded) == {"__value__"} else decoded)
        elif kind in ("string_value", "int_value", "double_value", "bool_value"):
            out[key] = getattr(value, kind)
    return out
