"""Lineage on a real local run: the chain MLMD reports is the one the pipeline actually used."""

import os

import pytest

from towerflow.cli import lineage_commands
from towerflow.models.two_tower import TwoTowerConfig
from towerflow.pipeline import lineage
from towerflow.pipeline.config import code_fingerprint, fingerprint_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(pipeline_run):
    config, _, _ = pipeline_run
    return lineage.open_store(config.metadata_path)


def test_trainer_model_traces_to_the_transform_and_ingestion_outputs_the_run_made(pipeline_run, store):
    config, summary, _ = pipeline_run
    model_uri = summary.artifacts["TwoTowerTrainer.model"]
    graph = lineage.trace(store, lineage.find_artifact(store, os.path.join(model_uri, "Format-Serving")))
    model = graph.root
    assert model.type == "Model" and model.uri == model_uri
    assert model.producer.component == "TwoTowerTrainer" and model.producer.state == "complete"
    assert model.facts["run_fn"] == "towerflow.models.run_fns.run_two_tower"
    assert model.facts["hyperparameters"] == {
        "seed": 0,
        "two_tower": {},
        "example_budget": config.example_budget,  # the pipeline's cap on training passes
        "code_fingerprint": code_fingerprint("models"),
    }
    defaults = TwoTowerConfig()
    assert model.facts["effective_config"]["epochs"] == defaults.epochs == model.facts["epochs_run"]
    assert model.facts["effective_config"]["temperature"] == defaults.temperature

    inputs = dict(model.producer.inputs)
    transformed = inputs["examples"]
    assert transformed.uri == summary.artifacts["Transform.transformed_examples"]
    assert transformed.producer.component == "Transform"
    assert inputs["transform_graph"].producer is transformed.producer
    assert inputs["transform_graph"].uri == summary.artifacts["Transform.transform_graph"]
    assert inputs["schema"].uri == summary.artifacts["ImportSchemaGen.schema"]

    examples = dict(transformed.producer.inputs)["examples"]
    assert examples.producer.component == "Ingestion"
    assert examples.uri == summary.artifacts["Ingestion.examples"]
    props = summary.examples_properties
    assert examples.facts["split"]["cutoffs"] == props["split_cutoffs"]
    assert examples.facts["split"]["fractions"] == [0.8, 0.9]
    assert examples.facts["split_counts"] == props["split_counts"]
    assert examples.facts["input_path"] == os.path.abspath(config.data_dir)
    assert examples.facts["input_fingerprint"] == fingerprint_dir(config.data_dir)
    # Both trainers consumed the same transformed examples.
    ranker = lineage.trace(store, lineage.find_artifact(store, summary.artifacts["RankingTrainer.model"])).root
    assert dict(ranker.producer.inputs)["examples"].id == transformed.id
    tree = lineage.format_tree(graph)
    assert "made by Ingestion" in tree and "time cut-offs" in tree


def test_served_versions_trace_to_the_ingested_examples(pipeline_run, store):
    _, summary, _ = pipeline_run
    pushed = lineage.pushed_models(store)
    assert {p.name for p in pushed} == {"two_tower", "ranker"}, "the blessed models were not pushed"
    graph = lineage.trace(store, lineage.find_pushed_model(store, pushed[-1].name, pushed[-1].version))
    assert graph.root.type == "PushedModel"
    assert [a.uri for a in graph.find("Examples", "Ingestion")] == [summary.artifacts["Ingestion.examples"]]


def test_unknown_model_or_version_is_a_clear_error(store):
    with pytest.raises(ValueError, match="no pushed model named 'no_such_model'"):
        lineage.find_pushed_model(store, "no_such_model", "1")
    for served in {p.name for p in lineage.pushed_models(store)}:
        with pytest.raises(ValueError, match="has no pushed version 999999"):
            lineage.find_pushed_model(store, served, "999999")
    with pytest.raises(ValueError, match="no artifact in this ML Metadata store"):
        lineage.find_artifact(store, "/no/such/model")


def test_runs_report_the_first_run_computed_every_component(pipeline_run, store, capsys):
    config, summary, _ = pipeline_run
    first = lineage.list_runs(store)[0]
    assert first.outcome == "succeeded"
    assert {component for component, state, _ in first.executions if state == "complete"} == set(
        dict(summary.executions)
    )
    import argparse

    parser = argparse.ArgumentParser(prog="towerflow")
    lineage_commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["runs", "--metadata", config.metadata_path])
    args.func(args)
    assert "SUCCEEDED" in capsys.readouterr().out
