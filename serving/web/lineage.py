"""The lineage summary the page shows for each served model version, read from ML Metadata.

`LineageSummary(metadata_path, serving_root)` is the callable `create_router`
takes. For every model in the serving root and each of its labelled versions
(`stable`, `canary`) it finds the PushedModel artifact the pusher recorded
(`model_name`, `pushed_version`) and walks MLMD's events upstream to

  - the Examples the model was trained on: input path and fingerprint, the
    data window, split strategy, cut-offs and rows per split;
  - the blessings that let it through: blessed or not, reason, and the
    headline metrics recorded on them.

It uses ml_metadata directly (serving/ does not import the pipeline package)
and opens the SQLite store read-only. Results are cached per set of served
versions, so a page load costs one models.config read.
"""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path

from towerflow.components.pusher import model_repository

HEADLINE = ("hit_rate@10", "ndcg@10", "recall@100")  # the blessing metrics the page shows, per evaluated model
_MAX_HOPS = 8  # PushedModel <- Pusher <- Model <- Trainer <- Transformed examples <- Transform <- Examples


def _value(value):
    kind = value.WhichOneof("value")
    if kind == "struct_value":
        from google.protobuf import json_format

        decoded = _integral(json_format.MessageToDict(value.struct_value))
        return decoded.get("__value__", decoded) if set(decoded) == {"__value__"} else decoded
    out = getattr(value, kind) if kind else None
    if isinstance(out, float) and out.is_integer():
        return int(out)
    if isinstance(out, str) and out[:1] in "{[":
        try:
            return json.loads(out)
        except ValueError:
            pass
    return out


def _integral(value):
    """Struct numbers come back as floats; counts read better as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _props(artifact) -> dict:
    out = {k: _value(v) for k, v in artifact.properties.items()}
    out.update({k: _value(v) for k, v in artifact.custom_properties.items()})
    return out


def _when(seconds) -> str:
    return datetime.datetime.fromtimestamp(float(seconds), datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


class LineageSummary:
    """Callable: {"models": [{name, version, label, pushed, data, blessing}], "error": None}."""

    def __init__(self, metadata_path: str | Path, serving_root: str | Path, models=("two_tower", "ranker")):
        self.metadata_path, self.serving_root, self.models = str(metadata_path), Path(serving_root), tuple(models)
        self._cache: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    def served(self) -> list[tuple[str, int, str]]:
        out = []
        for model in self.models:
            try:
                state = model_repository.model_state(self.serving_root, model)
            except ValueError:
                continue
            labels = {v: k for k, v in state.labels.items()}
            for version in sorted(set(state.labels.values()) or set(state.served[-1:])):
                out.append((model, version, labels.get(version, "")))
        return out

    def __call__(self) -> dict:
        served = tuple(self.served())
        with self._lock:
            if served not in self._cache:
                self._cache = {served: self._summarise(served)}
            return self._cache[served]

    def _store(self):
        from ml_metadata import metadata_store
        from ml_metadata.proto import metadata_store_pb2

        if not Path(self.metadata_path).is_file():
            raise FileNotFoundError(f"no ML Metadata store at {self.metadata_path}")
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = self.metadata_path
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        return metadata_store.MetadataStore(config)

    def _summarise(self, served) -> dict:
        store = self._store()
        pushed = {}
        for artifact in store.get_artifacts_by_type("PushedModel"):
            props = _props(artifact)
            key = (props.get("model_name"), str(props.get("pushed_version")))
            if props.get("pushed") == 1 and (key not in pushed or artifact.id > pushed[key].id):
                pushed[key] = artifact
        models = []
        for name, version, label in served:
            entry = {"name": name, "version": version, "label": label, "pushed": None, "data": None, "blessing": None}
            artifact = pushed.get((name, str(version)))
            if artifact is not None:
                entry["pushed"] = _when(artifact.create_time_since_epoch / 1000)
                entry.update(self._upstream(store, artifact.id))
            models.append(entry)
        return {"models": models, "error": None}

    def _upstream(self, store, artifact_id: int) -> dict:
        """Breadth-first over producer executions' inputs until the Examples; blessings on the way."""
        from ml_metadata.proto import metadata_store_pb2

        output_types = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
        input_types = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
        found: dict = {"data": None, "blessing": None}
        blessings = []  # the pusher's gate: every blessing it required (index and model evaluation)
        frontier, seen = [artifact_id], {artifact_id}
        for _ in range(_MAX_HOPS):
            producers = {e.execution_id for e in store.get_events_by_artifact_ids(frontier) if e.type in output_types}
            if not producers:
                break
            inputs = [
                e.artifact_id
                for e in store.get_events_by_execution_ids(list(producers))
                if e.type in input_types and e.artifact_id not in seen
            ]
            seen.update(inputs)
            frontier = inputs
            for artifact in store.get_artifacts_by_id(inputs):
                props = _props(artifact)
                if artifact.type == "ModelBlessing" and "blessed" in props:
                    blessings.append(props)
                elif artifact.type == "Examples" and found["data"] is None and "split_cutoffs" in props:
                    found["data"] = _data(props)
            if found["data"] is not None:
                break
        if blessings:
            found["blessing"] = _blessing(blessings)
        return found


def _blessing(blessings: list[dict]) -> dict:
    metrics = {
        k: v
        for props in blessings
        for k, v in sorted(props.items())
        if isinstance(v, int | float) and not k.startswith("baseline:") and k.rpartition(":")[2] in HEADLINE
    }
    reasons = [p["reason"] for p in blessings if p.get("reason")]
    return {"blessed": all(bool(p.get("blessed")) for p in blessings), "reason": "; ".join(reasons), "metrics": metrics}


def _in_split_order(counts: dict) -> dict:
    order = {"train": 0, "eval": 1, "test": 2}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


def _data(props: dict) -> dict:
    cutoffs = props.get("split_cutoffs") or []
    names = ("train | eval", "eval | test")
    data = {
        "input_path": props.get("input_path"),
        "input_fingerprint": props.get("input_fingerprint"),
        "split_strategy": props.get("split_strategy"),
        "split_counts": _in_split_order(props.get("split_counts") or {}),
        "cutoffs": ", ".join(f"{n} at {_when(c)}" for n, c in zip(names, cutoffs)) if cutoffs else None,
        "cutoff_seconds": cutoffs,
    }
    first, last = props.get("min_timestamp"), props.get("max_timestamp")
    if first is not None and last is not None:
        data["window"] = f"{_when(first)} to {_when(last)}"
    elif len(cutoffs) == 2:
        # what each split covers, from the cut-offs the ingestion recorded (train: everything before the first)
        data["window"] = f"train before {_when(cutoffs[0])}; eval to {_when(cutoffs[1])}; test from then on"
    return data
