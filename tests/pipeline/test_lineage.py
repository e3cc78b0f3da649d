"""Lineage over a small hand-built MLMD store shaped like TFX's: two runs, the second partly cached, each
ending in a Pusher, so served-model lookup, blessings and cache reuse are tested without running TFX."""

import argparse
import json
import re

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd
from mlmd_fakes import CACHED, FAILED, TfxLikeStore

from towerflow.cli import lineage_commands
from towerflow.pipeline import lineage

CUTOFFS = [889237269, 891382271]
COUNTS = {"train": 79999, "eval": 10001, "test": 10000}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlmd")
    s = TfxLikeStore(tmp / "metadata.sqlite")
    serving = tmp / "serving"

    def run(name, version, ingestion_outputs=None, push=True):
        ingestion = ingestion_outputs or s.execute(
            name,
            "Ingestion",
            "towerflow.components.ingestion.component.Ingestion",
            outputs={
                "examples": s.artifact(
                    "Examples",
                    tmp / "Ingestion/examples/1",
                    split_strategy="global_time",
                    split_fractions=[0.8, 0.9],
                    split_cutoffs=CUTOFFS,
                    split_counts=COUNTS,
                    malformed_by_table={"interactions": 3, "users": 0},
                    input_path="/data/ml-100k",
                    input_fingerprint="abc123",
                    tfx_version="1.16.0",
                )
            },
            data_dir="/data/ml-100k",
        )
        if ingestion_outputs:  # cached: the same examples re-published by a CACHED execution
            s.execute(
                name, "Ingestion", "towerflow.components.ingestion.component.Ingestion", outputs=ingestion, state=CACHED
            )
        transform = s.execute(
            name,
            "Transform",
            "tfx.components.transform.component.Transform",
            inputs={"examples": ingestion["examples"]},
            outputs={
                "transform_graph": s.artifact("TransformGraph", tmp / f"Transform/transform_graph/{version}"),
                "transformed_examples": s.artifact("Examples", tmp / f"Transform/transformed_examples/{version}"),
            },
            preprocessing_fn="towerflow.models.preprocessing.preprocessing_fn",
            splits_config={"analyze": ["train"], "transform": ["train", "eval", "test"]},
        )
        run_dir = tmp / f"TwoTowerTrainer/model_run/{version}"
        run_dir.mkdir(parents=True)
        (run_dir / "training_summary.json").write_text(
            json.dumps({"config": {"epochs": version, "embedding_dim": 64}, "history": {"loss": [9.0, 4.5]}})
        )
        trainer = s.execute(
            name,
            "TwoTowerTrainer",
            "tfx.components.trainer.component.Trainer",
            inputs={"examples": transform["transformed_examples"], "transform_graph": transform["transform_graph"]},
            outputs={
                "model": s.artifact("Model", tmp / f"TwoTowerTrainer/model/{version}"),
                "model_run": s.artifact("ModelRun", run_dir),
            },
            run_fn="towerflow.models.run_fns.run_two_tower",
            custom_config={"seed": 0, "two_tower": {"epochs": version}},
        )
        evaluator = s.execute(
            name,
            "ModelEvaluator",
            "towerflow.components.evaluation.component.ModelEvaluator",
            inputs={"model": trainer["model"], "examples": ingestion["examples"]},
            outputs={
                "blessing": s.artifact(
                    "ModelBlessing", tmp / f"ModelEvaluator/blessing/{version}", blessed=1, **{"recall@100": 0.31}
                )
            },
        )
        if not push:
            return
        s.execute(
            name,
            "Pusher",
            "towerflow.components.pusher.component.Pusher",
            inputs={"model": trainer["model"], "model_blessing": evaluator["blessing"]},
            outputs={
                "pushed_model": s.artifact(
                    "PushedModel",
                    tmp / f"Pusher/pushed_model/{version}",
                    pushed=1,
                    pushed_destination=str(serving / "two_tower" / str(version)),
                    pushed_version=str(version),
                )
            },
        )
        return ingestion

    ingestion = run("run-1", 1)
    run("run-2", 2, ingestion_outputs=ingestion)
    s.execute(
        "run-3", "Ingestion", "towerflow.components.ingestion.component.Ingestion", outputs=ingestion, state=CACHED
    )
    s.execute("run-3", "Transform", "tfx.components.transform.component.Transform", state=FAILED)
    return tmp / "metadata.sqlite"


