"""The serving root: TF Serving layout, models.config, push / rollback / promote."""

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from towerflow.components.pusher import model_repository as repo


def fake_saved_model(path):
    """The repository only copies directories; a saved_model.pb marker is enough here."""
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x00")
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_bytes(b"x")
    return path


def parse(root, name=repo.CONFIG_FILE):
    return text_format.Parse((root / name).read_text(), model_server_config_pb2.ModelServerConfig())


def test_push_writes_tf_serving_layout_and_config(tmp_path):
    src = fake_saved_model(tmp_path / "export")
    root = tmp_path / "serving"
    first = repo.push(root, "ranker", src)
    second = repo.push(root, "ranker", src)
    assert (first.version, second.version) == (1, 2)
    assert (root / "ranker" / "1" / "saved_model.pb").is_file()
    assert (root / "ranker" / "2" / "variables" / "variables.index").is_file()
    assert not [p for p in (root / "ranker").iterdir() if p.name.startswith(".")]  # no staging left behind
    (model,) = parse(root).model_config_list.config
    assert model.name == "ranker" and model.base_path == str((root / "ranker").resolve())
    assert model.model_platform == "tensorflow"
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"stable": 2}
    (docker,) = parse(root, repo.DOCKER_CONFIG_FILE).model_config_list.config
    assert docker.base_path == "/models/ranker"
    assert second.state.default_version == 2


def test_canary_push_keeps_stable_then_promote(tmp_path):
    src = fake_saved_model(tmp_path / "export")
    root = tmp_path / "serving"
    repo.push(root, "m", src)
    state = repo.push(root, "m", src, canary=True).state
    assert state.labels == {"stable": 1, "canary": 2} and state.served == [1, 2]
    state = repo.promote(root, "m")
    assert state.labels == {"stable": 2} and state.served == [1, 2]


def test_rollback_narrows_policy_and_next_push_still_increases(tmp_path):
    src = fake_saved_model(tmp_path / "export")
    root = tmp_path / "serving"
    for _ in range(3):
        repo.push(root, "m", src)
    state = repo.rollback(root, "m")
    assert state.served == [2] and state.labels == {"stable": 2} and state.on_disk == [1, 2, 3]
    state = repo.rollback(root, "m", to=1)
    assert state.default_version == 1
    assert repo.push(root, "m", src).version == 4
    state = repo.rollback(root, "m", to=3)  # roll forward again
    assert state.default_version == 3
    with pytest.raises(FileNotFoundError, match="no version 9"):
        repo.rollback(root, "m", to=9)


def test_rollback_without_older_version_and_unknown_model(tmp_path):
    root = tmp_path / "serving"
    repo.push(root, "m", fake_saved_model(tmp_path / "export"))
    with pytest.raises(ValueError, match="no version older"):
        repo.rollback(root, "m")
    with pytest.raises(ValueError, match="no model 'other'"):
        repo.rollback(root, "other")


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        repo.push(tmp_path / "serving", "m", tmp_path)
    with pytest.raises(ValueError, match="model name"):
        repo.push(tmp_path / "serving", "../evil", fake_saved_model(tmp_path / "e"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / repo.CONFIG_FILE).write_text("model_config_list { nonsense }")
    with pytest.raises(ValueError, match="not a valid ModelServerConfig"):
        repo.read_config(tmp_path / "bad" / repo.CONFIG_FILE)


def test_old_versions_pruned_from_disk(tmp_path):
    src = fake_saved_model(tmp_path / "export")
    root = tmp_path / "serving"
    for _ in range(5):
        repo.push(root, "m", src, retain_on_disk=3)
    assert repo.versions_on_disk(root / "m") == [3, 4, 5]


def test_version_policies():
    on_disk = [1, 2, 5]
    model = model_server_config_pb2.ModelConfig()
    assert repo.served_versions(model, on_disk) == [5]  # TF Serving's default: latest 1
    model.model_version_policy.latest.num_versions = 2
    assert repo.served_versions(model, on_disk) == [2, 5]
    model.model_version_policy.all.SetInParent()
    assert repo.served_versions(model, on_disk) == [1, 2, 5]
    model.model_version_policy.specific.versions.extend([1, 7])
    assert repo.served_versions(model, on_disk) == [1]
