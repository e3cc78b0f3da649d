"""The pushers put the index and the evaluation's re-ranking settings inside the pushed version."""

import json

import pytest
from tfx.types import standard_artifacts

from towerflow.components.pusher import model_repository as repo
from towerflow.components.pusher.executor import EVALUATION_EXTRA, INDEX_EXTRA, Executor


def model_artifact(tmp_path, name="model"):
    export = tmp_path / name / "Format-Serving"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"\x00")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / name)
    return model


def push(tmp_path, blessings, model="model"):
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    Executor().Do(
        {"model": [model_artifact(tmp_path, model)], "blessings": blessings},
        {"pushed_model": [pushed]},
        {"serving_root": str(tmp_path / "serving"), "model_name": "two_tower", "model_subdir": "Format-Serving"},
    )
    return pushed


def test_index_and_evaluation_travel_with_the_version(tmp_path):
    index_uri = tmp_path / "IndexBuilder" / "index" / "9"
    (index_uri / "index" / "searcher").mkdir(parents=True)
    (index_uri / "index" / "ids.npy").write_bytes(b"ids")
    index_blessing = standard_artifacts.ModelBlessing()
    index_blessing.uri = str(tmp_path / "index_blessing")
    index_blessing.set_int_custom_property("blessed", 1)
    index_blessing.set_string_custom_property("index_uri", str(index_uri))
    model_blessing = standard_artifacts.ModelBlessing()
    model_blessing.uri = str(tmp_path / "model_blessing")
    model_blessing.set_int_custom_property("blessed", 1)
    (tmp_path / "model_blessing").mkdir()
    result = {
        "config": {
            "rerank_weight": 0.5,
            "popularity_weight": 4.0,
            "rerank_depth": 100,
            "rerank_score": "retrieval+interaction",
        },
        "data": {"test_cutoff": 123.5},
        "reports": {"two_tower+dcn": {"metrics": {"all": {"recall@100": 0.43, "ndcg@10": 0.35}}}},
        "score_distribution": {"edges": [0.0, 1.0], "fractions": [0.3, 0.3, 0.4], "source": "offline evaluation"},
    }
    (tmp_path / "model_blessing" / "model_evaluation.json").write_text(json.dumps(result))
    pushed = push(tmp_path, [index_blessing, model_blessing])
    extras = repo.extras_dir(tmp_path / "serving" / "two_tower" / "1")
    assert (extras / INDEX_EXTRA / "ids.npy").read_bytes() == b"ids"
    evaluation = json.loads((extras / EVALUATION_EXTRA).read_text())
    assert evaluation["rerank_weight"] == 0.5 and evaluation["rerank_depth"] == 100
    assert evaluation["popularity_weight"] == 4.0
    assert evaluation["metrics"]["two_tower+dcn"]["ndcg@10"] == 0.35
    assert evaluation["score_distribution"] == result["score_distribution"]
    assert pushed.get_json_value_custom_property("pushed_extras") == [EVALUATION_EXTRA, INDEX_EXTRA]


def test_push_without_extras_and_bad_extras(tmp_path):
    pushed = push(tmp_path, [])
    assert pushed.get_json_value_custom_property("pushed_extras") == []
    assert not repo.extras_dir(tmp_path / "serving" / "two_tower" / "1").exists()
    saved = tmp_path / "model" / "Format-Serving"
    with pytest.raises(ValueError, match="bad push extra"):
        repo.push(tmp_path / "serving", "two_tower", saved, extras={"../escape": saved})
    with pytest.raises(ValueError, match="bad push extra"):
        repo.push(tmp_path / "serving", "two_tower", saved, extras={"index": tmp_path / "missing"})
    assert repo.versions_on_disk(tmp_path / "serving" / "two_tower") == [1]  # nothing half-pushed
