"""Version pairing (VersionWatcher) over a real serving root, the feature columns and TensorProtos."""

import json

import numpy as np
import pytest

from towerflow.components.index.scann_index import ScannIndex
from towerflow.components.pusher import model_repository
from towerflow.models import features
from towerflow.serving.recommender.served import (
    ModelClient,
    ModelUnavailableError,
    VersionWatcher,
    columns,
    tensor_proto,
)


class Server:
    """Stands in for the model server's status answers."""

    def __init__(self):
        self.available = {"two_tower": set(), "ranker": set()}
        self.down = False

    def available_versions(self, model, timeout=2.0):
        if self.down:
            raise ModelUnavailableError("connection refused")
        return set(self.available[model])

    def signatures(self, model, version, timeout=2.0):
        return frozenset({"ranker"})


def push_version(root, tiny_model, tmp_path, offset: float, weight: float) -> int:
    index_dir = tmp_path / f"index-{offset}"
    ScannIndex.build(["a", "b", "c"], np.eye(3, dtype=np.float32) * offset).save(str(index_dir))
    evaluation = tmp_path / f"evaluation-{offset}.json"
    evaluation.write_text(json.dumps({"rerank_weight": weight, "rerank_depth": 100}))
    pushed = model_repository.push(root, "two_tower", tiny_model, extras={"index": index_dir})
    model_repository.push(root, "ranker", tiny_model, extras={"evaluation.json": evaluation})
    return pushed.version


def test_watcher_swaps_model_and_index_together(tiny_models, tmp_path):
    root = tmp_path / "serving"
    server = Server()
    watcher = VersionWatcher(root, server, default_weight=0.25)
    assert not watcher.refresh() and watcher.current is None  # nothing pushed yet
    v1 = push_version(root, tiny_models[1], tmp_path, 1.0, 0.5)
    assert not watcher.refresh() and watcher.current is None  # pushed, not yet loaded by the server
    server.available = {"two_tower": {v1}, "ranker": {v1}}
    assert watcher.refresh()
    first = watcher.current
    assert (first.two_tower, first.ranker, first.rerank_weight) == (v1, v1, 0.5)
    assert first.index.embeddings[0, 0] == 1.0 and first.index_source == "pushed"

    v2 = push_version(root, tiny_models[2], tmp_path, 2.0, 1.0)
    assert not watcher.refresh() and watcher.current is first  # v2 not AVAILABLE yet: keep v1 + v1's index
    server.available = {"two_tower": {v1, v2}, "ranker": {v1, v2}}
    assert watcher.refresh()
    second = watcher.current
    assert (second.two_tower, second.ranker, second.rerank_weight) == (v2, v2, 1.0)
    assert second.index.embeddings[0, 0] == 2.0  # v2's own index
    server.down = True
    assert not watcher.refresh() and watcher.current is second  # server unreachable: nothing changes
    model_repository.rollback(root, "two_tower")
    model_repository.rollback(root, "ranker")
    server.down = False
    assert watcher.refresh() and watcher.current.two_tower == v1 and watcher.current.index.embeddings[0, 0] == 1.0


def test_a_version_without_an_index_needs_a_catalog(tiny_models, tmp_path):
    root = tmp_path / "serving"
    model_repository.push(root, "two_tower", tiny_models[1])
    server = Server()
    server.available = {"two_tower": {1}, "ranker": set()}
    watcher = VersionWatcher(root, server, default_weight=0.25)
    assert not watcher.refresh() and "carries no index" in watcher.last_error


def test_columns_and_tensor_protos():
    import tensorflow as tf

    rows = [
        {features.USER_ID: "u1", features.USER_AGE: 30, features.HIST_ITEM_IDS: ["a", "b"],
         features.USER_PRIOR_MEAN_RATING: 4.5},
        {features.USER_ID: "u2", features.HIST_ITEM_IDS: []},
    ]  # fmt: skip
    cols = columns(rows, (features.USER_ID, features.USER_AGE, features.HIST_ITEM_IDS, features.USER_PRIOR_MEAN_RATING))
    assert cols[features.USER_AGE].dtype == np.int64 and cols[features.USER_AGE].tolist() == [30, 0]
    assert cols[features.HIST_ITEM_IDS].tolist() == [["a", "b"], ["", ""]]
    assert cols[features.USER_PRIOR_MEAN_RATING].dtype == np.float32
    for value in cols.values():
        expected = value.astype(bytes) if value.dtype == object else value
        assert np.array_equal(tf.make_ndarray(tensor_proto(value)), expected)
    with pytest.raises(KeyError):
        tensor_proto(np.array([1.0], dtype=np.float64))


def test_tensor_proto_repeat_equals_stacking_the_rows():
    import tensorflow as tf

    hist = np.array([["a", "b", ""]], dtype=object)
    ages = np.array([31], dtype=np.int64)
    assert np.array_equal(tf.make_ndarray(tensor_proto(hist, repeat=4)), np.repeat(hist, 4, axis=0).astype(bytes))
    assert tf.make_ndarray(tensor_proto(ages, repeat=3)).tolist() == [31, 31, 31]


def test_rank_sends_the_query_once_when_the_ranker_has_rank_candidates(monkeypatch):
    client = ModelClient(grpc_target="127.0.0.1:1")
    calls = []
    monkeypatch.setattr(client, "predict", lambda model, sig, inputs, version, timeout: calls.append((sig, inputs)))
    client._signatures[("ranker", 1)] = frozenset({"ranker", "rank_candidates"})  # what GetModelMetadata said
    client._signatures[("ranker", 2)] = frozenset({"ranker"})  # an export from before rank_candidates
    query = {features.USER_ID: "u1", features.HIST_ITEM_IDS: ["a", "b"], features.USER_AGE: 30}
    candidates = [{features.ITEM_ID: f"i{n}", features.ITEM_GENRES: ["Drama"]} for n in range(3)]
    client.rank(query, candidates, 1, 1.0)
    client.rank(query, candidates, 2, 1.0)
    (broadcast, once), (plain, repeated) = calls
    assert broadcast == "rank_candidates"
    assert once[features.USER_ID].shape == (1,) and once[features.HIST_ITEM_IDS].shape == (1, 2)
    assert once[features.ITEM_ID].shape == (3,)
    assert plain == "ranker"
    assert [d.size for d in repeated[features.HIST_ITEM_IDS].tensor_shape.dim] == [3, 2]
    assert list(repeated[features.USER_ID].string_val) == [b"u1"] * 3