@pytest.fixture()
def store(store_path):
    return lineage.open_store(str(store_path))


def test_served_version_traces_back_through_blessing_trainer_transform_to_ingestion(store):
    graph = lineage.trace(store, lineage.find_pushed_model(store, "two_tower", "2"))
    root = graph.root
    assert root.type == "PushedModel" and root.facts["version"] == "2" and root.facts["model_name"] == "two_tower"
    pusher = root.producer
    assert pusher.component == "Pusher" and pusher.run == "run-2"
    inputs = dict(pusher.inputs)
    blessing, model = inputs["model_blessing"], inputs["model"]
    assert blessing.facts["blessed"] is True and blessing.facts["metrics"] == {"recall@100": 0.31}
    assert model.facts["hyperparameters"] == {"seed": 0, "two_tower": {"epochs": 2}}
    assert model.facts["run_fn"] == "towerflow.models.run_fns.run_two_tower"
    assert model.facts["effective_config"]["epochs"] == 2 and model.facts["final_losses"] == {"loss": 4.5}
    trainer_inputs = dict(model.producer.inputs)
    graph_node = trainer_inputs["transform_graph"]
    assert graph_node.facts["preprocessing_fn"] == "towerflow.models.preprocessing.preprocessing_fn"
    transform_examples = dict(graph_node.producer.inputs)["examples"]
    # The evaluator read the same Ingestion examples the Transform (and so the trainer) consumed.
    assert transform_examples is dict(blessing.producer.inputs)["examples"]
    examples = transform_examples
    assert examples.facts["split"]["cutoffs"] == CUTOFFS and examples.facts["split_counts"] == COUNTS
    assert examples.facts["input_fingerprint"] == "abc123"
    # Computed by run-1's Ingestion, reused from cache by later runs.
    assert examples.producer.run == "run-1" and examples.producer.state == "complete"
    assert examples.reused_by == ["run-2", "run-3"]
    assert [a.id for a in graph.find("Examples", "Ingestion")] == [examples.id]
    assert "tfx_version" not in examples.properties


def test_newest_version_by_default_and_clear_errors_for_unknown_name_version_uri(store):
    newest = lineage.find_pushed_model(store, "two_tower")
    assert lineage.trace(store, newest).root.facts["version"] == "2"
    assert [(p.name, p.version) for p in lineage.pushed_models(store)] == [("two_tower", "1"), ("two_tower", "2")]
    with pytest.raises(ValueError, match=r"no pushed model named 'ranker'; served models in this store: two_tower"):
        lineage.find_pushed_model(store, "ranker", "1")
    with pytest.raises(ValueError, match=r"has no pushed version 7; pushed versions: 1, 2"):
        lineage.find_pushed_model(store, "two_tower", "7")
    with pytest.raises(ValueError, match="no artifact in this ML Metadata store has URI"):
        lineage.find_artifact(store, "/nowhere/model")


def test_lookup_by_uri_accepts_artifact_uris_paths_inside_them_and_pushed_destinations(store, store_path):
    tmp = store_path.parent
    model_id = lineage.find_artifact(store, str(tmp / "TwoTowerTrainer/model/1"))
    assert lineage.find_artifact(store, str(tmp / "TwoTowerTrainer/model/1/Format-Serving")) == model_id
    pushed = lineage.find_artifact(store, str(tmp / "serving/two_tower/1"))
    assert lineage.trace(store, pushed).root.facts["version"] == "1"
    assert lineage.trace(store, model_id).root.type == "Model"


