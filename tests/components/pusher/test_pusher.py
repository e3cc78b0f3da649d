"""ServingPusher: pushes only when every blessing says blessed=1; records TFX's PushedModel properties."""

import pytest
from tfx.types import channel, standard_artifacts

from towerflow.components.pusher import ServingPusher
from towerflow.components.pusher import model_repository as repo
from towerflow.components.pusher.executor import Executor


def model_artifact(tmp_path):
    export = tmp_path / "model" / "Format-Serving"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"\x00")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    return model


def blessing(value, uri):
    artifact = standard_artifacts.ModelBlessing()
    artifact.uri = str(uri)
    artifact.set_int_custom_property("blessed", value)
    return artifact


def run(tmp_path, blessings):
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    Executor().Do(
        {"model": [model_artifact(tmp_path)], "blessings": blessings},
        {"pushed_model": [pushed]},
        {"serving_root": str(tmp_path / "serving"), "model_name": "two_tower", "model_subdir": "Format-Serving"},
    )
    return pushed


def test_pushes_when_all_blessed(tmp_path):
    pushed = run(tmp_path, [blessing(1, tmp_path / "b1"), blessing(1, tmp_path / "b2")])
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_version") == "1"
    assert pushed.get_string_custom_property("pushed_destination").endswith("/two_tower/1")
    assert repo.model_state(tmp_path / "serving", "two_tower").labels == {"stable": 1}


def test_pushes_with_no_blessings(tmp_path):
    assert run(tmp_path, []).get_int_custom_property("pushed") == 1


def test_any_unblessed_blocks_the_push(tmp_path):
    pushed = run(tmp_path, [blessing(1, tmp_path / "b1"), blessing(0, tmp_path / "b2")])
    assert pushed.get_int_custom_property("pushed") == 0
    assert "b2" in pushed.get_string_custom_property("not_pushed_reason")
    assert not (tmp_path / "serving" / "two_tower").exists()


def test_component_takes_zero_one_or_many_blessing_channels():
    model = channel.Channel(type=standard_artifacts.Model)
    blessings = [channel.Channel(type=standard_artifacts.ModelBlessing) for _ in range(2)]
    for given in (None, [], blessings[:1], blessings):
        pusher = ServingPusher(model=model, blessings=given, serving_root="/srv", model_name="two_tower")
        assert pusher.outputs["pushed_model"].type is standard_artifacts.PushedModel
        assert pusher.exec_properties["model_name"] == "two_tower"
    with pytest.raises(ValueError, match="model name"):
        ServingPusher(model=model, serving_root="/srv", model_name="bad/name")
