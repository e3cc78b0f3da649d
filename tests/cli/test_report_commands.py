"""`towerflow report` and the baseline wiring: a tiny TFX pipeline run twice, the second time with a broken model."""

import argparse
import json
import os
import sys

import pytest

from towerflow.cli import evaluate_commands, report_commands

# The ModelEvaluator tests' fake models and tiny world (tests/components/evaluation/eval_fakes.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "components", "evaluation"))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    import eval_fakes

    root = tmp_path_factory.mktemp("models")
    eval_fakes.save_fake_two_tower(str(root / "good" / "Format-Serving"))
    eval_fakes.save_broken_two_tower(str(root / "broken" / "Format-Serving"))
    eval_fakes.save_fake_ranker(str(root / "ranker" / "Format-Serving"))
    return {name: str(root / name) for name in ("good", "broken", "ranker")}


@pytest.fixture(scope="module")
def artifact_dirs(model_dirs, tmp_path_factory) -> dict[str, str]:
    import eval_fakes

    world = eval_fakes.make_world(os.path.join(model_dirs["good"], "Format-Serving"))
    root = tmp_path_factory.mktemp("artifacts")
    dirs = {"examples": str(root / "examples"), "catalog": str(root / "item_catalog")}
    eval_fakes.write_artifacts(world, dirs["examples"], dirs["catalog"])
    return dirs


def _parse(argv):
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    report_commands.add_commands(commands)
    evaluate_commands.add_commands(commands)
    return parser.parse_args(argv)


def test_report_command_arguments():
    args = _parse(["report"])
    assert args.output_dir == "runs/local" and not args.open and callable(args.func)
    assert _parse(["report", "--output-dir", "x", "--open"]).open


def test_report_command_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        _parse(["report", "--output-dir", str(tmp_path / "missing")]).func(
            _parse(["report", "--output-dir", str(tmp_path / "missing")])
        )
    args = _parse(["report", "--output-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="towerflow run"):
        args.func(args)


def test_evaluate_command_reads_the_store_and_says_what_is_missing(tmp_path):
    args = _parse(["evaluate", "--output-dir", str(tmp_path)])
    assert args.report is None and callable(args.func)
    with pytest.raises(FileNotFoundError, match="towerflow run"):
        args.func(args)


def _pipeline(root, artifact_dirs, model_uri, ranker_uri):
    from tfx import v1 as tfx

    from towerflow.components.evaluation.model_evaluator import ModelEvaluator
    from towerflow.components.ingestion.component import ItemCatalog
    from towerflow.pipeline.pipeline import latest_blessed_model_resolver

    def importer(node_id, uri, artifact_type):
        return tfx.dsl.Importer(source_uri=uri, artifact_type=artifact_type, reimport=True).with_id(node_id)

    examples = importer("ExamplesImporter", artifact_dirs["examples"], tfx.types.standard_artifacts.Examples)
    catalog = importer("CatalogImporter", artifact_dirs["catalog"], ItemCatalog)
    model = importer("TwoTowerImporter", model_uri, tfx.types.standard_artifacts.Model)
    ranker = importer("RankerImporter", ranker_uri, tfx.types.standard_artifacts.Model)
    # The resolver create_pipeline uses, with TwoTowerTrainer -> TwoTowerImporter.
    baseline = latest_blessed_model_resolver("TwoTowerImporter", "result")
    evaluator = ModelEvaluator(
        examples=examples.outputs["result"],
        item_catalog=catalog.outputs["result"],
        model=model.outputs["result"],
        ranker_model=ranker.outputs["result"],
        baseline_model=baseline.outputs["model"],
        baseline_blessing=baseline.outputs["model_blessing"],
        ks="5,10,20",
        guarded_metrics="recall@20,ndcg@10",
        ann_k=5,
        ann_queries=20,
    ).with_id("ModelEvaluator")
    return tfx.dsl.Pipeline(
        pipeline_name="evaluator_test",
        pipeline_root=str(root / "pipeline_root"),
        components=[examples, catalog, model, ranker, baseline, evaluator],
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / "metadata.sqlite")
        ),
    )


@pytest.mark.e2e
def test_pipeline_blesses_then_rejects_a_regression_and_report_finds_it(model_dirs, artifact_dirs, tmp_path, capsys):
    from tfx import v1 as tfx

    from towerflow.components.evaluation.model_evaluator import read_result

    tfx.orchestration.LocalDagRunner().run(_pipeline(tmp_path, artifact_dirs, model_dirs["good"], model_dirs["ranker"]))
    first = read_result(report_commands.latest_report_dir(str(tmp_path / "metadata.sqlite")))
    assert first["blessed"] and not first["baseline_reports"]

    tfx.orchestration.LocalDagRunner().run(
        _pipeline(tmp_path, artifact_dirs, model_dirs["broken"], model_dirs["ranker"])
    )
    second_dir = report_commands.latest_report_dir(str(tmp_path / "metadata.sqlite"))
    second = read_result(second_dir)
    # the resolver found run 1's model as the baseline, with the ranker recorded on its blessing
    assert second["models"]["baseline_two_tower"].startswith(model_dirs["good"])
    assert second["models"]["baseline_ranker"].startswith(model_dirs["ranker"])
    assert not second["blessed"]
    assert any("popularity" in r for r in second["reasons"]) and any("regresses" in r for r in second["reasons"])

    capsys.readouterr()
    args = _parse(["report", "--output-dir", str(tmp_path)])
    args.func(args)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == os.path.join(second_dir, "model_evaluation.html")
    assert out[1] == "Model NOT blessed"
    assert any(line.strip().startswith("baseline:two_tower") for line in out)

    # `towerflow evaluate` shows the same evaluation from the store, without scoring anything again
    report = tmp_path / "evaluation.json"
    args = _parse(["evaluate", "--output-dir", str(tmp_path), "--report", str(report)])
    args.func(args)
    out = capsys.readouterr().out
    assert "Model NOT blessed" in out and "Against the best baseline" in out
    assert all(name in out for name in ("recent_popularity", "segment_popularity", "item_knn", "ease"))
    assert json.loads(report.read_text()) == second