def test_every_format_renders_the_chain(store):
    graph = lineage.trace(store, lineage.find_pushed_model(store, "two_tower", "1"))
    tree = lineage.render(graph, "tree")
    for expected in (
        "served as 'two_tower' version 1",
        "BLESSED",
        "recall@100: 0.31",
        'custom_config: {"seed": 0, "two_tower": {"epochs": 1}}',
        "time cut-offs: 889237269 (1998-03-07",
        "rows: train 79,999, eval 10,001, test 10,000",
        "quarantined rows: 3",
        "input: /data/ml-100k (fingerprint abc123)",
        "made by Ingestion (execution #",
        "(shown above)",
    ):
        assert expected in tree, expected
    data = json.loads(lineage.render(graph, "json"))
    assert data["root"] == graph.root.id
    assert {e["component"] for e in data["executions"]} == {
        "Pusher",
        "ModelEvaluator",
        "TwoTowerTrainer",
        "Transform",
        "Ingestion",
    }
    node_ids = {f"artifact:{a['id']}" for a in data["artifacts"]} | {f"execution:{e['id']}" for e in data["executions"]}
    assert all(e["from"] in node_ids and e["to"] in node_ids for e in data["edges"])
    dot = lineage.render(graph, "dot")
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert set(re.findall(r'"((?:artifact|execution):\d+)"', dot)) == node_ids
    page = lineage.render(graph, "html")
    assert page.startswith("<!DOCTYPE html>") and "served as &#x27;two_tower&#x27; version 1" in page
    with pytest.raises(ValueError, match="format must be one of"):
        lineage.render(graph, "svg")


def test_runs_list_outcomes_per_run(store):
    runs = lineage.list_runs(store)
    assert [(r.name, r.outcome) for r in runs] == [("run-1", "succeeded"), ("run-2", "succeeded"), ("run-3", "failed")]
    assert ("Ingestion", "cached") in [(c, s) for c, s, _ in runs[1].executions]
    text = lineage.format_runs(runs)
    assert "run-3  towerflow  FAILED" in text and "Transform            failed" in text
    assert lineage.list_runs(store, "another_pipeline") == []


def test_connection_configs_for_sqlite_mysql_and_grpc(tmp_path):
    mysql = lineage.connection_config(
        mysql_host="mlmd.internal", mysql_database="metadb", mysql_user="ro", mysql_password="s3cret"
    )
    assert (mysql.mysql.host, mysql.mysql.port, mysql.mysql.database, mysql.mysql.user) == (
        "mlmd.internal",
        3306,
        "metadb",
        "ro",
    )
    grpc = lineage.connection_config(grpc_host="metadata-grpc-service.kubeflow", grpc_port=8080)
    assert isinstance(grpc, mlmd.MetadataStoreClientConfig) and grpc.port == 8080
    with pytest.raises(ValueError, match="exactly one"):
        lineage.connection_config("a.sqlite", mysql_host="h")
    with pytest.raises(ValueError, match="database"):
        lineage.connection_config(mysql_host="h", mysql_database="")
    with pytest.raises(FileNotFoundError, match="no ML Metadata store"):
        lineage.connection_config(str(tmp_path / "missing.sqlite"), read_only=True)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="towerflow")
    lineage_commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_lineage_and_runs(store_path, tmp_path, capsys):
    _cli(["lineage", "--metadata", str(store_path), "--model", "two_tower", "--version", "1"])
    assert "served as 'two_tower' version 1" in capsys.readouterr().out
    out = tmp_path / "lineage.json"
    _cli(["lineage", "--metadata", str(store_path), "--model", "two_tower", "--format", "json", "--output", str(out)])
    assert "-> " in capsys.readouterr().out and json.loads(out.read_text())["artifacts"]
    _cli(["lineage", "--metadata", str(store_path), "--list"])
    assert "two_tower" in capsys.readouterr().out
    _cli(["runs", "--metadata", str(store_path), "--brief", "--last", "1"])
    printed = capsys.readouterr().out
    assert "run-3" in printed and "run-1" not in printed
    with pytest.raises(ValueError, match="no pushed version 9"):
        _cli(["lineage", "--metadata", str(store_path), "--model", "two_tower", "--version", "9"])
    with pytest.raises(ValueError, match="not both or neither"):
        _cli(["lineage", "--metadata", str(store_path)])
    with pytest.raises(ValueError, match="either --metadata or"):
        _cli(["runs", "--metadata", str(store_path), "--mysql-host", "h"])
