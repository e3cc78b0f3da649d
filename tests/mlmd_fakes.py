"""A hand-built ML Metadata store shaped like TFX's, for tests of code that reads lineage."""

import json

from google.protobuf import struct_pb2
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

COMPLETE, CACHED, FAILED = mlmd.Execution.COMPLETE, mlmd.Execution.CACHED, mlmd.Execution.FAILED


def _json(value) -> mlmd.Value:
    """A TFX JSON custom property: a Struct, non-dict values wrapped as {"__value__": value}."""
    struct = struct_pb2.Struct()
    struct.update(value if isinstance(value, dict) else {"__value__": value})
    return mlmd.Value(struct_value=struct)


class TfxLikeStore:
    """Writes executions with their events and contexts the way TFX's launcher does."""

    def __init__(self, path):
        config = mlmd.ConnectionConfig()
        config.sqlite.filename_uri = str(path)
        self.store = metadata_store.MetadataStore(config)
        self.types = {}
        self.contexts = {}
        self.pipeline = self._context("pipeline", "towerflow")

    def _type(self, kind, name):
        if (kind, name) not in self.types:
            put = {
                "artifact": (self.store.put_artifact_type, mlmd.ArtifactType),
                "execution": (self.store.put_execution_type, mlmd.ExecutionType),
                "context": (self.store.put_context_type, mlmd.ContextType),
            }[kind]
            self.types[(kind, name)] = put[0](put[1](name=name))
        return self.types[(kind, name)]

    def _context(self, type_name, name):
        if name not in self.contexts:
            [cid] = self.store.put_contexts([mlmd.Context(type_id=self._type("context", type_name), name=name)])
            self.contexts[name] = mlmd.Context(id=cid, type_id=self._type("context", type_name), name=name)
        return self.contexts[name]

    def artifact(self, type_name, uri, **props):
        a = mlmd.Artifact(type_id=self._type("artifact", type_name), uri=str(uri), state=mlmd.Artifact.LIVE)
        for key, value in props.items():
            if isinstance(value, dict | list):
                a.custom_properties[key].CopyFrom(_json(value))
            elif isinstance(value, int):
                a.custom_properties[key].int_value = value
            elif isinstance(value, float):
                a.custom_properties[key].double_value = value
            else:
                a.custom_properties[key].string_value = value
        return a

    def execute(self, run, component, type_name, inputs=None, outputs=None, state=COMPLETE, **props):
        """inputs: key -> artifact id; outputs: key -> new Artifact or existing id (a cached re-publish)."""
        e = mlmd.Execution(type_id=self._type("execution", type_name), last_known_state=state)
        for key, value in props.items():
            e.custom_properties[key].string_value = value if isinstance(value, str) else json.dumps(value)
        pairs = []
        for key, aid in (inputs or {}).items():
            [a] = self.store.get_artifacts_by_id([aid])
            pairs.append((a, self._event(mlmd.Event.INPUT, key)))
        for key, out in (outputs or {}).items():
            a = self.store.get_artifacts_by_id([out])[0] if isinstance(out, int) else out
            pairs.append((a, self._event(mlmd.Event.OUTPUT, key)))
        contexts = [self.pipeline, self._context("pipeline_run", run), self._context("node", f"towerflow.{component}")]
        _, artifact_ids, _ = self.store.put_execution(e, pairs, contexts)
        out_keys = list(outputs or {})
        return dict(zip(out_keys, artifact_ids[len(inputs or {}) :], strict=True))

    @staticmethod
    def _event(kind, key):
        event = mlmd.Event(type=kind)
        event.path.steps.add().key = key
        event.path.steps.add().index = 0
        return event
