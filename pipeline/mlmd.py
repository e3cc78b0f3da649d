"""ML Metadata access for towerflow: connecting, one property decoder, one state vocabulary, one "newest
artifact" lookup and one lineage query.

Connections come from TFX's own helpers (`tfx.orchestration.metadata`), so the
local runner, the CLI and lineage open the store exactly as TFX does; upstream
lineage comes from ml_metadata's `get_lineage_subgraph` in one call instead of
an event walk. Everything that reads MLMD in towerflow goes through here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from google.protobuf import json_format
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

_EXECUTION = metadata_store_pb2.Execution
_EVENT = metadata_store_pb2.Event
OUTPUT_EVENTS = (_EVENT.OUTPUT, _EVENT.DECLARED_OUTPUT)
INPUT_EVENTS = (_EVENT.INPUT, _EVENT.DECLARED_INPUT)

# The one vocabulary for execution states: the runner's progress lines, `towerflow runs` and lineage use it.
EXECUTION_STATES = {
    _EXECUTION.UNKNOWN: "unknown",
    _EXECUTION.NEW: "new",
    _EXECUTION.RUNNING: "running",
    _EXECUTION.COMPLETE: "complete",
    _EXECUTION.FAILED: "failed",
    _EXECUTION.CACHED: "cached",
    _EXECUTION.CANCELED: "canceled",
}
ARTIFACT_STATES = {value: name.lower() for name, value in metadata_store_pb2.Artifact.State.items()}
# How deep an upstream lineage query goes: every hop is artifact -> execution or back; the pipeline is ~12 deep.
LINEAGE_MAX_HOPS = 100


def state_name(execution: metadata_store_pb2.Execution) -> str:
    return EXECUTION_STATES.get(execution.last_known_state, str(execution.last_known_state))


# --- connecting -----------------------------------------------------------------------------------------------------


def connection_config(
    metadata_path: str | None = None,
    *,
    mysql_host: str | None = None,
    mysql_port: int = 3306,
    mysql_database: str | None = None,
    mysql_user: str | None = None,
    mysql_password: str | None = None,
    grpc_host: str | None = None,
    grpc_port: int = 8080,
    read_only: bool = False,
):
    """ConnectionConfig (SQLite or MySQL, from TFX's helpers) or MetadataStoreClientConfig (gRPC).

    Exactly one of `metadata_path`, `mysql_host`, `grpc_host` is given. The
    MySQL password, if any, should come from the environment, not a flag. A
    read-only SQLite store must exist; a writable one is created when missing.
    """
    from tfx.orchestration import metadata

    chosen = [name for name, value in (("sqlite", metadata_path), ("mysql", mysql_host), ("grpc", grpc_host)) if value]
    if len(chosen) != 1:
        raise ValueError(f"give exactly one MLMD store (SQLite path, MySQL host or gRPC host), got {chosen or 'none'}")
    if grpc_host:
        return metadata_store_pb2.MetadataStoreClientConfig(host=grpc_host, port=grpc_port)
    if mysql_host:
        if not mysql_database:
            raise ValueError("a MySQL MLMD store needs a database name (--mysql-database)")
        return metadata.mysql_metadata_connection_config(
            host=mysql_host,
            port=mysql_port,
            database=mysql_database,
            username=mysql_user or "root",
            password=mysql_password or "",
        )
    if read_only and not os.path.isfile(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}; run `towerflow run` first")
    Path(metadata_path).parent.mkdir(parents=True, exist_ok=True)
    config = metadata.sqlite_metadata_connection_config(metadata_path)
    if read_only:
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return config


def open_store(metadata_path: str | None = None, **kwargs) -> metadata_store.MetadataStore:
    """An MLMD store; arguments as for `connection_config` (read-only unless read_only=False is passed)."""
    kwargs.setdefault("read_only", True)
    return metadata_store.MetadataStore(connection_config(metadata_path, **kwargs))


# --- decoding -------------------------------------------------------------------------------------------------------


def _plain(value):
    """Struct numbers come back as floats; integral ones go back to ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def decode_value(value: metadata_store_pb2.Value):
    """One MLMD property value as plain Python: TFX's JSON strings and structs decoded."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "struct_value":
        decoded = json_format.MessageToDict(value.struct_value)
        # TFX wraps non-dict JSON values as {"__value__": value}
        return _plain(decoded["__value__"] if set(decoded) == {"__value__"} else decoded)
    if kind == "proto_value":
        return str(value.proto_value)
    out = getattr(value, kind)
    # TFX stores dict/list execution properties (custom_config, splits_config, ...) as JSON strings.
    if isinstance(out, str) and out[:1] in "{[":
        try:
            return json.loads(out)
        except ValueError:
            pass
    return out


def property_values(message) -> dict:
    """Properties and custom properties of an MLMD artifact or execution, decoded; custom ones win."""
    out = {key: decode_value(value) for key, value in message.properties.items()}
    out.update((key, decode_value(value)) for key, value in message.custom_properties.items())
    return out


# --- finding things -------------------------------------------------------------------------------------------------


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


def newest_outputs(
    store: metadata_store.MetadataStore, since: float | None = None
) -> dict[str, metadata_store_pb2.Artifact]:
    """ "Node.output" -> the newest LIVE artifact each node output has published (optionally: by
    executions created at or after `since`, epoch seconds). The one "newest artifact" lookup."""
    nodes = execution_nodes(store)
    if since is not None:
        recent = {e.id for e in store.get_executions_by_id(list(nodes)) if e.create_time_since_epoch >= since * 1000}
        nodes = {k: v for k, v in nodes.items() if k in recent}
    newest: dict[str, int] = {}
    for event in store.get_events_by_execution_ids(list(nodes)):
        if event.type != _EVENT.OUTPUT or not event.path.steps:
            continue
        key = f"{nodes[event.execution_id]}.{event.path.steps[0].key}"
        newest[key] = max(newest.get(key, 0), event.artifact_id)
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list(newest.values()))}
    return {
        key: artifacts[a]
        for key, a in sorted(newest.items())
        if a in artifacts and artifacts[a].state == metadata_store_pb2.Artifact.LIVE
    }


def latest_artifacts(metadata_path: str) -> dict[str, str]:
    """ "Node.output" -> URI of the newest artifact each node output has published, in a SQLite store."""
    return {key: artifact.uri for key, artifact in newest_outputs(open_store(metadata_path)).items()}


def newest_executions(store: metadata_store.MetadataStore, since: float | None = None) -> dict[str, object]:
    """Node -> its newest execution (created at or after `since`, epoch seconds, when given)."""
    nodes = execution_nodes(store)
    newest: dict[str, metadata_store_pb2.Execution] = {}
    for execution in sorted(store.get_executions_by_id(list(nodes)), key=lambda e: e.id):
        if since is None or execution.create_time_since_epoch >= (since - 1) * 1000:
            newest[nodes[execution.id]] = execution
    return newest


def execution_parameters(metadata_path: str, node: str) -> dict:
    """The parameters (exec properties) the newest execution of `node` ran with."""
    execution = newest_executions(open_store(metadata_path)).get(node)
    if execution is None:
        raise ValueError(f"no execution of {node!r} recorded in {metadata_path}")
    return property_values(execution)


def lineage_subgraph(
    store: metadata_store.MetadataStore, artifact_id: int, *, downstream: bool = False, max_hops: int = LINEAGE_MAX_HOPS
) -> metadata_store_pb2.LineageGraph:
    """Every artifact, execution and event upstream (or downstream) of one artifact, in one
    `get_lineage_subgraph` query."""
    query = metadata_store_pb2.LineageSubgraphQueryOptions
    options = query(
        starting_artifacts=query.StartingNodes(filter_query=f"id = {int(artifact_id)}"),
        max_num_hops=max_hops,
        direction=query.DOWNSTREAM if downstream else query.UPSTREAM,
    )
    return store.get_lineage_subgraph(options, ["artifacts", "executions", "events"])


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
