"""`towerflow push --from-run` is held to the pipeline's blessings and leaves a record lineage can follow."""

import pytest
from mlmd_fakes import TfxLikeStore

from towerflow.cli.main import main
from towerflow.components.pusher import model_repository
from towerflow.pipeline import lineage, mlmd
from towerflow.pipeline.push import push_from_run


def _saved_model(path):
    import tensorflow as tf

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return {"score": 2.0 * x}

    tf.saved_model.save(Scorer(), str(path))
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return _saved_model(tmp_path_factory.mktemp("model") / "Format-Serving")


def _run(tmp_path, saved_model, *, model_blessed: int, index_blessed: int | None) -> str:
    """A run in MLMD: Trainer -> model; ModelEvaluator (and IndexBuilder -> IndexEvaluator) -> blessings."""
    s = TfxLikeStore(tmp_path / "metadata.sqlite")
    model_uri = saved_model.parent
    [model] = s.execute(
        "run-1", "TwoTowerTrainer", "tfx.Trainer", outputs={"model": s.artifact("Model", model_uri)}
    ).values()
    evaluated = s.execute(
        "run-1",
        "ModelEvaluator",
        "towerflow.ModelEvaluator",
        inputs={"model": model},
        outputs={"blessing": s.artifact("ModelBlessing", tmp_path / "blessing-m", blessed=model_blessed)},
    )
    if index_blessed is not None:
        [index] = s.execute(
            "run-1",
            "IndexBuilder",
            "towerflow.IndexBuilder",
            inputs={"model": model},
            outputs={"index": s.artifact("towerflow.RetrievalIndex", tmp_path / "index")},
        ).values()
        s.execute(
            "run-1",
            "IndexEvaluator",
            "towerflow.IndexEvaluator",
            inputs={"index": index},
            outputs={"blessing": s.artifact("ModelBlessing", tmp_path / "blessing-i", blessed=index_blessed)},
        )
    assert evaluated
    return str(tmp_path / "metadata.sqlite")


def test_a_model_missing_a_required_blessing_is_refused(tmp_path, saved_model):
    metadata = _run(tmp_path, saved_model, model_blessed=1, index_blessed=None)
    with pytest.raises(ValueError, match="no IndexEvaluator blessing"):
        push_from_run(metadata, "two_tower", str(tmp_path / "serving"))
    assert not (tmp_path / "serving" / "two_tower").exists()


def test_an_unblessed_model_is_refused_and_nothing_is_pushed(tmp_path, saved_model):
    metadata = _run(tmp_path, saved_model, model_blessed=0, index_blessed=1)
    with pytest.raises(ValueError, match=r"not blessed .*ModelEvaluator.*--ignore-blessing"):
        push_from_run(metadata, "two_tower", str(tmp_path / "serving"))
    assert not (tmp_path / "serving" / "two_tower").exists()
    assert lineage.pushed_models(mlmd.open_store(metadata)) == []


def test_a_blessed_model_is_pushed_and_lineage_traces_it_to_its_blessings(tmp_path, saved_model):
    metadata = _run(tmp_path, saved_model, model_blessed=1, index_blessed=1)
    pushed = push_from_run(metadata, "two_tower", str(tmp_path / "serving"))
    assert pushed.result.version == 1 and pushed.ignored == []
    assert set(pushed.blessings) == {"ModelEvaluator", "IndexEvaluator"}
    assert model_repository.model_state(tmp_path / "serving", "two_tower").default_version == 1
    store = mlmd.open_store(metadata)
    graph = lineage.trace(store, lineage.find_pushed_model(store, "two_tower", "1"))
    assert graph.root.facts["pushed_by"] == "towerflow push --from-run"
    assert "blessing_ignored" not in graph.root.facts
    # PushedModel <- push <- model + blessings; the index blessing <- IndexEvaluator <- index <- IndexBuilder
    assert {a.type for a in graph.artifacts.values()} == {
        "PushedModel",
        "Model",
        "ModelBlessing",
        "towerflow.RetrievalIndex",
    }
    assert graph.root.producer.component.startswith("towerflow push two_tower")


def test_ignore_blessing_pushes_and_the_record_says_so(tmp_path, saved_model, capsys):
    metadata = _run(tmp_path, saved_model, model_blessed=0, index_blessed=1)
    run_dir = tmp_path
    argv = ["push", "--model", "two_tower", "--from-run", str(run_dir), "--serving-root", str(tmp_path / "serving")]
    assert main(argv) == 2
    assert "not blessed" in capsys.readouterr().err
    assert main([*argv, "--ignore-blessing"]) == 0
    assert "PUSHED WITHOUT BLESSING" in capsys.readouterr().out
    store = mlmd.open_store(metadata)
    graph = lineage.trace(store, lineage.find_pushed_model(store, "two_tower", "1"))
    assert "ModelEvaluator" in graph.root.facts["blessing_ignored"]
    assert "PUSHED WITHOUT BLESSING" in lineage.render(graph, "tree")
